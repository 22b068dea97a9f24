"""Metrics of Clay. `masked_reconstruction/` is an `evaluate` module, loaded by path (works offline):

import evaluate
from clay_hf.metrics import MASKED_RECONSTRUCTION_PATH

metric = evaluate.load(MASKED_RECONSTRUCTION_PATH)
"""

from pathlib import Path

MASKED_RECONSTRUCTION_PATH = str(Path(__file__).parent / "masked_reconstruction")

__all__ = ["MASKED_RECONSTRUCTION_PATH"]
