"""Reading chips, cutting rasters, the `datasets` loader and WebDataset shards."""

import datetime as dt
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from datasets.distributed import split_dataset_by_node
from geotiffs import write_geotiff
from rasterio.io import MemoryFile
from rasterio.warp import transform as warp_transform

from clay_hf.chipping import make_chips, write_synthetic_chips
from clay_hf.data import (
    ChipError,
    ChipLayout,
    auto_num_shards,
    chip_dataloader,
    collate_chips,
    date_from_filename,
    load_geotiff_dataset,
    read_chip,
    resolve_sources,
    shard_paths,
    split_of,
    split_paths,
)
from clay_hf.data.webdataset import load_chip_webdataset, pack_webdataset

REPO = Path(__file__).resolve().parents[1]
LAYOUT = ChipLayout(size=(32, 32))


@pytest.fixture(scope="module")
def chip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chips")
    write_synthetic_chips(folder, 12, size=32, seed=1)
    return folder


# --- reading one chip ------------------------------------------------------------------------------------------------


def test_read_chip_keeps_dtype_and_gives_metadata(tmp_path):
    path = write_geotiff(tmp_path / "chip.tif", bands=4, dtype="uint16", size=(20, 30))
    chip = read_chip(path)
    assert chip.pixels.dtype == np.uint16 and chip.pixels.shape == (4, 20, 30)
    with rasterio.open(path) as dataset:
        np.testing.assert_array_equal(chip.pixels, dataset.read())
        bounds = dataset.bounds
    assert chip.bbox == (500_000.0, 5_000_000.0 - 200, 500_000.0 + 300, 5_000_000.0)
    assert (chip.date, chip.epsg, chip.source_url) == (dt.date(2021, 6, 15), 32633, str(path))
    # The centre of the bounds, reprojected to EPSG:4326 (what rasterio's lnglat() gives).
    lons, lats = warp_transform(
        "EPSG:32633", "EPSG:4326", [(bounds.left + bounds.right) / 2], [(bounds.bottom + bounds.top) / 2]
    )
    assert chip.lon == pytest.approx(lons[0], abs=1e-9) and chip.lat == pytest.approx(lats[0], abs=1e-9)
    assert read_chip(path, read_pixels=False).pixels is None


def test_date_from_tag_name_or_caller(tmp_path):
    named = write_geotiff(tmp_path / "claytile_32TMT_20190702_v02_0007.tif", date=None)
    assert date_from_filename(named.name) == dt.date(2019, 7, 2)
    assert read_chip(named).date == dt.date(2019, 7, 2)
    assert read_chip(named, date="2020-01-02").date == dt.date(2019, 7, 2)  # the name wins over the fallback
    tagged = write_geotiff(tmp_path / "claytile_32TMT_20190702_v02_0008.tif", date="2018-05-05")
    assert read_chip(tagged).date == dt.date(2018, 5, 5)  # the tag wins over the name
    assert read_chip(tagged, date="2020-01-02").date == dt.date(2018, 5, 5)  # and over the fallback
    undated = write_geotiff(tmp_path / "chip.tif", date=None)
    assert read_chip(undated, date="2020-01-02").date == dt.date(2020, 1, 2)  # the fallback, when nothing else


def test_gdal_virtual_paths_are_read(tmp_path):
    data = write_geotiff(tmp_path / "chip.tif").read_bytes()
    with MemoryFile(data, filename="chip.tif") as memory:
        assert memory.name.startswith("/vsimem/")
        chip = read_chip(memory.name)
    assert chip.pixels.shape == (13, 32, 32) and chip.date == dt.date(2021, 6, 15)


@pytest.mark.parametrize(
    ("writer", "kwargs", "message"),
    [
        (dict(date=None), {}, "has no date"),
        (dict(date="not-a-date"), {}, "date tag that does not parse"),
        (dict(bands=3), {"num_bands": 13}, "has 3 bands, expected 13"),
        (dict(size=(32, 16)), {"size": (32, 32)}, r"is 32×16 pixels, expected 32×32"),
        (dict(crs=None), {}, "has no CRS"),
    ],
)
def test_bad_chips_raise_errors_naming_the_file(tmp_path, writer, kwargs, message):
    path = write_geotiff(tmp_path / "bad.tif", **writer)
    with pytest.raises(ChipError, match=message) as info:
        read_chip(path, **kwargs)
    assert str(path) in str(info.value)


def test_reading_keeps_the_files_nodata_value_mask_and_nan(tmp_path):
    data = np.random.default_rng(0).uniform(1, 100, (2, 8, 8)).astype("float32")
    data[:, 0, :3] = -9999
    data[1, 5, 5] = np.nan
    chip = read_chip(write_geotiff(tmp_path / "valued.tif", data=data, size=(8, 8), nodata=-9999))
    expected = (data == -9999) | np.isnan(data)
    assert chip.nodata == -9999 and chip.missing.shape == (2, 8, 8)
    np.testing.assert_array_equal(chip.missing, expected)
    assert chip.nodata_fraction == pytest.approx(expected.mean())

    masked = write_geotiff(tmp_path / "masked.tif", data=np.ones((2, 8, 8), "float32"), size=(8, 8))
    with rasterio.open(masked, "r+") as dataset:
        mask = np.full((8, 8), 255, dtype="uint8")
        mask[2:4, 2:4] = 0
        dataset.write_mask(mask)
    chip = read_chip(masked)
    assert chip.nodata is None and chip.missing.sum() == 2 * 4 and chip.missing[:, 2:4, 2:4].all()
    assert read_chip(write_geotiff(tmp_path / "clean.tif", size=(8, 8))).missing is None


def test_unreadable_file_is_a_chip_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00 truncated")
    with pytest.raises(ChipError, match=r"broken\.tif: cannot be read"):
        read_chip(path)
    with pytest.raises(ChipError, match=r"missing\.tif: cannot be read"):
        read_chip(tmp_path / "missing.tif")


# --- cutting rasters --------------------------------------------------------------------------------------------------


def test_make_chips_cuts_a_non_utm_raster_with_nodata(tmp_path):
    """150×100 pixels in EPSG:4326, chips of 64: 3×2 windows; the edge windows and one with a nodata hole are skipped."""
    data = np.random.default_rng(0).uniform(1, 100, (3, 100, 150)).astype("float32")
    data[:, 10:20, 70:80] = -9999  # a hole inside window (row 0, col 1)
    source = write_geotiff(
        tmp_path / "scene.tif", data=data, size=(100, 150), crs="EPSG:4326", nodata=-9999, date=None,
        origin=(10.0, 45.0), resolution=0.001,
    )  # fmt: skip
    report = make_chips(source, tmp_path / "chips", chip_size=64, date="2022-08-01", tile="T1")
    assert [p.name for p in report.written] == ["claytile_T1_20220801_v02_0000.tif"]
    assert len(report.skipped) == 5
    chip = read_chip(report.written[0])
    assert chip.pixels.shape == (3, 64, 64) and chip.epsg == 4326 and chip.date == dt.date(2022, 8, 1)
    np.testing.assert_array_equal(chip.pixels, data[:, :64, :64])
    with rasterio.open(report.written[0]) as dataset:
        assert dataset.compression.name.lower() == "deflate" and dataset.tags()["date"] == "2022-08-01"
        assert dataset.bounds.left == pytest.approx(10.0) and dataset.bounds.top == pytest.approx(45.0)

    lenient = make_chips(source, tmp_path / "lenient", chip_size=64, date="2022-08-01", max_nodata_fraction=0.6)
    # windows (0, 0), (0, 1) and the 44%-outside (1, 0), (1, 1); (0, 2) is 66% outside, (1, 2) 81%
    assert [p.name[-8:] for p in lenient.written] == ["0000.tif", "0001.tif", "0003.tif", "0004.tif"]
    edge = read_chip(tmp_path / "lenient" / "claytile_scene_20220801_v02_0003.tif").pixels
    assert edge.shape == (3, 64, 64) and (edge[:, 36:, :] == -9999).all() and (edge[:, :36] != -9999).all()


def test_make_chips_can_keep_the_source_dtype(tmp_path):
    source = write_geotiff(tmp_path / "s.tif", bands=2, dtype="uint16", size=(64, 64))
    report = make_chips(source, tmp_path / "chips", chip_size=32, dtype="source")
    assert len(report.written) == 4 and read_chip(report.written[0]).pixels.dtype == np.uint16
    with pytest.raises(ChipError, match=r"nodate\.tif: has no date"):
        make_chips(write_geotiff(tmp_path / "nodate.tif", date=None), tmp_path / "x", chip_size=32)


def test_synthetic_chips_look_like_v0_chips(tmp_path):
    paths = write_synthetic_chips(tmp_path, 4, size=32, seed=3)
    assert all(p.name.startswith("claytile_") and date_from_filename(p.name) for p in paths)
    for path in paths:
        chip = read_chip(path)
        assert chip.pixels.shape == (13, 32, 32) and chip.pixels.dtype == np.float32
        assert 32601 <= chip.epsg <= 32660 or 32701 <= chip.epsg <= 32760
        assert chip.pixels[:10].min() >= 0 and chip.pixels[:10].max() <= 10000  # reflectance
        assert chip.pixels[10:12].max() < 5 and chip.pixels[12].min() >= 0  # backscatter, DEM
        assert chip.tags["label"] in {"water", "vegetation", "bare", "urban"}


def test_make_chips_script(tmp_path):
    source = write_geotiff(tmp_path / "s.tif", bands=2, size=(64, 64))
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_chips.py"), str(source), "--output_dir", str(tmp_path / "out"), "--chip_size", "32"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "total: wrote 4 chips" in run.stdout
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_chips.py"), "--synthetic", "2", "--chip_size", "32", "--output_dir", str(tmp_path / "syn")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert len(list((tmp_path / "syn").glob("claytile_*.tif"))) == 2


# --- sources, shards, split ------------------------------------------------------------------------------------------


def test_sources_from_folder_glob_list_file_and_list(chip_dir, tmp_path):
    from_folder = resolve_sources(chip_dir)
    assert len(from_folder) == 12
    assert resolve_sources(str(chip_dir / "*.tif")) == from_folder
    listing = tmp_path / "chips.txt"
    listing.write_text("# chips\n" + "\n".join(from_folder[:3]) + "\n\n")
    assert resolve_sources(listing) == from_folder[:3]
    assert resolve_sources(from_folder[:2]) == from_folder[:2]
    assert resolve_sources("s3://bucket/chip.tif") == ["s3://bucket/chip.tif"]
    with pytest.raises(FileNotFoundError, match="no GeoTIFF chips found"):
        resolve_sources(tmp_path / "empty" / "*.tif")


def test_shards_cover_all_paths_and_count_is_a_multiple_of_ranks_and_workers():
    paths = [f"p{i}.tif" for i in range(103)]
    shards = shard_paths(paths, 8)
    assert [p for shard in shards for p in shard] == paths
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for world, workers, count in [(1, 1, 10), (4, 2, 1000), (4, 4, 1_200_000), (8, 3, 5)]:
        shards_count = auto_num_shards(count, world, workers)
        assert shards_count % (world * workers) == 0
        assert shards_count <= max(4096 + world * workers, world * workers)
    assert auto_num_shards(1_200_000, 4, 4) >= 4000  # thousands, not one per file


def test_split_is_deterministic_by_file_name_and_near_80_20():
    paths = [f"/data/a/claytile_{i:05d}.tif" for i in range(5000)]
    splits = split_paths(paths, 0.2)
    assert 0.17 < len(splits["validation"]) / len(paths) < 0.23
    moved = [p.replace("/data/a/", "s3://bucket/other/") for p in paths]
    assert [split_of(p) for p in moved] == [split_of(p) for p in paths]
    assert split_paths(paths, 0.2) == splits


# --- the loader --------------------------------------------------------------------------------------------------------


def test_streaming_loader_yields_every_chip_with_explicit_features(chip_dir):
    dataset = load_geotiff_dataset(chip_dir, num_shards=4, layout=LAYOUT)
    assert dataset.n_shards == 4
    assert str(dataset.features["pixels"].dtype) == "float32" and dataset.features["pixels"].shape == (13, 32, 32)
    records = list(dataset)
    assert sorted(r["source_url"] for r in records) == resolve_sources(chip_dir)
    first = read_chip(records[0]["source_url"])
    np.testing.assert_array_equal(records[0]["pixels"], first.pixels)
    assert records[0]["date"] == first.date and records[0]["epsg"] == first.epsg
    assert records[0]["bbox"] == list(first.bbox)


def test_map_style_loader_reads_pixels_lazily(chip_dir, monkeypatch):
    dataset = load_geotiff_dataset(chip_dir, streaming=False, layout=LAYOUT)
    assert len(dataset) == 12 and "pixels" not in dataset.column_names
    reads = []
    import clay_hf.data.dataset as module

    original = module.read_chip
    monkeypatch.setattr(module, "read_chip", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    row = dataset[5]
    assert reads == [row["source_url"]]
    np.testing.assert_array_equal(np.asarray(row["pixels"]), read_chip(row["source_url"]).pixels)


def test_two_ranks_read_disjoint_and_complete_parts(chip_dir):
    dataset = load_geotiff_dataset(chip_dir, world_size=2, num_workers=1, layout=LAYOUT)
    assert dataset.n_shards % 2 == 0
    parts = [[r["source_url"] for r in split_dataset_by_node(dataset, rank=rank, world_size=2)] for rank in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == resolve_sources(chip_dir)


def test_shuffle_epochs_and_resume(chip_dir):
    dataset = load_geotiff_dataset(chip_dir, num_shards=4, layout=LAYOUT).shuffle(seed=3, buffer_size=4)
    dataset.set_epoch(0)
    epoch0 = [r["source_url"] for r in dataset]
    dataset.set_epoch(1)
    epoch1 = [r["source_url"] for r in dataset]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1

    plain = load_geotiff_dataset(chip_dir, num_shards=4, layout=LAYOUT)
    iterator = iter(plain)
    seen = [next(iterator)["source_url"] for _ in range(5)]
    state = plain.state_dict()
    resumed = load_geotiff_dataset(chip_dir, num_shards=4, layout=LAYOUT)
    resumed.load_state_dict(state)
    rest = [r["source_url"] for r in resumed]
    assert seen + rest == [r["source_url"] for r in plain]


def test_train_and_validation_splits_partition_the_chips(chip_dir):
    train = {r["source_url"] for r in load_geotiff_dataset(chip_dir, split="train", layout=LAYOUT)}
    validation = {
        r["source_url"]
        for r in load_geotiff_dataset(chip_dir, split="validation", validation_fraction=0.3, layout=LAYOUT)
    }
    everything = set(resolve_sources(chip_dir))
    assert train | {p for p in everything if split_of(p) == "validation"} == everything
    assert validation == {p for p in everything if split_of(p, 0.3) == "validation"}


def test_bad_chips_are_skipped_named_and_counted_wherever_they_sit(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_synthetic_chips(folder, 3, size=32)
    (folder / "unreadable.tif").write_bytes(b"not a tiff")
    write_geotiff(folder / "wrong_bands.tif", bands=4)
    write_geotiff(folder / "wrong_size.tif", size=(16, 16))
    write_geotiff(folder / "no_date.tif", date=None)
    with caplog.at_level(logging.WARNING):
        records = list(load_geotiff_dataset(folder, num_shards=2, layout=LAYOUT))
    assert len([r for r in records if not r["bad_chip"]]) == 3
    assert sorted(Path(r["source_url"]).name for r in records if r["bad_chip"]) == [
        "no_date.tif", "unreadable.tif", "wrong_bands.tif", "wrong_size.tif"
    ]  # fmt: skip
    for name in ("unreadable.tif", "wrong_bands.tif", "wrong_size.tif", "no_date.tif"):
        assert name in caplog.text
    # Bad chips trailing the stream (names after 'claytile_'), leading it, or alone in their shards: all counted.
    for order, shards in ((sorted, 1), (lambda p: sorted(p, reverse=True), 1), (sorted, 7)):
        dataset = load_geotiff_dataset(order(resolve_sources(folder)), num_shards=shards, layout=LAYOUT)
        batches = list(torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_chips))
        assert sum(len(b["source_url"]) for b in batches) == 3
        assert sum(b["bad_chips"] for b in batches) == 4

    map_style = load_geotiff_dataset(folder, streaming=False, layout=LAYOUT)
    assert len(map_style) == 3
    assert "4 bad chips skipped" in map_style.info.description


def test_collate_keeps_pixels_compact_and_encodes_metadata(tmp_path):
    for i in range(3):
        write_geotiff(
            tmp_path / f"claytile_T_2020010{i + 1}_v02_000{i}.tif", dtype="uint16", bands=13, date=None, seed=i
        )
    dataset = load_geotiff_dataset(tmp_path, num_shards=1, layout=ChipLayout(size=(32, 32), dtype="uint16"))
    assert dataset.features["pixels"].dtype == "uint16"
    batch = collate_chips(list(dataset))
    assert batch["pixels"].dtype == torch.uint16 and batch["pixels"].shape == (3, 13, 32, 32)
    assert batch["timestep"].shape == (3, 3) and batch["latlon"].shape == (3, 2)
    assert batch["date"][0] == dt.date(2020, 1, 1) and batch["epsg"].tolist() == [32633] * 3


def test_dataloader_workers_split_the_shards(chip_dir):
    loader = chip_dataloader(load_geotiff_dataset(chip_dir, num_workers=2, layout=LAYOUT), batch_size=4, num_workers=2)
    urls = [url for batch in loader for url in batch["source_url"]]
    assert sorted(urls) == resolve_sources(chip_dir)


def test_threaded_gdal_decoding_starts_workers_without_fork(chip_dir, monkeypatch):
    """GDAL's thread pool does not survive fork (a forked worker deadlocks), so such workers use forkserver."""
    dataset = load_geotiff_dataset(chip_dir, layout=LAYOUT)
    monkeypatch.setenv("GDAL_NUM_THREADS", "ALL_CPUS")
    assert chip_dataloader(dataset, 4, num_workers=2).multiprocessing_context.get_start_method() == "forkserver"
    assert chip_dataloader(dataset, 4, num_workers=0).multiprocessing_context is None
    monkeypatch.setenv("GDAL_NUM_THREADS", "1")
    assert chip_dataloader(dataset, 4, num_workers=2).multiprocessing_context is None


# --- WebDataset ---------------------------------------------------------------------------------------------------------


def test_webdataset_shards_read_back_as_the_same_records(chip_dir, tmp_path):
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "broken.tif"
    bad.write_bytes(b"nope")
    shards, errors = pack_webdataset([*resolve_sources(chip_dir), str(bad)], tmp_path / "wds", chips_per_shard=5)
    assert [s.name for s in shards] == ["chips-000000.tar", "chips-000001.tar", "chips-000002.tar"]
    assert len(errors) == 1 and "broken.tif" in str(errors[0])
    records = {
        r["source_url"]: r for r in load_chip_webdataset([str(s) for s in shards], layout=ChipLayout(size=(32, 32)))
    }
    direct = {r["source_url"]: r for r in load_geotiff_dataset(chip_dir, layout=LAYOUT)}
    assert records.keys() == direct.keys()
    for url, record in records.items():
        np.testing.assert_array_equal(record["pixels"], direct[url]["pixels"])
        for key in ("date", "lon", "lat", "bbox", "epsg"):
            assert record[key] == direct[url][key], key
