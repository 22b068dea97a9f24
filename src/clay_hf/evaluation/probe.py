"""Linear probe: logistic regression on mean embeddings of labelled chips, the standard test of an embedding."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.dataset import chip_dataloader, drop_nonfinite_chips, load_geotiff_dataset, model_inputs
from ..inference.embeddings import embed_batch, embedding_layout, finite_rows
from ..models.clay.image_processing_clay import ClayImageProcessor
from ..models.clay.modeling_clay import ClayModel


def labels_from_csv(path: str | PathLike) -> dict[str, str]:
    """A CSV with columns `path` (or `source_url`) and `label` → {chip path: label}.

    A relative chip path is relative to the CSV's folder (wherever the command runs); absolute paths and URLs are
    kept as they are.
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "label" not in rows[0] or not ({"path", "source_url"} & set(rows[0])):
        raise ValueError(f"{path}: expected a header with 'path' (or 'source_url') and 'label' columns")
    key = "path" if "path" in rows[0] else "source_url"
    folder = Path(path).parent
    return {_resolve_chip(row[key], folder): row["label"] for row in rows}


def _resolve_chip(chip: str, folder: Path) -> str:
    if "://" in chip or chip.startswith("/vsi"):
        return chip
    path = Path(chip).expanduser()
    return str(path if path.is_absolute() else folder / path)


def labels_from_folders(root: str | PathLike) -> dict[str, str]:
    """Chips in `root/<label>/*.tif` → {chip path: label}."""
    root = Path(root)
    labels = {str(path): path.parent.name for path in sorted(root.glob("*/*.tif*"))}
    if not labels:
        raise FileNotFoundError(f"no chips in class folders under {root} (expected {root}/<label>/*.tif)")
    return labels


def mean_embeddings(
    model: ClayModel, processor: ClayImageProcessor, paths: Sequence[str], batch_size: int = 8
) -> dict[str, np.ndarray]:
    """{chip path: mean embedding} for the good chips among `paths` (bad ones are skipped and named)."""
    device = next(model.parameters()).device
    vectors: dict[str, np.ndarray] = {}
    loader = chip_dataloader(load_geotiff_dataset(list(paths), layout=embedding_layout(model, processor)), batch_size)
    with torch.no_grad():
        for batch in loader:
            batch, inputs = drop_nonfinite_chips(batch, model_inputs(batch, processor, device, model.config.band_names))
            if not batch["source_url"]:
                continue
            embedded = embed_batch(model, inputs, "mean").cpu().numpy()
            finite = finite_rows(embedded, batch)
            for url, vector, ok in zip(batch["source_url"], embedded, finite, strict=True):
                if ok:
                    vectors[url] = vector
    return vectors


def linear_probe(
    model: ClayModel,
    processor: ClayImageProcessor,
    labels: dict[str, str],
    test_size: float = 0.3,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Fit a logistic regression on a fixed stratified split; report test accuracy beside chance."""
    vectors = mean_embeddings(model, processor, sorted(labels), batch_size)
    paths = sorted(vectors)
    features = np.stack([vectors[path] for path in paths])
    targets = np.array([labels[path] for path in paths])
    train_x, test_x, train_y, test_y = train_test_split(
        features, targets, test_size=test_size, random_state=seed, stratify=targets
    )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    classifier.fit(train_x, train_y)
    accuracy = float((classifier.predict(test_x) == test_y).mean())
    majority = Counter(train_y).most_common(1)[0][0]
    return {
        "accuracy": accuracy,
        "chance_accuracy": float((test_y == majority).mean()),
        "num_classes": len(set(targets)),
        "num_train": len(train_y),
        "num_test": len(test_y),
        "num_unreadable": len(labels) - len(vectors),
    }


__all__ = ["labels_from_csv", "labels_from_folders", "linear_probe", "mean_embeddings"]
