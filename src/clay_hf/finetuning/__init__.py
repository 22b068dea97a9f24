"""Fine-tuning Clay on labelled chips: data, metrics, the `Trainer` script and predictions as GeoTIFFs/GeoParquet."""

from .data import (
    ChipLabelDataset,
    ChipReader,
    ClayDataCollator,
    SegmentationDataset,
    band_statistics,
    labelled_chips,
    processor_with_statistics,
    segmentation_pairs,
)
from .scores import StreamingMetrics, classification_scores, regression_scores, segmentation_scores

__all__ = [
    "ChipLabelDataset",
    "ChipReader",
    "ClayDataCollator",
    "SegmentationDataset",
    "StreamingMetrics",
    "band_statistics",
    "classification_scores",
    "labelled_chips",
    "processor_with_statistics",
    "regression_scores",
    "segmentation_pairs",
    "segmentation_scores",
]
