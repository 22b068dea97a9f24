"""Similarity search (clay_hf.search, scripts/search.py): LanceDB results equal exact numpy search."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import save_pretraining_model
from pyproj import Transformer

from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.search import main as search_main
from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder
from clay_hf.inference.geoparquet import chip_footprint, geo_metadata
from clay_hf.search import SearchIndexError, build_index, open_index, search
from clay_hf.search.patches import patch_footprints
from clay_hf.search.table import create_ann_index

REPO = Path(__file__).resolve().parents[1]


def write_embeddings(path: Path, vectors: np.ndarray, footprints, dates, level="mean", shape=None) -> Path:
    """An embeddings GeoParquet as embed.py writes it, from given vectors (n, L) and footprints (None: unknown)."""
    table = pa.table(
        {
            "source_url": [f"chip_{i:04d}.tif" for i in range(len(vectors))],
            "date": pa.array(dates, pa.date32()),
            "embeddings": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            "geometry": pa.array(shapely.to_wkb(np.asarray(footprints, dtype=object)), pa.binary()),
        }
    )
    metadata = {
        b"geo": json.dumps(geo_metadata(None)).encode(),
        b"clay:embeddings": json.dumps({"level": level, "shape": list(shape or vectors.shape[1:])}).encode(),
    }
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """300 random 16-d embeddings of 1°×1° chips on a grid, dates over four years."""
    folder = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    footprints = np.array([shapely.box(x, y, x + 1, y + 1) for x in range(-10, 20) for y in range(40, 50)])
    dates = [dt.date(2020 + i % 4, 1 + i % 12, 1) for i in range(300)]
    path = write_embeddings(folder / "embeddings.parquet", vectors, footprints, dates)
    return {"path": path, "vectors": vectors, "footprints": footprints, "dates": np.array(dates), "folder": folder}


def exact(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return 1 - vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    return np.linalg.norm(vectors - query, axis=1)


def row_ids(hits) -> np.ndarray:
    return np.array([int(url[5:9]) for url in hits.column("source_url").to_pylist()])


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_returns_the_exact_nearest_with_their_geometries(synthetic, tmp_path, metric):
    info = build_index(synthetic["path"], tmp_path / "index", metric=metric)
    assert (info.rows, info.metric, info.ann) == (300, metric, None)
    hits = search(tmp_path / "index", like=["chip_0003.tif", "chip_0150.tif"], k=10)
    distances = exact(synthetic["vectors"], synthetic["vectors"][[3, 150]].mean(axis=0), metric)
    expected = np.argsort(distances)[:10]
    np.testing.assert_array_equal(row_ids(hits), expected)
    np.testing.assert_allclose(hits.column("distance").to_numpy(), distances[expected], rtol=1e-4, atol=1e-5)
    geometries = shapely.from_wkb(hits.column("geometry").to_pylist())
    assert all(shapely.equals(geometries, synthetic["footprints"][expected]))
    assert hits.column("date").to_pylist() == list(synthetic["dates"][expected])


def test_where_and_bbox_filters_match_exact_search_over_the_filtered_rows(synthetic, tmp_path):
    build_index(synthetic["path"], tmp_path / "index")
    query = synthetic["vectors"][7]
    distances = exact(synthetic["vectors"], query, "cosine")

    hits = search(tmp_path / "index", like=["chip_0007.tif"], k=5, where="date >= '2022-01-01'")
    allowed = np.flatnonzero(synthetic["dates"] >= dt.date(2022, 1, 1))
    np.testing.assert_array_equal(row_ids(hits), allowed[np.argsort(distances[allowed])[:5]])

    bbox = (0.5, 44.5, 3.5, 46.5)  # meets 4 × 3 one-degree chips
    hits = search(tmp_path / "index", like=["chip_0007.tif"], k=5, bbox=bbox)
    allowed = np.flatnonzero(shapely.intersects(synthetic["footprints"], shapely.box(*bbox)))
    assert len(allowed) == 12
    np.testing.assert_array_equal(row_ids(hits), allowed[np.argsort(distances[allowed])[:5]])


def test_bbox_filter_keeps_only_footprints_that_meet_the_box(tmp_path):
    """A rotated footprint whose bounds meet the box but which does not: the bounds prefilter alone would keep it."""
    diamond = shapely.Polygon([(1, 0), (2, 1), (1, 2), (0, 1)])
    footprints = np.array([diamond, shapely.box(5, 5, 6, 6)])
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    path = write_embeddings(tmp_path / "e.parquet", vectors, footprints, [dt.date(2021, 1, 1)] * 2)
    build_index(path, tmp_path / "index")
    hits = search(tmp_path / "index", like=["chip_0000.tif"], k=2, bbox=(0.0, 1.8, 0.15, 2.0))
    assert hits.num_rows == 0
    hits = search(tmp_path / "index", like=["chip_0000.tif"], k=2, bbox=(0.0, 0.0, 6.0, 6.0))
    assert row_ids(hits).tolist() == [0, 1]


def test_point_queries_the_chip_covering_it(synthetic, tmp_path):
    build_index(synthetic["path"], tmp_path / "index", metric="l2")
    centre = synthetic["footprints"][42].centroid
    hits = search(tmp_path / "index", point=(centre.x, centre.y), k=3)
    distances = exact(synthetic["vectors"], synthetic["vectors"][42], "l2")
    np.testing.assert_array_equal(row_ids(hits), np.argsort(distances)[:3])
    assert hits.column("distance")[0].as_py() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(SearchIndexError, match="no chip in the index covers"):
        search(tmp_path / "index", point=(100.0, -30.0))


@pytest.mark.parametrize(("index_type", "lance_name"), [("IVF_PQ", "IvfPq"), ("IVF_HNSW_SQ", "IvfHnswSq")])
def test_ann_index_is_built_from_the_threshold_and_recorded(synthetic, tmp_path, index_type, lance_name):
    info = build_index(
        synthetic["path"], tmp_path / "index", ann_threshold=300, model_name_or_path="some/model", index_type=index_type
    )
    assert info.ann is not None and info.ann.index_type == index_type
    table, recorded = open_index(tmp_path / "index")
    assert recorded == info and recorded.model_name_or_path == "some/model"
    assert [index.index_type for index in table.list_indices()] == [lance_name]
    hits = search(tmp_path / "index", like=["chip_0011.tif"], k=1)
    assert row_ids(hits).tolist() == [11]
    assert build_index(synthetic["path"], tmp_path / "small", ann_threshold=301).ann is None  # under the threshold


def test_ann_training_settings_reach_lancedb_and_are_recorded(synthetic, tmp_path):
    build_index(synthetic["path"], tmp_path / "index", ann_threshold=301)
    table, info = open_index(tmp_path / "index")
    configs, create_index = [], table.create_index
    table.create_index = lambda column, config: (configs.append(config), create_index(column, config=config))
    create_ann_index(table, info, num_partitions=4, max_iterations=3, sample_rate=32)
    assert [(c.num_partitions, c.max_iterations, c.sample_rate) for c in configs] == [(4, 3, 32)]
    recorded = open_index(tmp_path / "index")[1].ann
    assert (recorded.num_partitions, recorded.max_iterations, recorded.sample_rate) == (4, 3, 32)


def test_patch_footprints_tile_the_chip(tmp_path):
    """Patches of a UTM chip, back in UTM, are the chip's grid cells to within centimetres, row-major from the NW."""
    bbox = (500_000.0, 5_000_000.0, 505_120.0, 5_005_120.0)
    patches = patch_footprints(chip_footprint(bbox, 32633), 16, 16)
    to_utm = Transformer.from_crs("OGC:CRS84", "EPSG:32633", always_xy=True)
    native = shapely.transform(patches, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
    side = 320.0
    cells = [
        shapely.box(bbox[0] + c * side, bbox[3] - (r + 1) * side, bbox[0] + (c + 1) * side, bbox[3] - r * side)
        for r in range(16)
        for c in range(16)
    ]
    assert max(shapely.hausdorff_distance(a, b) for a, b in zip(native, cells, strict=True)) < 0.05  # metres


def test_patches_of_chips_across_the_antimeridian_or_without_a_footprint(tmp_path):
    """A chip split at the antimeridian gives patches split there; a chip with no footprint, patches without one."""
    east = shapely.box(179.96, 60.0, 180.0, 60.045)
    west = shapely.box(-180.0, 60.0, -179.95, 60.045)
    across = shapely.MultiPolygon([east, west])
    vectors = np.random.default_rng(1).standard_normal((2, 2 * 2 * 4)).astype(np.float32)
    path = write_embeddings(
        tmp_path / "p.parquet", vectors, [across, None], [dt.date(2021, 1, 1)] * 2, "patch", [2, 2, 4]
    )
    info = build_index(path, tmp_path / "index")
    table, _ = open_index(tmp_path / "index")
    rows = table.to_arrow().sort_by(
        [("source_url", "ascending"), ("patch_row", "ascending"), ("patch_col", "ascending")]
    )
    assert info.rows == 8
    patches = shapely.from_wkb(rows.column("geometry").to_pylist())
    assert [shapely.get_type_id(p) for p in patches[:4]] == [6, 3, 6, 3]  # west column split: MultiPolygon, Polygon
    assert sum(p.area for p in patches[:4]) == pytest.approx(across.area, rel=1e-3)
    assert all(p is None for p in patches[4:])
    hits = search(tmp_path / "index", like=["chip_0001.tif"], k=8, bbox=(179.99, 59.0, -179.99, 61.0))
    assert hits.num_rows == 4 and set(hits.column("source_url").to_pylist()) == {"chip_0000.tif"}
    assert search(tmp_path / "index", like=["chip_0001.tif"], k=8).num_rows == 8  # no footprint, still a neighbour


# --- with a model: embed.py output, patch rows, new chip files ----------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedded")
    save_pretraining_model(folder / "model")
    chips = write_synthetic_chips(folder / "chips", 6, size=32, seed=11)
    model, processor = load_encoder(str(folder / "model"))
    for level in ("mean", "patch"):
        embed_to_geoparquet(model, processor, folder / "chips", folder / f"{level}.parquet", level, progress=False)
    return {"folder": folder, "chips": chips, "model": folder / "model"}


def test_patch_level_file_becomes_one_row_per_patch(embedded, tmp_path):
    source = pq.read_table(embedded["folder"] / "patch.parquet")
    info = build_index(embedded["folder"] / "patch.parquet", tmp_path / "index")
    table, _ = open_index(tmp_path / "index")
    rows = table.to_arrow().sort_by(
        [("source_url", "ascending"), ("patch_row", "ascending"), ("patch_col", "ascending")]
    )
    assert info.rows == rows.num_rows == source.num_rows * 16  # 32×32 chips, patches of 8: 4×4 per chip
    vectors = np.stack(rows.column("vector").to_numpy(zero_copy_only=False))
    for i, chip in enumerate(source.sort_by("source_url").to_pylist()):
        np.testing.assert_array_equal(vectors[i * 16 : (i + 1) * 16], np.reshape(chip["embeddings"], (16, 32)))
        footprint = shapely.from_wkb(chip["geometry"])
        patches = shapely.from_wkb(rows.column("geometry").to_pylist()[i * 16 : (i + 1) * 16])
        assert shapely.union_all(patches).symmetric_difference(footprint).area < 1e-4 * footprint.area


def run_search(*args, check=True):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "search.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
    )


def test_query_by_a_new_chip_file_embeds_it_with_the_recorded_model(embedded, tmp_path):
    index = tmp_path / "index"
    build_index(embedded["folder"] / "mean.parquet", index, model_name_or_path=str(embedded["model"]))
    new_chip = shutil.copy(embedded["chips"][2], tmp_path / "new_chip.tif")  # not in the index under this name
    output = tmp_path / "hits.parquet"
    result = run_search("query", "--index_dir", index, "--like", new_chip, "--k", "4", "--output", output)
    assert "wrote 4 nearest" in result.stdout
    hits = gpd.read_parquet(output)
    assert hits.crs.to_string() == "OGC:CRS84" and len(hits) == 4
    assert hits.source_url.iloc[0] == str(embedded["chips"][2]) and hits["distance"].iloc[0] < 1e-5
    assert hits["distance"].is_monotonic_increasing
    source = gpd.read_parquet(embedded["folder"] / "mean.parquet").set_index("source_url")
    assert hits.geometry.iloc[0].equals(source.geometry[str(embedded["chips"][2])])


def test_bad_inputs_are_clear_errors(embedded, synthetic, tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    assert (
        search_main(["index", "--embeddings", str(plain), "--index_dir", str(tmp_path / "index")]) == 1
    )  # the README promises status 1 for every user error
    assert f"{plain}: has no 'clay:embeddings' metadata" in capsys.readouterr().err
    build_index(synthetic["path"], tmp_path / "index")
    with pytest.raises(SearchIndexError, match=r"--like nowhere\.tif: neither a source_url"):
        search(tmp_path / "index", like=["nowhere.tif"])
    with pytest.raises(SearchIndexError, match="records no model"):
        search(tmp_path / "index", like=[str(embedded["chips"][0])])
    with pytest.raises(SearchIndexError, match="check --where"):
        search(tmp_path / "index", like=["chip_0001.tif"], where="no_such_column > 3")


def test_index_command_passes_the_k_means_settings(synthetic, tmp_path):
    """`search.py index --max_iterations 3 --sample_rate 32` builds the ANN index with them and records them."""
    assert search_main([
        "index", "--embeddings", str(synthetic["path"]), "--index_dir", str(tmp_path / "index"),
        "--ann_threshold", "100", "--max_iterations", "3", "--sample_rate", "32",
    ]) == 0  # fmt: skip
    recorded = open_index(tmp_path / "index")[1].ann
    assert (recorded.max_iterations, recorded.sample_rate) == (3, 32)


def test_a_model_given_as_a_relative_path_is_recorded_absolute(embedded, tmp_path, monkeypatch):
    """embed.py in one folder, search.py in another: the model recorded by the embeddings file still loads."""
    monkeypatch.chdir(embedded["folder"])
    model, processor = load_encoder("model")  # relative to the embedding run's working directory
    embeddings = tmp_path / "relative.parquet"
    embed_to_geoparquet(model, processor, "chips", embeddings, progress=False)
    recorded = json.loads(pq.read_schema(embeddings).metadata[b"clay:embeddings"])["model_name_or_path"]
    assert recorded == str(embedded["model"].resolve())
    build_index(embeddings, tmp_path / "index")
    monkeypatch.chdir(tmp_path)
    new_chip = shutil.copy(embedded["chips"][1], tmp_path / "new_chip.tif")
    hits = search(tmp_path / "index", [str(new_chip)], k=1, output=tmp_path / "hits.parquet")
    assert hits.column("source_url").to_pylist() == ["chips/" + embedded["chips"][1].name]
