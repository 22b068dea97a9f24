"""Chip-level regression scores of a fine-tuned Clay (e.g. biomass): RMSE, MAE and R².

The arithmetic is `clay_hf.finetuning.scores` (five running sums), the same `Trainer` uses while evaluating.
"""

import datasets
import numpy as np
import torch

from clay_hf.finetuning.scores import regression_scores, regression_sums
from clay_hf.metrics.base import ClayMetric


class Regression(ClayMetric):
    DESCRIPTION = """
Root mean squared error, mean absolute error, and the coefficient of determination R² = 1 − SSE / SST (SST about the
references' mean; NaN when the references are constant).
"""
    KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values, one per chip.
    references: reference values.
Returns:
    rmse, mae, r2.
"""
    CITATION = """
@book{draper1998applied,
  title = {Applied Regression Analysis},
  author = {Draper, Norman R. and Smith, Harry},
  publisher = {Wiley},
  year = {1998}
}
"""
    FEATURES = datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")})

    def _compute(self, predictions, references):
        sums = regression_sums(torch.as_tensor(np.asarray(predictions)), torch.as_tensor(np.asarray(references)))
        return regression_scores(sums)
