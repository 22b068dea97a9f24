"""Embeddings of GeoTIFF chips → GeoParquet (the v0 embeddings format), streamed and resumable.

Columns: `source_url` (string), `date` (date32), `embeddings` (fixed-size list of float32), `geometry` (the chip's
bounds as a WKB polygon in OGC:CRS84), `nodata_fraction` (float32: the share of the chip's values that were missing
and filled; 0 for clean chips). The file's `geo` metadata follows GeoParquet 1.1; `clay:embeddings`
records the level and the shape of each embedding.

Work is written in parts (`OUT.parquet.parts/part-NNNNN.parquet`, each renamed into place when complete), so an
interrupted run loses at most one part and `resume=True` skips every chip already in a part. When all chips are
done the parts are joined into OUT.parquet, row group by row group.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pyproj import CRS, Transformer
from shapely import Polygon, box, to_wkb
from shapely.ops import transform as transform_geometry

from .data.chips import ChipLayout
from .data.dataset import (
    chip_dataloader,
    drop_nonfinite_chips,
    load_geotiff_dataset,
    model_inputs,
    resolve_sources,
)
from .image_processing_clay import ClayImageProcessor, load_image_processor
from .modeling_clay import ClayModel

logger = logging.getLogger(__name__)

LEVELS = ("mean", "patch", "group")
CRS84 = CRS.from_user_input("OGC:CRS84")


@dataclass
class EmbeddingRun:
    """What an embedding run did."""

    output: Path
    embedded: int
    skipped_done: int
    bad_chips: int
    shape: tuple[int, ...]


def load_encoder(model_name_or_path: str, device: str | torch.device = "cpu") -> tuple[ClayModel, ClayImageProcessor]:
    """The encoder and its saved processor (or the v0 processor for the model's bands, if none was saved)."""
    model = ClayModel.from_pretrained(model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


def embedding_shape(model: ClayModel, level: str, image_size: int) -> tuple[int, ...]:
    """(D,) for `mean`, (h, w, D) for `patch`, (G, h, w, D) for `group`."""
    side = image_size // model.config.patch_size
    dim = model.config.hidden_size
    return {"mean": (dim,), "patch": (side, side, dim), "group": (model.config.num_groups, side, side, dim)}[level]


def embed_batch(model: ClayModel, inputs: dict[str, torch.Tensor], level: str) -> torch.Tensor:
    """(B, …) float32 embeddings at `level` (see [`embedding_shape`]), flattened per chip."""
    outputs = model(**inputs)
    if level == "mean":
        return outputs.pooler_output.float()
    batch_size = inputs["pixel_values"].shape[0]
    height, width = (size // model.config.patch_size for size in inputs["pixel_values"].shape[-2:])
    tokens = outputs.last_hidden_state[:, :-2].float()  # (B, G·L, D)
    tokens = tokens.view(batch_size, model.config.num_groups, height, width, -1)  # (B, G, h, w, D)
    if level == "patch":
        tokens = tokens.mean(dim=1)  # (B, h, w, D)
    return tokens.reshape(batch_size, -1)


def chip_footprint(bbox: Sequence[float], epsg: int) -> Polygon:
    """The chip's bounds (in its CRS) as a polygon in OGC:CRS84 (lon, lat), edges densified before reprojecting."""
    polygon = box(*bbox).segmentize((bbox[2] - bbox[0]) / 8)
    if epsg == 4326:
        return polygon
    transformer = Transformer.from_crs(CRS.from_epsg(epsg), CRS84, always_xy=True)
    return transform_geometry(transformer.transform, polygon)


def geo_metadata(bbox: list[float] | None) -> dict:
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": CRS84.to_json_dict()}
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def schema(length: int) -> pa.Schema:
    return pa.schema(
        [
            ("source_url", pa.string()),
            ("date", pa.date32()),
            ("embeddings", pa.list_(pa.float32(), length)),
            ("geometry", pa.binary()),
            ("nodata_fraction", pa.float32()),
        ]
    )


def embedding_layout(
    model: ClayModel,
    processor: ClayImageProcessor,
    bands: Sequence[str] | None = None,
    fill_value: float | str | None = None,
    image_size: int | None = None,
) -> ChipLayout:
    """What each chip must give the model: its bands picked by name (`bands` names the chips' bands in the
    chips' order; by default their band descriptions), `image_size` (a multiple of the patch size; the model's
    by default), missing pixels filled with the processor's `fill_value` fill or the chip skipped."""
    model_bands = model.config.band_names
    fill = None if fill_value is None else processor.fill_values(fill_value, model_bands)
    return ChipLayout.for_model(model.config, image_size, chip_bands=bands, fill_values=fill)


def finite_rows(vectors: np.ndarray, batch: dict) -> np.ndarray:
    """(B,) True where a chip's embedding is finite; the others are named in a warning (never written)."""
    finite = np.isfinite(vectors).all(axis=1)
    for url in (url for url, ok in zip(batch["source_url"], finite, strict=True) if not ok):
        logger.warning("skipped %s: non-finite embedding", url)
    return finite


def embed_to_geoparquet(
    model: ClayModel,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    output: str | PathLike,
    level: str = "mean",
    bands: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    rows_per_part: int = 1024,
    resume: bool = False,
    progress: bool = True,
    fill_value: float | str | None = None,
    image_size: int | None = None,
) -> EmbeddingRun:
    """Embed every chip of `source` and write GeoParquet to `output` (see the module docstring).

    `bands` names the chips' bands in the chips' order (by default each chip's band descriptions, else v0 order for
    13 bands); the model's bands are picked from them by name. A chip that does not fit the model (see
    [`embedding_layout`]), cannot be read or holds missing pixels (unless `fill_value` is "mean" or a raw value) is
    skipped, named in a warning and counted in `bad_chips`.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
    layout = embedding_layout(model, processor, bands, fill_value, image_size)
    output = Path(output)
    parts_dir = output.with_name(output.name + ".parts")
    if not resume:
        shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = _done_sources(parts_dir)

    paths = [path for path in resolve_sources(source) if path not in done]
    device = next(model.parameters()).device
    writer = _PartWriter(parts_dir, rows_per_part)
    bad_chips, embedded, shape = 0, 0, None
    if paths:
        dataset = load_geotiff_dataset(paths, num_workers=num_workers, layout=layout)
        loader = chip_dataloader(dataset, batch_size, num_workers)
        for batch in _progress(loader, len(paths), batch_size, progress):
            inputs = model_inputs(batch, processor, device, model.config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            bad_chips += batch["bad_chips"]
            if not batch["source_url"]:
                continue
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                vectors = embed_batch(model, inputs, level).cpu().numpy()
            finite = finite_rows(vectors, batch)
            bad_chips += int((~finite).sum())
            shape = shape or embedding_shape(model, level, inputs["pixel_values"].shape[-1])
            writer.add(batch, vectors, finite)
            embedded += int(finite.sum())
    writer.close()
    if shape is None:
        shape = _recorded_shape(parts_dir) or embedding_shape(model, level, layout.size[1])
    _join_parts(parts_dir, output, level, shape)
    shutil.rmtree(parts_dir)
    logger.info(
        "embedded %d chips (%d already done, %d bad chips skipped) → %s", embedded, len(done), bad_chips, output
    )
    return EmbeddingRun(output, embedded, len(done), bad_chips, shape)


def _progress(loader, total: int, batch_size: int, enabled: bool) -> Iterator[dict]:
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="chip", disable=not enabled, desc="embedding", mininterval=1.0) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch["source_url"]) + batch["bad_chips"])


class _PartWriter:
    """Buffers rows and writes them as complete part files (temporary name, then renamed)."""

    def __init__(self, folder: Path, rows_per_part: int) -> None:
        self.folder, self.rows_per_part = folder, rows_per_part
        self.rows: list[dict] = []
        self.index = len(list(folder.glob("part-*.parquet")))

    def add(self, batch: dict, vectors: np.ndarray, keep: np.ndarray) -> None:
        for i, url in enumerate(batch["source_url"]):
            if not keep[i]:
                continue
            footprint = chip_footprint(batch["bbox"][i].tolist(), int(batch["epsg"][i]))
            self.rows.append(
                {
                    "source_url": url,
                    "date": batch["date"][i],
                    "embeddings": vectors[i],
                    "geometry": to_wkb(footprint),
                    "nodata_fraction": float(batch["nodata_fraction"][i]),
                }
            )
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        length = len(self.rows[0]["embeddings"])
        table = pa.table(
            {
                "source_url": [row["source_url"] for row in self.rows],
                "date": [row["date"] for row in self.rows],
                "embeddings": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.concatenate([row["embeddings"] for row in self.rows]).astype(np.float32)), length
                ),
                "geometry": [row["geometry"] for row in self.rows],
                "nodata_fraction": pa.array([row["nodata_fraction"] for row in self.rows], pa.float32()),
            },
            schema=schema(length),
        )
        final = self.folder / f"part-{self.index:05d}.parquet"
        staging = final.with_suffix(".tmp")
        pq.write_table(table, staging)
        staging.rename(final)
        self.index += 1
        self.rows = []

    def close(self) -> None:
        self.flush()


def _done_sources(parts_dir: Path) -> set[str]:
    done: set[str] = set()
    for part in sorted(parts_dir.glob("part-*.parquet")):
        done.update(pq.read_table(part, columns=["source_url"]).column("source_url").to_pylist())
    return done


def _recorded_shape(parts_dir: Path) -> tuple[int, ...] | None:
    parts = sorted(parts_dir.glob("part-*.parquet"))
    return (pq.read_schema(parts[0]).field("embeddings").type.list_size,) if parts else None


def _join_parts(parts_dir: Path, output: Path, level: str, shape: tuple[int, ...]) -> None:
    """Join the parts into one GeoParquet file with `geo` and `clay:embeddings` metadata."""
    parts = sorted(parts_dir.glob("part-*.parquet"))
    length = int(np.prod(shape))
    bounds = _total_bounds(parts)
    metadata = {
        b"geo": json.dumps(geo_metadata(bounds)).encode(),
        b"clay:embeddings": json.dumps({"level": level, "shape": list(shape)}).encode(),
    }
    target = schema(length).with_metadata(metadata)
    staging = output.with_name(output.name + ".tmp")
    with pq.ParquetWriter(staging, target) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(target))
    staging.rename(output)


def _total_bounds(parts: list[Path]) -> list[float] | None:
    from shapely import bounds, from_wkb

    boxes = [bounds(from_wkb(pq.read_table(p, columns=["geometry"]).column("geometry").to_pylist())) for p in parts]
    if not boxes or not sum(len(b) for b in boxes):
        return None
    stacked = np.concatenate(boxes)
    return [
        float(stacked[:, 0].min()),
        float(stacked[:, 1].min()),
        float(stacked[:, 2].max()),
        float(stacked[:, 3].max()),
    ]


__all__ = [
    "EmbeddingRun",
    "chip_footprint",
    "embed_batch",
    "embed_to_geoparquet",
    "embedding_layout",
    "embedding_shape",
    "load_encoder",
]
