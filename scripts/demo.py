"""`make demo`: the main job end to end on built-in synthetic data."""

from clay_hf.demo import main

if __name__ == "__main__":
    main()
