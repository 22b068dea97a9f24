"""Save reconstruction PNGs (input, masked input, reconstruction, per-group error) for N chips."""

import sys

from clay_hf.commands.reconstruct import main

if __name__ == "__main__":
    sys.exit(main())
