"""Predictions of a fine-tuned Clay: class maps as GeoTIFFs on each chip's grid, or chip classes as GeoParquet.

    python scripts/predict.py --model_name_or_path runs/floods --data_dir scenes/ --output_dir preds/

Segmentation writes one uint8 GeoTIFF per input, at the input's path relative to `--data_dir` (inputs of the same
name in two folders get two maps; two inputs that would share a map are refused), with the input's CRS, transform
and size, and nodata (255) where the input had missing pixels. Every output is written atomically and read back
before it gets its name, one run writes an output folder at a time, and `--resume` keeps only maps that read back
whole. An input larger than the tile size is predicted in overlapping tiles whose
class probabilities are blended with a cosine window (every pixel is a weighted mean of the tiles covering it), so
tile borders leave no seams. Classification and regression write one GeoParquet row per chip: the class and the
class probabilities (or the value) with the chip's footprint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import torch
from pyproj import Transformer
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from shapely import to_wkb
from transformers import AutoConfig
from transformers.utils.logging import get_logger

from ..chipping.tiling import verify_geotiff, write_chip_file
from ..data.chips import ChipError, chip_file_name
from ..data.dataset import BadChipLog
from ..inference.geoparquet import chip_footprint, geo_metadata
from ..models.clay.image_processing_clay import ClayImageProcessor, encode_dates, encode_lonlat, load_image_processor
from ..models.clay.modeling_clay_heads import ClayForImageClassification, ClayForSemanticSegmentation
from ..utils.errors import ClayUserError
from ..utils.geometry import lonlat_bbox
from ..utils.model_source import from_pretrained_checked
from ..utils.outputs import atomic_file, make_folder
from .data import ChipReader, ImageHeader

logger = get_logger(__name__)

CLASS_MAP_NODATA = 255


# ---------------------------------------------------------------------------------------------------------------------
# Tiles and blending
# ---------------------------------------------------------------------------------------------------------------------


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `size` (≥ tile) with at least `overlap` pixels shared by
    neighbours; the last tile ends flush with the edge."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def cosine_window(height: int, width: int) -> torch.Tensor:
    """(h, w) blending weights: the product of two half-sine windows, highest in the centre, > 0 at the edges."""
    rows = torch.sin(math.pi * (torch.arange(height) + 0.5) / height)
    cols = torch.sin(math.pi * (torch.arange(width) + 0.5) / width)
    return rows[:, None] * cols[None, :]


def _pad_to(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad (C, H, W) normalised pixels (0 = the band mean) at the bottom and right to (C, height, width)."""
    return torch.nn.functional.pad(pixels, (0, width - pixels.shape[-1], 0, height - pixels.shape[-2]))


def tile_latlon(header: ImageHeader, row: int, col: int, height: int, width: int) -> tuple[float, float]:
    """(lon, lat) of a tile's centre, from the scene's transform and CRS."""
    x, y = header.transform @ (col + width / 2, row + height / 2)
    if header.crs.to_epsg() == 4326:
        return float(x), float(y)
    lon, lat = Transformer.from_crs(header.crs, "EPSG:4326", always_xy=True).transform(x, y)
    return float(lon), float(lat)


@torch.no_grad()
def segment_scene(
    model: ClayForSemanticSegmentation,
    processor: ClayImageProcessor,
    reader: ChipReader,
    header: ImageHeader,
    tile: int,
    overlap: int,
    batch_size: int = 4,
) -> tuple[torch.Tensor, np.ndarray]:
    """Class probabilities (K, H, W) and the nodata mask (H, W) of a scene of any size, read tile by tile: tiles
    of at most `tile` pixels (a multiple of the patch size) overlapping by `overlap`, softmax per tile, blended
    with [`cosine_window`] weights. Only the blended probabilities of the whole scene are held in memory."""
    device, patch = next(model.parameters()).device, model.config.patch_size
    height, width = header.height, header.width
    tile_h = min(tile, math.ceil(height / patch) * patch)
    tile_w = min(tile, math.ceil(width / patch) * patch)
    rows, cols = max(height, tile_h), max(width, tile_w)  # a scene smaller than a tile is read with a margin
    windows = [(row, col) for row in tile_starts(rows, tile_h, overlap) for col in tile_starts(cols, tile_w, overlap)]
    weight = cosine_window(tile_h, tile_w).to(device)
    total = torch.zeros(model.config.num_labels, rows, cols, device=device)
    weights = torch.zeros(rows, cols, device=device)
    missing = np.zeros((rows, cols), dtype=bool)
    timestep = torch.from_numpy(encode_dates([header.date]))
    with rasterio.open(header.path) as dataset:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            tiles = []
            for row, col in batch:
                pixels, tile_missing = reader.read_window(dataset, header, row, col, tile_h, tile_w)
                missing[row : row + tile_h, col : col + tile_w] |= tile_missing
                tiles.append(torch.from_numpy(pixels))
            pixel_values = processor.normalize_tensor(torch.stack(tiles), reader.model_bands)  # (b, C, h, w)
            lonlat = [tile_latlon(header, row, col, tile_h, tile_w) for row, col in batch]
            logits = model(
                pixel_values=pixel_values.to(device),
                timestep=timestep.expand(len(batch), -1).to(device),
                latlon=torch.from_numpy(encode_lonlat(lonlat)).to(device),
            ).logits  # (b, K, tile_h, tile_w)
            for (row, col), probabilities in zip(batch, logits.float().softmax(dim=1), strict=True):
                total[:, row : row + tile_h, col : col + tile_w] += probabilities * weight
                weights[row : row + tile_h, col : col + tile_w] += weight
    return (total / weights)[:, :height, :width].cpu(), missing[:height, :width]


# ---------------------------------------------------------------------------------------------------------------------
# Running over a folder
# ---------------------------------------------------------------------------------------------------------------------


def load_finetuned(model_name_or_path: str, device: str | torch.device = "cpu"):
    """The fine-tuned model (segmentation or classification, from its config) and its processor."""
    config = from_pretrained_checked(AutoConfig, model_name_or_path)
    architectures = config.architectures or []
    if "ClayForSemanticSegmentation" in architectures:
        model_class = ClayForSemanticSegmentation
    elif "ClayForImageClassification" in architectures:
        model_class = ClayForImageClassification
    else:
        raise ValueError(f"{model_name_or_path} is not a fine-tuned Clay model (architectures: {architectures})")
    model = model_class.from_pretrained(model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


@dataclass
class SceneInputs:
    """A chip's normalised pixels (C, H, W), its nodata mask (H, W) and its header (date, place, grid)."""

    pixels: torch.Tensor
    missing: np.ndarray
    header: ImageHeader


def scene_inputs(reader: ChipReader, processor: ClayImageProcessor, path: str) -> SceneInputs:
    header = reader.header(path)
    pixels, missing, _, _ = reader.read(header)
    normalised = processor.normalize_tensor(torch.from_numpy(pixels)[None], reader.model_bands)[0]  # (C, H, W)
    return SceneInputs(normalised, missing, header)


def write_class_map(path: Path, classes: np.ndarray, header: ImageHeader, id2label: dict) -> None:
    """Write (H, W) uint8 class ids on the scene's grid through the one chip writer (atomic, read back before the
    rename: a full disk is an OutputError naming `path`, never a 0-byte map under its name)."""
    profile = dict(
        driver="GTiff",
        width=header.width,
        height=header.height,
        count=1,
        dtype="uint8",
        crs=header.crs,
        transform=header.transform,
        nodata=CLASS_MAP_NODATA,
        compress="deflate",
    )
    make_folder(path.parent)
    write_chip_file(path, classes[None], profile, {"classes": json.dumps({str(k): v for k, v in id2label.items()})})


def class_map_complete(path: Path) -> bool:
    """Whether a class map from an earlier run is complete (reads back whole, with its classes): what `--resume`
    keeps; a truncated or empty one is predicted again."""
    try:
        verify_geotiff(path)
        with rasterio.open(path) as dataset:
            return "classes" in dataset.tags() and dataset.count == 1
    except (RasterioError, OSError):
        return False


def output_names(paths: Sequence[str], root: str | os.PathLike | None = None) -> dict[str, str]:
    """Each input's output name: its path relative to `root` (the `--data_dir` folder; else the inputs' common
    folder), so inputs of one name in two folders never share an output. Raises a ClayUserError naming the inputs
    when two would still share one (e.g. remote inputs of one file name)."""
    local = [path for path in paths if "://" not in path and not path.startswith("/vsi")]
    base = Path(root) if root is not None and Path(root).is_dir() else None
    if base is None and local:
        base = Path(os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in local]))
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in paths:
        name = os.path.relpath(os.path.abspath(path), base) if path in local and base is not None else None
        if name is None or name.startswith(".."):
            name = chip_file_name(path)
        if name in seen:
            raise ClayUserError(
                f"{seen[name]} and {path} would both be predicted to {name}: give inputs distinct names, or one "
                "--data_dir folder that holds them"
            )
        seen[name] = path
        names[path] = name
    return names


def predict_segmentation(
    model: ClayForSemanticSegmentation,
    processor: ClayImageProcessor,
    paths: Sequence[str],
    output_dir: str | os.PathLike,
    reader: ChipReader,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    resume: bool = False,
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One class map per input, at the input's path relative to `root` (see the module docstring); bad inputs are
    skipped, counted and named. `resume` keeps the maps that read back whole."""
    if model.config.num_labels >= CLASS_MAP_NODATA:
        raise ValueError(f"{model.config.num_labels} classes do not fit a uint8 map with nodata {CLASS_MAP_NODATA}")
    output = make_folder(output_dir)
    names = output_names(paths, root)
    tile = tile or model.config.image_size
    overlap = tile // 4 if overlap is None else overlap
    written, skipped, log = [], 0, BadChipLog(keep=True)
    for path in paths:
        target = output / names[path]
        if resume and class_map_complete(target):
            skipped += 1
            continue
        try:
            header = reader.header(path)
            probabilities, missing = segment_scene(model, processor, reader, header, tile, overlap, batch_size)
        except ChipError as error:
            log.skip(error)
            continue
        except RasterioError as error:
            log.skip(ChipError(path, f"cannot be read ({error})"))
            continue
        classes = probabilities.argmax(dim=0).numpy().astype(np.uint8)
        classes[missing] = CLASS_MAP_NODATA
        write_class_map(target, classes, header, model.config.id2label)
        written.append(str(target))
    return {"written": written, "skipped_existing": skipped, "bad_chips": [str(error) for error in log.errors]}


def predict_chips(
    model: ClayForImageClassification,
    processor: ClayImageProcessor,
    paths: Sequence[str],
    output: str | os.PathLike,
    reader: ChipReader,
) -> dict[str, Any]:
    """A GeoParquet row per chip: class, class id and probabilities (or the regression value), footprint."""
    device = next(model.parameters()).device
    regression = model.config.problem_type == "regression"
    rows: dict[str, list] = {"source_url": [], "date": [], "geometry": []}
    outputs, footprints, log = [], [], BadChipLog(keep=True)
    for path in paths:
        try:
            scene = scene_inputs(reader, processor, path)
        except ChipError as error:
            log.skip(error)
            continue
        patch = model.config.patch_size
        _, height, width = scene.pixels.shape
        pixels = _pad_to(scene.pixels, math.ceil(height / patch) * patch, math.ceil(width / patch) * patch)
        lonlat = tile_latlon(scene.header, 0, 0, height, width)
        with torch.no_grad():
            outputs.append(
                model(
                    pixel_values=pixels[None].to(device),
                    timestep=torch.from_numpy(encode_dates([scene.header.date])).to(device),
                    latlon=torch.from_numpy(encode_lonlat([lonlat])).to(device),
                )
                .logits[0]
                .float()
                .cpu()
            )  # (K,)
        shape = _footprint(scene.header)
        footprints.append(shape)
        rows["source_url"].append(path)
        rows["date"].append(scene.header.date)
        rows["geometry"].append(None if shape is None else to_wkb(shape))
    columns = _prediction_columns(outputs, model.config, regression)
    table = pa.table({**{k: rows[k] for k in ("source_url", "date")}, **columns, "geometry": rows["geometry"]})
    shapes = [shape for shape in footprints if shape is not None]
    metadata = geo_metadata(lonlat_bbox(shapes), {shape.geom_type for shape in shapes} or {"Polygon"})
    table = table.replace_schema_metadata({b"geo": json.dumps(metadata).encode()})
    output = Path(output)
    make_folder(output.parent)
    with atomic_file(output, verify=pq.read_table) as partial:
        pq.write_table(table, partial)
    bad = [str(error) for error in log.errors]
    return {"written": [str(output)], "num_chips": len(outputs), "bad_chips": bad}


def _footprint(header: ImageHeader):
    """The chip's pixel-grid outline in OGC:CRS84, or None (a null geometry, with a warning naming the chip)."""
    bbox = array_bounds(header.height, header.width, header.transform)
    try:
        return chip_footprint(bbox, header.crs.to_wkt(), tuple(header.transform)[:6], (header.height, header.width))
    except Exception as error:  # PROJ and geometry errors: the prediction is kept, the footprint is not
        logger.warning("%s: no footprint (%s); its geometry is left null", header.path, error)
        return None


def _prediction_columns(outputs: list[torch.Tensor], config: Any, regression: bool) -> dict[str, pa.Array]:
    if regression:
        return {"value": pa.array([float(logits[0]) for logits in outputs], pa.float64())}
    probabilities = [logits.softmax(dim=0) for logits in outputs]
    ids = [int(p.argmax()) for p in probabilities]
    return {
        "label": pa.array([config.id2label[i] for i in ids], pa.string()),
        "label_id": pa.array(ids, pa.int32()),
        "probabilities": pa.array([p.tolist() for p in probabilities], pa.list_(pa.float32(), config.num_labels)),
    }


__all__ = ["cosine_window", "load_finetuned", "predict_chips", "predict_segmentation", "segment_scene", "tile_starts"]
