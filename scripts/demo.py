"""`make demo`: the main job end to end on built-in synthetic data."""

import sys

from clay_hf.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
