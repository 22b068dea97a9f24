"""Metrics of Clay. Each folder (`masked_reconstruction/`, `semantic_segmentation/`, `image_classification/`,
`regression/`) is an `evaluate` module, loaded by path (works offline):

import evaluate
from clay_hf.metrics import MASKED_RECONSTRUCTION_PATH

metric = evaluate.load(MASKED_RECONSTRUCTION_PATH)
"""

from pathlib import Path

MASKED_RECONSTRUCTION_PATH = str(Path(__file__).parent / "masked_reconstruction")
SEMANTIC_SEGMENTATION_PATH = str(Path(__file__).parent / "semantic_segmentation")
IMAGE_CLASSIFICATION_PATH = str(Path(__file__).parent / "image_classification")
REGRESSION_PATH = str(Path(__file__).parent / "regression")

__all__ = ["IMAGE_CLASSIFICATION_PATH", "MASKED_RECONSTRUCTION_PATH", "REGRESSION_PATH", "SEMANTIC_SEGMENTATION_PATH"]
