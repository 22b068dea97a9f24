"""Semantic segmentation scores of a fine-tuned Clay: mean IoU, per-class IoU, pixel accuracy, F1.

The arithmetic is `clay_hf.finetuning.scores` (a confusion matrix), the same `Trainer` uses while evaluating.
"""

import datasets
import numpy as np
import torch

from clay_hf.finetuning.scores import confusion_matrix, segmentation_scores
from clay_hf.metrics.base import ClayMetric


class SemanticSegmentation(ClayMetric):
    DESCRIPTION = """
Scores of class maps against reference maps over the pixels whose reference is not `ignore_index`: IoU and F1 per
class and their means over the classes present in references or predictions, and pixel accuracy.
"""
    KWARGS_DESCRIPTION = """
Args:
    predictions: per chip, the predicted class map (H, W) of integer class ids.
    references: per chip, the reference class map (H, W).
    num_labels: the number of classes K.
    ignore_index: reference value that is not scored (default 255).
    id2label: optional {id: name}, to name the per-class scores.
Returns:
    mean_iou, pixel_accuracy, mean_f1, iou_<class>, f1_<class> (NaN for a class absent from both).
"""
    CITATION = """
@inproceedings{long2015fully,
  title = {Fully Convolutional Networks for Semantic Segmentation},
  author = {Long, Jonathan and Shelhamer, Evan and Darrell, Trevor},
  booktitle = {CVPR},
  year = {2015}
}
"""
    FEATURES = datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
            "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
        }
    )

    def _compute(self, predictions, references, num_labels, ignore_index=255, id2label=None):
        confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)
        for predicted, reference in zip(predictions, references, strict=True):
            confusion += confusion_matrix(
                torch.as_tensor(np.asarray(predicted)), torch.as_tensor(np.asarray(reference)), num_labels, ignore_index
            )
        return segmentation_scores(confusion, id2label)
