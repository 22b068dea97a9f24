"""Masked reconstruction error of a Clay model on chips → eval_results.json."""

import sys

from clay_hf.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
