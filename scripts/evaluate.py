"""Masked reconstruction error of a Clay model on chips → eval_results.json."""

import sys

from clay_hf.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
