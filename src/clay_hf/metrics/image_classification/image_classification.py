"""Chip classification scores of a fine-tuned Clay: accuracy and macro F1.

The arithmetic is `clay_hf.finetuning.scores` (a confusion matrix), the same `Trainer` uses while evaluating.
"""

import datasets
import numpy as np
import torch

from clay_hf.finetuning.scores import classification_scores, confusion_matrix
from clay_hf.metrics.base import ClayMetric


class ImageClassification(ClayMetric):
    DESCRIPTION = """
Accuracy, and the macro F1: the F1 of each class averaged over the classes present in references or predictions.
"""
    KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids, one per chip.
    references: reference class ids.
    num_labels: the number of classes K (default: one more than the largest id seen).
Returns:
    accuracy, macro_f1.
"""
    CITATION = """
@article{sokolova2009systematic,
  title = {A systematic analysis of performance measures for classification tasks},
  author = {Sokolova, Marina and Lapalme, Guy},
  journal = {Information Processing \\& Management},
  year = {2009}
}
"""
    FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})

    def _compute(self, predictions, references, num_labels=None):
        predicted, reference = torch.as_tensor(np.asarray(predictions)), torch.as_tensor(np.asarray(references))
        num_labels = num_labels or int(max(predicted.max(), reference.max())) + 1
        return classification_scores(confusion_matrix(predicted, reference, num_labels))
