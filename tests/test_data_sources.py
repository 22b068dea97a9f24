"""Where chips come from: names behind signed URLs and GDAL prefixes, object-store and archive globs, WebDataset
shards of any chip size, a folder of shards; and the tiler's edges and names."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
from geotiffs import write_geotiff

from clay_hf.chipping import make_chips
from clay_hf.data import ChipLayout, date_from_filename, load_geotiff_dataset, resolve_sources, split_of, split_paths
from clay_hf.data.chips import chip_key
from clay_hf.data.webdataset import load_chip_webdataset, pack_webdataset

REPO = Path(__file__).resolve().parents[1]


def test_split_and_date_ignore_query_strings_and_gdal_prefixes():
    names = [f"claytile_32TMT_2020{1 + i % 12:02d}{1 + i % 28:02d}_v02_{i:04d}.tif" for i in range(200)]
    local = [f"/data/chips/{name}" for name in names]
    signed = [f"https://bucket.s3.amazonaws.com/chips/{name}?X-Amz-Signature={i}abc&X-Amz-Expires=3600" for i, name in enumerate(names)]  # fmt: skip
    resigned = [url.replace("abc", "xyz") for url in signed]
    vsi = [f"/vsicurl/{url}" for url in signed]
    expected = [split_of(path) for path in local]
    for spelling in (signed, resigned, vsi, [f"/vsis3/bucket/chips/{name}" for name in names]):
        assert [split_of(path) for path in spelling] == expected
    assert 20 < sum(split == "validation" for split in expected) < 60
    assert date_from_filename(signed[3]) == dt.date(2020, 4, 4)
    assert date_from_filename(vsi[3]) == dt.date(2020, 4, 4)
    assert chip_key(signed[0]) == chip_key(resigned[0]) == f"https://bucket.s3.amazonaws.com/chips/{names[0]}"


def test_vsizip_globs_and_archives_are_listed_and_read(tmp_path):
    folder = tmp_path / "chips"
    paths = [write_geotiff(folder / f"claytile_T1_2020010{i + 1}_v02_{i:04d}.tif", bands=13) for i in range(3)]
    archive = tmp_path / "chips.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in paths:
            zipped.write(path, f"inner/{path.name}")
        zipped.writestr("inner/readme.txt", "not a chip")
    members = [f"/vsizip/{archive}/inner/{path.name}" for path in paths]
    assert resolve_sources(f"/vsizip/{archive}/inner/*.tif") == members
    assert resolve_sources(f"/vsizip/{archive}") == members
    assert resolve_sources(members[1]) == [members[1]]
    records = list(load_geotiff_dataset(f"/vsizip/{archive}/inner/*.tif", layout=ChipLayout(size=(32, 32))))
    assert [record["source_url"] for record in records] == members
    assert [record["date"] for record in records] == [dt.date(2021, 6, 15)] * 3  # the files' date tags
    shards, bad = pack_webdataset(resolve_sources(f"/vsizip/{archive}"), tmp_path / "shards")  # from the zip
    assert len(shards) == 1
    assert not bad and [r["source_url"] for r in load_chip_webdataset(str(tmp_path / "shards"))] == members


def test_object_store_globs_and_folders_are_listed():
    store = fsspec.filesystem("memory")
    for name in ("a.tif", "b.tif", "notes.txt", "deeper/c.tif"):
        store.pipe(f"/clay-test-bucket/chips/{name}", b"x")
    try:
        assert resolve_sources("memory://clay-test-bucket/chips/*.tif") == [
            "memory:///clay-test-bucket/chips/a.tif",
            "memory:///clay-test-bucket/chips/b.tif",
        ]
        assert len(resolve_sources("memory://clay-test-bucket/chips/")) == 3
        assert resolve_sources("memory://clay-test-bucket/chips/a.tif") == ["memory://clay-test-bucket/chips/a.tif"]
        assert resolve_sources("memory://clay-test-bucket/chips/a.vrt") == ["memory://clay-test-bucket/chips/a.vrt"]
        signed = "https://example.com/get?chip=claytile_T_20200101_v02_0001.tif&sig=1"
        assert resolve_sources(signed) == [signed]  # a web URL is taken as it is, never listed
    finally:
        store.rm("/clay-test-bucket", recursive=True)


def test_split_paths_of_listed_archive_match_local_names(tmp_path):
    folder = tmp_path / "chips"
    paths = [write_geotiff(folder / f"claytile_T2_20200101_v02_{i:04d}.tif", bands=1, size=(4, 4)) for i in range(12)]
    archive = tmp_path / "chips.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in paths:
            zipped.write(path, path.name)
    local = split_paths([str(path) for path in paths])
    zipped_split = split_paths(resolve_sources(f"/vsizip/{archive}/*.tif"))
    assert [p.rsplit("/", 1)[-1] for p in zipped_split["train"]] == [p.rsplit("/", 1)[-1] for p in local["train"]]


def test_webdataset_layout_comes_from_the_shards_and_a_folder_is_accepted(tmp_path):
    folder = tmp_path / "chips"
    paths = [
        write_geotiff(folder / f"claytile_T3_20200101_v02_{i:04d}.tif", bands=4, size=(24, 16), dtype="uint16")
        for i in range(4)
    ]
    shards, bad = pack_webdataset([str(path) for path in paths], tmp_path / "shards", chips_per_shard=2)
    assert len(shards) == 2 and not bad
    records = list(load_chip_webdataset(str(tmp_path / "shards" / "*.tar")))
    assert len(records) == 4  # 4-band 24×16 chips, not dropped for differing from a hard-coded 13×512×512
    assert len(list(load_chip_webdataset(str(tmp_path / "shards")))) == 4  # a folder of shards
    assert [record["source_url"] for record in records] == [str(path) for path in paths]
    layout = ChipLayout(bands=("blue", "green", "red", "nir"), size=(24, 16), dtype="uint16")
    expected = list(load_geotiff_dataset(folder, layout=layout))
    for record, chip in zip(records, expected, strict=True):
        assert record["pixels"].shape == (4, 24, 16) and record["pixels"].dtype == chip["pixels"].dtype
        assert (record["pixels"] == chip["pixels"]).all() and record["crs"] == chip["crs"]
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        load_chip_webdataset(str(tmp_path / "chips"))


# --- the tiler --------------------------------------------------------------------------------------------------------


def test_tiler_marks_edge_padding_as_nodata(tmp_path):
    data = np.random.default_rng(0).uniform(1, 100, (2, 100, 100)).astype("float32")
    source = write_geotiff(tmp_path / "scene.tif", data=data, size=(100, 100))  # no nodata value
    report = make_chips(source, tmp_path / "chips", chip_size=64, max_nodata_fraction=0.7)
    assert len(report.written) == 4  # (0,0) full; the edge windows are 39%, 39% and 63% padding
    with rasterio.open(report.written[3]) as edge:
        pixels = edge.read()
        assert edge.nodata is not None and np.isnan(edge.nodata)
    assert np.isnan(pixels[:, 36:, :]).all() and np.isnan(pixels[:, :, 36:]).all()
    np.testing.assert_array_equal(pixels[:, :36, :36], data[:, 64:, 64:])

    integers = write_geotiff(tmp_path / "u16.tif", bands=2, dtype="uint16", size=(100, 100))
    report = make_chips(integers, tmp_path / "u16", chip_size=64, max_nodata_fraction=0.7, dtype="source")
    with rasterio.open(report.written[1]) as edge:
        assert edge.nodata == 65535 and (edge.read()[:, :, 36:] == 65535).all()


def test_tiler_never_overwrites_chips_of_another_source_and_counts_match_the_files(tmp_path):
    first = write_geotiff(tmp_path / "a" / "T32TMT.tif", bands=2, size=(64, 64), seed=1)
    second = write_geotiff(tmp_path / "b" / "T32TMT.tif", bands=2, size=(64, 64), seed=2)
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_chips.py"), str(first), str(second), "--output_dir", str(tmp_path / "chips"), "--chip_size", "32"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "would overwrite" in run.stderr and "T32TMT.tif" in run.stderr and "--tile" in run.stderr
    on_disk = sorted((tmp_path / "chips").glob("*.tif"))
    assert "total: wrote 4 chips" in run.stdout and len(on_disk) == 4
    with rasterio.open(on_disk[0]) as chip, rasterio.open(first) as raster:
        np.testing.assert_array_equal(chip.read(), raster.read(window=((0, 32), (0, 32))))  # still the first's
    again = make_chips(first, tmp_path / "chips", chip_size=32)  # the same source again: its own chips, rewritten
    assert len(again.written) == 4
    separate = make_chips(second, tmp_path / "chips", chip_size=32, tile="T32TMTb")
    assert len(separate.written) == 4 and len(list((tmp_path / "chips").glob("*.tif"))) == 8
