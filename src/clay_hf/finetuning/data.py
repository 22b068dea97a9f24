"""Labelled GeoTIFF chips for fine-tuning: segmentation folders, class folders, CSV lists; batches for `Trainer`.

Layouts:
- segmentation: `root/images/NAME.tif` (any band count) and `root/labels/NAME.tif` (one band of class ids on the
  image's grid); the label's nodata is not scored (`ignore_index`);
- classification: `root/<class>/*.tif`, or a CSV with `path,label` (regression: `path,value`), paths relative to
  the CSV's folder.

Images are read by the data reader ([`clay_hf.data.read_chip`]) under its rules: bands named by `bands` (the file's
band order), else by the file's band names (descriptions, aliases included), picked by name in the model's order;
missing pixels (nodata value, NaN, ±inf, GDAL mask) filled with the band mean, and their labels not scored.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window
from transformers.utils.logging import get_logger

from ..data.chips import (
    ChipError,
    ChipLayout,
    fill_missing,
    read_chip,
    read_chip_pixels,
    select_bands,
)
from ..data.dataset import GEOTIFF_SUFFIXES, BadChipLog, split_paths
from ..models.clay.image_processing_clay import ClayImageProcessor, encode_dates, encode_lonlat

logger = get_logger(__name__)

TASKS = ("semantic-segmentation", "image-classification", "regression")


# ---------------------------------------------------------------------------------------------------------------------
# Finding labelled examples
# ---------------------------------------------------------------------------------------------------------------------


def _geotiffs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix in GEOTIFF_SUFFIXES)


def segmentation_pairs(root: str | PathLike) -> list[tuple[str, str]]:
    """`root/images/NAME.tif` with `root/labels/NAME.tif` → [(image, label)]; an image without a label is skipped
    with a warning naming it."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"{root}: a segmentation folder holds images/ and labels/ (files of the same names)")
    pairs, unlabelled = [], []
    for image in _geotiffs(images_dir):
        label = labels_dir / image.name
        (pairs.append((str(image), str(label))) if label.exists() else unlabelled.append(image.name))
    if unlabelled:
        logger.warning("%s: %d images have no label of the same name in labels/ and are skipped, e.g. %s",
                       root, len(unlabelled), unlabelled[:3])  # fmt: skip
    if not pairs:
        raise FileNotFoundError(f"{root}: no image in images/ has a label of the same name in labels/")
    return pairs


def labelled_chips(source: str | PathLike, regression: bool = False) -> list[tuple[str, str | float]]:
    """Class folders `root/<class>/*.tif`, or a CSV `path,label` (`path,value` for regression) whose paths are
    relative to the CSV's folder → [(chip path, label or value)]."""
    source = Path(source)
    if source.is_dir():
        if regression:
            raise ValueError(f"{source}: regression targets come from a CSV with path,value columns, not folders")
        chips = [(str(path), folder.name) for folder in sorted(source.iterdir()) if folder.is_dir()
                 for path in _geotiffs(folder)]  # fmt: skip
        if not chips:
            raise FileNotFoundError(f"{source}: no chips in class folders (expected {source}/<class>/*.tif)")
        return chips
    return _chips_from_csv(source, "value" if regression else "label")


def _chips_from_csv(path: Path, column: str) -> list[tuple[str, str | float]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "path" not in fields or column not in fields:
            raise ValueError(f"{path}: expected a header with 'path' and '{column}' columns, found {fields}")
        rows = list(reader)
    chips: list[tuple[str, str | float]] = []
    for line, row in enumerate(rows, start=2):
        chip = path.parent / row["path"]
        if column == "value":
            try:
                chips.append((str(chip), float(row["value"])))
            except ValueError:
                raise ValueError(f"{path}, line {line}: value {row['value']!r} is not a number") from None
        else:
            chips.append((str(chip), row["label"]))
    if not chips:
        raise ValueError(f"{path}: no rows")
    return chips


def train_validation(
    train_dir: str, validation_dir: str | None, find: Any, validation_fraction: float = 0.2
) -> tuple[list, list]:
    """Examples of `train_dir` and `validation_dir`, or the stable hash split of `train_dir` (by the image name)."""
    train = find(train_dir)
    if validation_dir is not None:
        return train, find(validation_dir)
    by_path = {example[0]: example for example in train}
    split = split_paths(list(by_path), validation_fraction)
    return [by_path[path] for path in split["train"]], [by_path[path] for path in split["validation"]]


# ---------------------------------------------------------------------------------------------------------------------
# Reading images and labels
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ImageHeader:
    """What a chip's header says: the model's bands (as the chip names them), nodata, grid, date."""

    path: str
    band_names: list[str]
    nodata: float | None
    crs: Any
    transform: Any
    height: int
    width: int
    date: dt.date


class ChipReader:
    """Reads image chips of any size through the data reader ([`read_chip`]): the model's bands picked by name
    (the one naming rule, [`chip_band_names`]), missing pixels (the one definition: nodata, NaN, ±inf, the GDAL
    mask) filled with the band means by the one fill, and marked so that their labels are not scored.

    Args:
        model_bands: the bands the model reads, in its order.
        fill_values: raw value per model band that replaces missing values (the processor's means).
        bands: names of the files' bands in file order (else the files' band names).
        date: the date of chips that carry none (no `date` tag, no v0 name).
    """

    def __init__(
        self,
        model_bands: Sequence[str],
        fill_values: Sequence[float],
        bands: Sequence[str] | None = None,
        date: str | dt.date | None = None,
    ) -> None:
        self.model_bands = list(model_bands)
        self.fill_values = fill_values
        self.bands = list(bands) if bands else None
        self.date = date

    @property
    def fill_values(self) -> np.ndarray:
        return self._fill_values

    @fill_values.setter
    def fill_values(self, values: Sequence[float]) -> None:
        self._fill_values = np.asarray(values, dtype=np.float32)
        if self._fill_values.shape != (len(self.model_bands),):
            raise ValueError(f"one fill value per model band ({len(self.model_bands)}), got {len(values)}")

    @property
    def layout(self) -> ChipLayout:
        """The layout the data reader reads these chips to: the model's bands, any size, float32, filled."""
        return ChipLayout(
            bands=tuple(self.model_bands),
            size=None,
            dtype="float32",
            chip_bands=None if self.bands is None else tuple(self.bands),
            fill_values=tuple(float(value) for value in self._fill_values),
        )

    def header(self, path: str) -> ImageHeader:
        """The chip's header, checked by the data reader: the model's bands present by name, a CRS, a date."""
        chip = read_chip(path, date=self.date, read_pixels=False, layout=self.layout)
        height, width = chip.size
        return ImageHeader(
            path, list(chip.band_names), chip.nodata, CRS.from_wkt(chip.crs), Affine(*chip.transform), height, width,
            chip.date,
        )  # fmt: skip

    def read(self, header: ImageHeader) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(pixels (C, H, W) float32 in model band order with missing values filled, missing (H, W) bool: a pixel
        with any band missing, lon, lat)."""
        chip = read_chip(header.path, date=self.date, size=(header.height, header.width), layout=self.layout)
        return chip.pixels, _pixel_mask(chip.missing, chip.pixels.shape[1:]), chip.lon, chip.lat

    def read_window(
        self, dataset: Any, header: ImageHeader, row: int, col: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window of an open scene → (pixels (C, h, w) float32 in model band order with missing values filled,
        missing (h, w)); the parts of the window outside the scene count as missing."""
        layout = self.layout
        names, indexes = select_bands(header.path, dataset, layout)
        pixels, missing, _ = read_chip_pixels(dataset, indexes, names, window=Window(col, row, width, height))
        return fill_missing(header.path, pixels, missing, layout), _pixel_mask(missing, (height, width))


def _pixel_mask(missing: np.ndarray | None, shape: Sequence[int]) -> np.ndarray:
    """(H, W) True where any band of a pixel is missing."""
    return np.zeros(tuple(shape), dtype=bool) if missing is None else missing.any(axis=0)


def read_label(path: str, image: ImageHeader, num_labels: int, ignore_index: int) -> np.ndarray:
    """A single-band class raster on the image's grid → (H, W) int64, its nodata set to `ignore_index`."""
    try:
        with rasterio.open(path) as dataset:
            if dataset.count != 1:
                raise ChipError(path, f"has {dataset.count} bands; a label raster has one band of class ids")
            grid = (dataset.crs, dataset.height, dataset.width)
            if grid != (image.crs, image.height, image.width) or not dataset.transform.almost_equals(image.transform):
                raise ChipError(
                    path,
                    f"is not on the grid of its image {image.path}: label {dataset.crs} {dataset.height}×"
                    f"{dataset.width} {tuple(dataset.transform)[:6]} vs image {image.crs} {image.height}×"
                    f"{image.width} {tuple(image.transform)[:6]}",
                )
            values, nodata = dataset.read(1), dataset.nodata
    except (RasterioError, OSError) as error:
        raise ChipError(path, f"cannot be read ({error})") from error
    unscored = np.zeros(values.shape, dtype=bool) if nodata is None else values == nodata
    if np.issubdtype(values.dtype, np.floating):
        unscored |= ~np.isfinite(values)
        if (values[~unscored] % 1).any():
            raise ChipError(path, "holds fractional values; a label raster holds integer class ids")
    labels = np.where(unscored, ignore_index, values).astype(np.int64)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_labels))
    if bad.any():
        raise ChipError(
            path, f"holds class ids {sorted(np.unique(labels[bad]).tolist())[:10]} outside 0…{num_labels - 1}"
        )
    return labels


def flip_rotate(arrays: list[np.ndarray], generator: torch.Generator | None = None) -> list[np.ndarray]:
    """The same random flip and 90° rotation (180° only for non-square chips) of every array (…, H, W)."""
    height, width = arrays[0].shape[-2:]
    quarter_turns = int(torch.randint(4, (1,), generator=generator)) if height == width else 0
    if height != width:
        quarter_turns = 2 * int(torch.randint(2, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    out = []
    for array in arrays:
        array = np.rot90(array, quarter_turns, axes=(-2, -1))
        out.append(np.ascontiguousarray(array[..., ::-1] if flip else array))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Datasets and the collator
# ---------------------------------------------------------------------------------------------------------------------


class _CheckedExamples(torch.utils.data.Dataset):
    """Examples whose headers were read and checked up front; bad ones are skipped, counted and named."""

    def __init__(self, examples: Sequence[tuple[str, Any]], reader: ChipReader, augment: bool = False) -> None:
        self.reader, self.augment = reader, augment
        self.examples, self.headers, self.log = [], [], BadChipLog(keep=True)
        for example in examples:
            try:
                header = reader.header(example[0])
                self._check(example, header)
            except ChipError as error:
                self.log.skip(error)
                continue
            self.examples.append(example)
            self.headers.append(header)
        if not self.examples:
            raise ValueError(f"no usable examples among {len(examples)}: {[str(error) for error in self.bad[:3]]}")

    @property
    def bad(self) -> list[ChipError]:
        """The examples skipped as bad, each naming its file and why."""
        return self.log.errors

    def _check(self, example: tuple[str, Any], header: ImageHeader) -> None:
        """Further checks of one example (overridden)."""

    def __len__(self) -> int:
        return len(self.examples)


class SegmentationDataset(_CheckedExamples):
    """(image, label) pairs → {pixels (C, H, W) raw filled, labels (H, W), date, lon, lat}."""

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        reader: ChipReader,
        num_labels: int,
        ignore_index: int = 255,
        augment: bool = False,
    ) -> None:
        self.num_labels, self.ignore_index = num_labels, ignore_index
        super().__init__(pairs, reader, augment)

    def _check(self, example: tuple[str, Any], header: ImageHeader) -> None:
        read_label(example[1], header, self.num_labels, self.ignore_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        header = self.headers[index]
        pixels, missing, lon, lat = self.reader.read(header)
        labels = read_label(self.examples[index][1], header, self.num_labels, self.ignore_index)
        labels[missing] = self.ignore_index  # never score what the image does not show
        if self.augment:
            pixels, labels = flip_rotate([pixels, labels])
        return {"pixels": pixels, "labels": labels, "date": header.date, "lon": lon, "lat": lat}


class ChipLabelDataset(_CheckedExamples):
    """(chip, class name or value) → {pixels, labels (class id or float), date, lon, lat}.

    `label2id` maps class names to ids (classification); without it the targets are regression values.
    """

    def __init__(
        self,
        chips: Sequence[tuple[str, str | float]],
        reader: ChipReader,
        label2id: dict[str, int] | None = None,
        augment: bool = False,
    ) -> None:
        self.label2id = label2id
        super().__init__(chips, reader, augment)

    def _check(self, example: tuple[str, Any], header: ImageHeader) -> None:
        if self.label2id is not None and str(example[1]) not in self.label2id:
            raise ChipError(example[0], f"has label {example[1]!r}, not one of {sorted(self.label2id)}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        header = self.headers[index]
        pixels, _, lon, lat = self.reader.read(header)
        if self.augment:
            (pixels,) = flip_rotate([pixels])
        target = self.examples[index][1]
        label = self.label2id[str(target)] if self.label2id is not None else float(target)
        return {"pixels": pixels, "labels": label, "date": header.date, "lon": lon, "lat": lat}


class ClayDataCollator:
    """Records → `pixel_values` (normalised with the processor), `timestep`, `latlon`, `labels`: `Trainer`'s inputs."""

    def __init__(self, processor: ClayImageProcessor, bands: Sequence[str]) -> None:
        self.processor, self.bands = processor, list(bands)

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(np.stack([record["pixels"] for record in records]))  # (B, C, H, W)
        lonlat = np.array([[record["lon"], record["lat"]] for record in records], dtype=np.float64)
        labels = [record["labels"] for record in records]
        if isinstance(labels[0], np.ndarray):
            label_tensor = torch.from_numpy(np.stack(labels))  # (B, H, W)
        else:
            label_tensor = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        return {
            "pixel_values": self.processor.normalize_tensor(pixels, self.bands),
            "timestep": torch.from_numpy(encode_dates([record["date"] for record in records])),
            "latlon": torch.from_numpy(encode_lonlat(lonlat)),
            "labels": label_tensor,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation statistics of new bands or sensors
# ---------------------------------------------------------------------------------------------------------------------


def band_statistics(reader: ChipReader, headers: Sequence[ImageHeader]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each model band over the chips' valid pixels (nodata left out)."""
    total = np.zeros(len(reader.model_bands))
    squares = np.zeros(len(reader.model_bands))
    count = 0
    for header in headers:
        pixels, missing, _, _ = reader.read(header)
        valid = pixels[:, ~missing].astype(np.float64)  # (C, valid pixels)
        total += valid.sum(axis=1)
        squares += (valid**2).sum(axis=1)
        count += valid.shape[1]
    if count == 0:
        raise ValueError("no valid pixels to compute band statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std == 0] = 1.0  # a constant band normalises to 0, not to inf
    return mean.tolist(), std.tolist()


def processor_with_statistics(
    processor: ClayImageProcessor | None,
    reader: ChipReader,
    headers: Sequence[ImageHeader],
    bands: Sequence[str] | None = None,
) -> ClayImageProcessor:
    """A processor for the model's bands whose statistics for `bands` (default: all) are computed from the chips;
    the other bands keep `processor`'s values (its nodata and fill settings are kept too)."""
    computed_mean, computed_std = band_statistics(reader, headers)
    recompute = set(reader.model_bands if bands is None else bands)
    known = {}
    if processor is not None:
        known = dict(
            zip(processor.band_names, zip(processor.image_mean, processor.image_std, strict=True), strict=True)
        )
    mean, std = [], []
    for index, band in enumerate(reader.model_bands):
        if band in recompute or band not in known:
            mean.append(computed_mean[index])
            std.append(computed_std[index])
        else:
            mean.append(known[band][0])
            std.append(known[band][1])
    return ClayImageProcessor(
        band_names=reader.model_bands,
        image_mean=mean,
        image_std=std,
        nodata=None if processor is None else processor.nodata,
        fill_value=None if processor is None else processor.fill_value,
    )


__all__ = [
    "TASKS",
    "ChipLabelDataset",
    "ChipReader",
    "ClayDataCollator",
    "ImageHeader",
    "SegmentationDataset",
    "band_statistics",
    "flip_rotate",
    "labelled_chips",
    "processor_with_statistics",
    "read_label",
    "segmentation_pairs",
    "train_validation",
]
