"""Where chips come from: names behind signed URLs and GDAL prefixes, object-store and archive globs, WebDataset
shards of any chip size, and a folder of shards."""

from __future__ import annotations

import datetime as dt
import zipfile

import fsspec
import pytest
from geotiffs import write_geotiff

from clay_hf.data import date_from_filename, load_geotiff_dataset, resolve_sources, split_of, split_paths
from clay_hf.data.chips import chip_key
from clay_hf.data.webdataset import load_chip_webdataset, pack_webdataset


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
    records = list(load_geotiff_dataset(f"/vsizip/{archive}/inner/*.tif"))
    assert [record["source_url"] for record in records] == members
    assert [record["date"] for record in records] == [dt.date(2021, 6, 15)] * 3  # the files' date tags


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
    expected = list(load_geotiff_dataset(folder))
    for record, chip in zip(records, expected, strict=True):
        assert record["pixels"].shape == (4, 24, 16) and record["pixels"].dtype == chip["pixels"].dtype
        assert (record["pixels"] == chip["pixels"]).all() and record["crs"] == chip["crs"]
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        load_chip_webdataset(str(tmp_path / "chips"))
