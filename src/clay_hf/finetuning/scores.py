"""The arithmetic of the fine-tuning metrics, shared by the `evaluate` modules and `Trainer`'s streaming evaluation.

Segmentation and classification reduce to a confusion matrix, regression to five sums; both add up exactly over
batches and ranks, so evaluation never holds every prediction in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(
    predictions: torch.Tensor, references: torch.Tensor, num_labels: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(K, K) int64 counts, rows = reference class, columns = predicted class, over entries not `ignore_index`."""
    predictions, references = predictions.reshape(-1).long(), references.reshape(-1).long()
    scored = (references >= 0) & (references < num_labels)
    if ignore_index is not None:
        scored &= references != ignore_index
    pairs = references[scored] * num_labels + predictions[scored].clamp(0, num_labels - 1)
    return torch.bincount(pairs, minlength=num_labels**2).reshape(num_labels, num_labels).cpu()


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (a class absent from both)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def segmentation_scores(confusion: torch.Tensor | np.ndarray, id2label: dict[int, str] | None = None) -> dict:
    """Mean IoU, per-class IoU, pixel accuracy, mean F1 and per-class F1 of a (K, K) confusion matrix. Classes absent
    from both references and predictions are left out of the means (their per-class scores are NaN)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    iou = _ratio(true_positive, predicted + actual - true_positive)
    f1 = _ratio(2 * true_positive, predicted + actual)
    names = [str((id2label or {}).get(index, index)) for index in range(len(confusion))]
    scores = {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / max(confusion.sum(), 1)),
        "mean_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
    }
    scores.update({f"iou_{name}": float(value) for name, value in zip(names, iou, strict=True)})
    scores.update({f"f1_{name}": float(value) for name, value in zip(names, f1, strict=True)})
    return scores


def classification_scores(confusion: torch.Tensor | np.ndarray) -> dict:
    """Accuracy and macro F1 (over classes present in references or predictions) of a (K, K) confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    f1 = _ratio(2 * true_positive, confusion.sum(axis=0) + confusion.sum(axis=1))
    return {
        "accuracy": float(true_positive.sum() / max(confusion.sum(), 1)),
        "macro_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
    }


def regression_sums(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(5,) float64: count, Σ error², Σ |error|, Σ y, Σ y²: what RMSE, MAE and R² need, summable across batches."""
    predictions = predictions.reshape(-1).double().cpu()
    references = references.reshape(-1).double().cpu()
    error = predictions - references
    return torch.stack(
        [
            torch.tensor(float(len(references)), dtype=torch.float64),
            (error**2).sum(),
            error.abs().sum(),
            references.sum(),
            (references**2).sum(),
        ]
    )


def regression_scores(sums: torch.Tensor | np.ndarray | Sequence[float]) -> dict:
    """RMSE, MAE and R² (1 − SSE / total sum of squares about the mean) from [`regression_sums`]."""
    count, squared, absolute, total, total_squares = (float(value) for value in sums)
    count = max(count, 1.0)
    spread = total_squares - total**2 / count
    return {
        "rmse": (squared / count) ** 0.5,
        "mae": absolute / count,
        "r2": 1 - squared / spread if spread > 0 else float("nan"),
    }


class StreamingMetrics:
    """`compute_metrics` for `Trainer` with `batch_eval_metrics=True`: accumulates per batch, scores at the end.

    Predictions arrive as produced by [`predictions_for_metrics`] (class ids, or values for regression).
    """

    def __init__(self, task: str, num_labels: int, ignore_index: int = 255, id2label: dict | None = None) -> None:
        self.task, self.num_labels, self.ignore_index, self.id2label = task, num_labels, ignore_index, id2label
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(5, dtype=torch.float64) if self.task == "regression" else None

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict:
        predictions = torch.as_tensor(eval_prediction.predictions)
        references = torch.as_tensor(eval_prediction.label_ids)
        if self.task == "regression":
            batch = regression_sums(predictions, references)
        else:
            ignore = self.ignore_index if self.task == "semantic-segmentation" else None
            batch = confusion_matrix(predictions, references, self.num_labels, ignore)
        self.total = batch if self.total is None else self.total + batch
        if not compute_result:
            return {}
        total, _ = self.total, self.reset()
        if self.task == "regression":
            return regression_scores(total)
        if self.task == "semantic-segmentation":
            return segmentation_scores(total, self.id2label)
        return classification_scores(total)


def predictions_for_metrics(task: str):
    """`preprocess_logits_for_metrics`: class ids (argmax over the class axis) or the regression value."""

    def preprocess(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.squeeze(-1) if task == "regression" else logits.argmax(dim=1)

    return preprocess


__all__ = [
    "StreamingMetrics",
    "classification_scores",
    "confusion_matrix",
    "predictions_for_metrics",
    "regression_scores",
    "regression_sums",
    "segmentation_scores",
]
