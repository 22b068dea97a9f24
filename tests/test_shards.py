"""Clay shards, the packed training format: lossless, self-describing, sharded, resumable, robust to bad records."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import rasterio
import torch
from datasets.distributed import split_dataset_by_node
from geotiffs import write_geotiff

from clay_hf.chipping import write_synthetic_chips
from clay_hf.data import ChipLayout, chip_dataloader, load_chip_dataset, read_chip, resolve_sources
from clay_hf.data.chips import missing_values
from clay_hf.data.dataset import split_paths
from clay_hf.data.shards import (
    ShardError,
    ShardWriter,
    byte_shuffle,
    byte_unshuffle,
    decode_header,
    decode_pixels,
    encode_record,
    iter_shard,
    narrowest_exact_dtype,
    pack_shards,
    raster_facts,
    read_index,
    read_record,
)
from clay_hf.data.sources import ShardSelection, chip_format, split_chip_source, without_chips
from clay_hf.data.webdataset import pack_webdataset

SIZE = 16


def mixed_chip(seed: int) -> np.ndarray:
    """13 float32 bands: integral reflectances, real-valued floats, a band with -0.0, negative integers, huge ints."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 10000, (13, SIZE, SIZE)).astype(np.float32)  # S2-like: stored as uint16
    pixels[10] = rng.gamma(2.0, 0.05, (SIZE, SIZE))  # SAR-like: stays float
    pixels[11] = rng.integers(0, 200, (SIZE, SIZE))  # fits uint8
    pixels[11, 0, 0] = -0.0  # integral, but -0.0 is not 0: must stay float
    pixels[12] = rng.integers(-400, 4000, (SIZE, SIZE))  # DEM-like with negatives: int16
    pixels[9, 0, 0] = 2.0**24  # integral, beyond uint16: uint32
    return pixels


@pytest.fixture
def chips(tmp_path):
    """Six GeoTIFF chips: mixed float32 ones, a uint16 one, one in a CRS with no EPSG code, nodata and band names."""
    folder = tmp_path / "chips"
    paths = []
    for index in range(4):
        paths.append(
            write_geotiff(
                folder / f"claytile_T{index}_20210615_v02_{index:04d}.tif", size=(SIZE, SIZE), data=mixed_chip(index)
            )
        )
    paths.append(
        write_geotiff(folder / "plain_uint16.tif", size=(SIZE, SIZE), dtype="uint16", nodata=0,
                      data=np.random.default_rng(9).integers(1, 60000, (13, SIZE, SIZE)).astype(np.uint16))
    )  # fmt: skip
    custom = 'PROJCS["custom",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Sinusoidal"],PARAMETER["longitude_of_center",10],PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
    paths.append(write_geotiff(folder / "sinusoidal.tif", size=(SIZE, SIZE), crs=custom, date="2019-02-03", seed=3))
    with rasterio.open(paths[0], "r+") as dataset:
        dataset.descriptions = tuple(f"band{i}" for i in range(13))
    return [str(path) for path in paths]


LAYOUT = ChipLayout(size=(SIZE, SIZE))  # the 13 v0 bands, float32: what a model reads


def read_back(folder) -> dict[str, dict]:
    return {record["source_url"]: record for record in load_chip_dataset(folder, layout=LAYOUT)}


def record_header(shard, position: int = 0) -> dict:
    with open(shard, "rb") as handle:
        index = read_index(shard, handle)
        handle.seek(index.offsets[position])
        record = handle.read(index.lengths[position])
    return decode_header(memoryview(record), index.version)[0]


@pytest.mark.parametrize(
    ("codec", "shuffle"),
    [("zstd:1", "float"), ("zstd:-1", "all"), ("zstd:1", "none"), ("lz4:9", "float"), ("lz4", "all"), ("none", "all")],
)
def test_round_trip_is_bit_identical_and_integral_bands_are_stored_as_integers(chips, tmp_path, codec, shuffle):
    report = pack_shards(chips, tmp_path / "shards", chips_per_shard=4, codec=codec, shuffle=shuffle)
    assert report.chips == len(chips) and len(report.shards) == 2 and not report.bad
    stored = {chip.source_url: chip.pixels for shard in report.shards for chip in iter_shard(shard)}
    records = read_back(tmp_path / "shards")
    assert sorted(records) == sorted(stored) == sorted(chips)
    for path in chips:
        expected = read_chip(path).pixels  # the file's own dtype and bits
        assert stored[path].dtype == expected.dtype and stored[path].tobytes() == expected.tobytes(), path
        loaded = read_chip(path, layout=LAYOUT).pixels  # what the GeoTIFF loader gives a model
        pixels = np.asarray(records[path]["pixels"])
        assert pixels.dtype == loaded.dtype and pixels.tobytes() == loaded.tobytes(), path
    bands = record_header(report.shards[0])["bands"]
    stored = [band["dtype"] for band in bands]
    assert stored[:9] == ["<u2"] * 9 and stored[9] == "<u4"  # integral reflectances → uint16, 2**24 → uint32
    assert stored[10] == "<f4" and stored[11] == "<f4" and stored[12] == "<i2"  # real floats and -0.0 stay float
    shuffled = [band.get("filter") == "shuffle" for band in bands]
    if codec == "none" or shuffle == "none":
        assert not any(shuffled)  # `none` stays a plain copy of the pixels
    else:  # "float": the bands stored as floats; "all": every band
        assert shuffled == [shuffle == "all" or dtype.startswith("<f") for dtype in stored]


@pytest.mark.parametrize("dtype", ["<u2", "<i2", "<u4", "<f4", ">f4", "<f8"])
def test_byte_unshuffle_undoes_byte_shuffle(dtype):
    values = np.random.default_rng(0).normal(0, 1000, (7, 9)).astype(dtype)
    data = byte_shuffle(values)
    planes = np.frombuffer(data, np.uint8).reshape(values.itemsize, -1)
    assert np.array_equal(planes[0], values.reshape(-1).view(np.uint8)[:: values.itemsize])  # first bytes first
    out = np.empty(values.shape, dtype)
    byte_unshuffle(data, out)
    assert out.tobytes() == values.tobytes()


@pytest.mark.parametrize("codec", ["none", "zstd:-1"])
def test_records_read_in_turn_keep_their_own_pixels(chips, tmp_path, codec):
    """Records are read into one reused buffer: a chip read earlier keeps its own pixels and missing-pixel mask."""
    report = pack_shards(chips, tmp_path / "shards", chips_per_shard=len(chips), codec=codec)
    with open(report.shards[0], "rb") as handle:
        index = read_index(report.shards[0], handle)
        read = [read_record(handle, index, position)[0] for position in range(len(index))]
    for chip, path in zip(read, chips, strict=True):
        expected = read_chip(path)
        assert chip.pixels.dtype == expected.pixels.dtype and chip.pixels.tobytes() == expected.pixels.tobytes()
        assert (chip.missing is None) == (expected.missing is None)
        assert chip.missing is None or np.array_equal(chip.missing, expected.missing)


def test_a_layout_decodes_only_its_bands_in_its_order(chips, tmp_path):
    report = pack_shards(chips[1:2], tmp_path / "shards", codec="zstd:1")
    layout = ChipLayout(bands=("nir", "red"), size=(SIZE, SIZE))  # channels 6 and 2 of a 13-band v0 chip
    expected = read_chip(chips[1], layout=layout)
    with open(report.shards[0], "rb") as handle:
        index = read_index(report.shards[0], handle)
        chip, _ = read_record(handle, index, 0, layout=layout)
        handle.seek(index.offsets[0])
        record = memoryview(handle.read(index.lengths[0]))
    assert chip.band_names == ["nir", "red"] and chip.pixels.tobytes() == expected.pixels.tobytes()
    header, offset = decode_header(record)
    full = decode_pixels(record, header, offset)
    assert decode_pixels(record, header, offset, [6, 2]).tobytes() == full[[6, 2]].tobytes()
    # a band the layout does not read is never decoded: corrupting its payload leaves the layout's chip whole
    broken = bytearray(report.shards[0].read_bytes())
    start = index.offsets[0] + offset + sum(band["length"] for band in header["bands"][:5])
    broken[start + 8 : start + 24] = bytes(16)
    report.shards[0].write_bytes(bytes(broken))
    with open(report.shards[0], "rb") as handle:
        assert read_record(handle, index, 0, layout=layout)[0].pixels.tobytes() == expected.pixels.tobytes()
        with pytest.raises(ValueError, match=r"record 0 .* is a corrupted record"):
            read_record(handle, index, 0)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
@pytest.mark.parametrize("nodata", [None, 0.0, 7.0, float("nan")])
def test_missing_values_marks_nonfinite_and_nodata_values_only(dtype, nodata):
    rng = np.random.default_rng(1)
    pixels = rng.integers(1, 50, (4, 6, 5)).astype(dtype)
    assert missing_values(pixels, nodata) is None or (nodata == 7.0 and (pixels == 7).any())
    pixels[1, 2, 3] = 7
    if dtype == "float32":
        pixels[2, 0, 0], pixels[3, 5, 4] = np.nan, -np.inf
    expected = ~np.isfinite(pixels.astype(np.float64))
    if nodata is not None and not np.isnan(nodata):
        expected |= pixels == nodata
    ranges = [(band.min(), band.max()) for band in pixels]  # as a decoder gives them
    for got in (missing_values(pixels, nodata), missing_values(pixels, nodata, ranges)):
        assert (got is None and not expected.any()) or np.array_equal(got, expected)


def test_narrowest_exact_dtype_is_lossless_only():
    assert narrowest_exact_dtype(np.array([0, 255], np.float32)) == np.uint8
    assert narrowest_exact_dtype(np.array([-1, 300], np.float32)) == np.int16
    assert narrowest_exact_dtype(np.array([0.5, 2], np.float32)) == np.float32
    assert narrowest_exact_dtype(np.array([np.nan, 2], np.float32)) == np.float32
    assert narrowest_exact_dtype(np.array([-0.0, 2], np.float32)) == np.float32
    assert narrowest_exact_dtype(np.array([1, 2], np.uint16)) == np.uint16  # integer bands keep their type


def test_metadata_is_kept(chips, tmp_path):
    pack_shards(chips, tmp_path / "shards", chips_per_shard=10)
    records = read_back(tmp_path / "shards")
    for path in chips:
        chip = read_chip(path)
        record = records[path]
        assert record["date"] == chip.date and record["epsg"] == (chip.epsg or -1)
        assert (record["lon"], record["lat"]) == (chip.lon, chip.lat)
        assert list(record["bbox"]) == list(chip.bbox)
        assert record["crs"] == chip.crs and list(record["transform"]) == list(chip.transform)
    shard = tmp_path / "shards" / "chips-000000.clayshard"
    with open(shard, "rb") as handle:
        index = read_index(shard, handle)
        named, facts = read_record(handle, index, 0)
        uint16_chip, uint16_facts = read_record(handle, index, 4)
        sinusoidal, sinusoidal_facts = read_record(handle, index, 5)
    assert facts.band_names == [f"band{i}" for i in range(13)] and facts.dtype == "float32"
    assert uint16_facts.nodata == 0 and uint16_facts.dtype == "uint16" and uint16_chip.pixels.dtype == np.uint16
    assert sinusoidal.epsg is None and "Sinusoidal" in sinusoidal_facts.crs_wkt
    assert sinusoidal.date.isoformat() == "2019-02-03" and sinusoidal_facts.transform[0] == 10.0
    assert named.tags["date"] == "2021-06-15"


def test_resume_mid_epoch_gives_exactly_the_rest(tmp_path):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 10, size=SIZE)]
    pack_shards(paths, tmp_path / "shards", chips_per_shard=3)
    dataset = load_chip_dataset(tmp_path / "shards", num_shards=4, layout=LAYOUT)
    full = [record["source_url"] for record in dataset]
    iterator = iter(dataset)
    first = [next(iterator)["source_url"] for _ in range(4)]
    state = dataset.state_dict()
    resumed = load_chip_dataset(tmp_path / "shards", num_shards=4, layout=LAYOUT)
    resumed.load_state_dict(state)
    assert first + [record["source_url"] for record in resumed] == full
    assert sorted(full) == sorted(paths)


def test_two_ranks_with_two_workers_each_read_every_chip_once(tmp_path):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 11, size=SIZE)]
    pack_shards(paths, tmp_path / "shards", chips_per_shard=5)  # 3 files: fewer than ranks × workers
    seen = []
    for rank in range(2):
        dataset = load_chip_dataset(tmp_path / "shards", world_size=2, num_workers=2, layout=LAYOUT)
        assert dataset.num_shards % 4 == 0
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=2)
        for batch in chip_dataloader(dataset, batch_size=2, num_workers=2):
            seen += batch["source_url"]
    assert sorted(seen) == sorted(paths)


def _corrupt_record(shard, position: int, how: str) -> None:
    index = read_index(shard)
    data = bytearray(shard.read_bytes())
    start = index.offsets[position]
    if how == "payload":
        end = start + index.lengths[position]
        data[end - 200 : end - 190] = bytes(10)  # inside the last band's payload
    else:  # the header length points past the record: a truncated record
        data[start : start + 4] = struct.pack("<I", index.lengths[position] + 10)
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["payload", "truncated"])
@pytest.mark.parametrize("codec", ["zstd:1", "lz4", "none"])
def test_a_corrupted_record_is_skipped_named_and_counted(tmp_path, caplog, how, codec):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 5, size=SIZE)]
    report = pack_shards(paths, tmp_path / "shards", chips_per_shard=5, codec=codec)
    _corrupt_record(report.shards[0], 2, how)
    with caplog.at_level(logging.WARNING, logger="clay_hf"):
        batches = list(
            chip_dataloader(load_chip_dataset(tmp_path / "shards", num_shards=1, layout=LAYOUT), batch_size=5)
        )
    assert batches[0]["source_url"] == paths[:2] + paths[3:]
    assert batches[0]["bad_chips"] == 1
    assert "chips-000000.clayshard record 2" in caplog.text and "corrupted record" in caplog.text


def _set_version(shard, old: int, new: int) -> None:
    data = shard.read_bytes()
    assert data.count(f'"version": {old}'.encode()) == 1
    shard.write_bytes(data.replace(f'"version": {old}'.encode(), f'"version": {new}'.encode()))  # same length


def _write_old_shard(paths, shard, version: int) -> None:
    """A shard as versions 1 (no filter), 2 and 3 wrote it: no index checksum (nor, before 3, header checksum or
    mask)."""
    shard.parent.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(shard, version=version)
    for path in paths:
        writer.add(encode_record(read_chip(path), raster_facts(path), shuffle="none", version=version), path)
    writer.close()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_shards_are_read_and_newer_ones_refused(chips, tmp_path, version):
    _write_old_shard(chips, tmp_path / "shards" / "chips-000000.clayshard", version)
    assert read_index(tmp_path / "shards" / "chips-000000.clayshard").version == version
    records = read_back(tmp_path / "shards")
    for path in chips:
        loaded = read_chip(path, layout=LAYOUT).pixels
        assert np.asarray(records[path]["pixels"]).tobytes() == loaded.tobytes()
    _set_version(tmp_path / "shards" / "chips-000000.clayshard", version, 5)  # a version from the future
    with pytest.raises(ShardError, match=r"chips-000000\.clayshard: is format version 5; this clay_hf reads up to 4"):
        load_chip_dataset(tmp_path / "shards", layout=LAYOUT)


def _flip_in_index(shard, text: bytes) -> None:
    """Flip the lowest bit of the last byte of `text` in the shard's index (at its end)."""
    data = bytearray(shard.read_bytes())
    at = data.rindex(text) + len(text) - 1
    data[at] ^= 1
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["name", "offset"])
def test_a_flipped_bit_in_the_index_is_refused_by_name(chips, tmp_path, where):
    shard = pack_shards(chips, tmp_path / "shards").shards[0]
    index = read_index(shard)
    assert index.version == 4
    _flip_in_index(shard, b"claytile_T2" if where == "name" else f"[{index.offsets[3]}".encode())  # T3, an offset ±1
    with pytest.raises(ShardError, match=rf"{shard}: has a damaged index \(it does not match its CRC-32\)"):
        read_index(shard)
    with pytest.raises(ShardError, match=r"chips-000000\.clayshard: has a damaged index"):
        load_chip_dataset(tmp_path / "shards", layout=LAYOUT)


def test_a_truncated_shard_is_an_error_naming_the_file(tmp_path):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 4, size=SIZE)]
    report = pack_shards(paths, tmp_path / "shards", chips_per_shard=2)
    shard = report.shards[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"chips-000001\.clayshard: is truncated"):
        load_chip_dataset(tmp_path / "shards", layout=LAYOUT)


def test_bad_chips_are_skipped_when_packing_and_packing_continues(tmp_path):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 4, size=SIZE)]
    broken = tmp_path / "chips" / "broken.tif"
    broken.write_bytes(b"not a tiff")
    report = pack_shards([*paths[:2], str(broken), *paths[2:]], tmp_path / "shards", chips_per_shard=3)
    assert report.chips == 4 and len(report.bad) == 1 and "broken.tif" in report.bad[0]
    first = report.shards[0]
    before = first.stat().st_mtime_ns
    again = pack_shards([*paths[:2], str(broken), *paths[2:]], tmp_path / "shards", chips_per_shard=3)
    assert again.chips == 4 and not again.bad and first.stat().st_mtime_ns == before  # finished shards are kept


def test_split_of_shards_matches_the_geotiff_split(tmp_path):
    paths = [str(p) for p in write_synthetic_chips(tmp_path / "chips", 30, size=SIZE)]
    pack_shards(paths, tmp_path / "shards", chips_per_shard=7)
    train, validation = split_chip_source(tmp_path / "shards")
    expected = split_paths(paths)
    assert isinstance(train, ShardSelection) and len(train) + len(validation) == 30
    assert sorted(train.all_names()) == sorted(expected["train"])
    assert sorted(validation.all_names()) == sorted(expected["validation"])
    records = [record["source_url"] for record in load_chip_dataset(validation, layout=LAYOUT)]
    assert sorted(records) == sorted(expected["validation"])
    assert sorted(
        r["source_url"] for r in load_chip_dataset(tmp_path / "shards", split="validation", layout=LAYOUT)
    ) == sorted(expected["validation"])
    rest = without_chips(train, set(expected["train"][:3]))
    assert len(rest) == len(train) - 3


def test_every_format_gives_the_same_records(tmp_path):
    write_synthetic_chips(tmp_path / "chips", 4, size=SIZE)
    paths = resolve_sources(tmp_path / "chips")  # sorted, as the GeoTIFF loader reads them
    pack_shards(paths, tmp_path / "shards", chips_per_shard=2)
    pack_webdataset(paths, tmp_path / "tars", chips_per_shard=2)
    layout = LAYOUT
    sources = {"geotiff": tmp_path / "chips", "shards": tmp_path / "shards", "webdataset": tmp_path / "tars"}
    batches = {}
    for fmt, source in sources.items():
        assert chip_format(source) == fmt
        loader = chip_dataloader(load_chip_dataset(source, layout=layout, num_shards=1), batch_size=4)
        batches[fmt] = next(iter(loader))
    for fmt in ("shards", "webdataset"):
        assert batches[fmt]["source_url"] == batches["geotiff"]["source_url"]
        for key in ("pixels", "timestep", "latlon", "bbox", "epsg", "transform"):
            assert torch.equal(batches[fmt][key], batches["geotiff"][key]), (fmt, key)
        assert batches[fmt]["crs"] == batches["geotiff"]["crs"]


def test_pack_shards_script(tmp_path, capsys):
    from clay_hf.commands.pack_shards import main as pack_shards_main

    write_synthetic_chips(tmp_path / "chips", 3, size=SIZE)
    assert (
        pack_shards_main([str(tmp_path / "chips"), "--output_dir", str(tmp_path / "out"), "--chips_per_shard", "2"])
        == 0
    )
    assert (
        "2 shards" in capsys.readouterr().out
        and len(load_chip_dataset(tmp_path / "out", layout=LAYOUT).num_shards * [0]) >= 1
    )
    with pytest.raises(SystemExit):
        pack_shards_main([str(tmp_path / "chips"), "--output_dir", str(tmp_path / "x"), "--codec", "brotli"])
    for shuffle, filtered in (("float", True), ("none", False)):  # synthetic chips: float bands
        pack_shards_main([str(tmp_path / "chips"), "--output_dir", str(tmp_path / shuffle), "--shuffle", shuffle])
        bands = record_header(tmp_path / shuffle / "chips-000000.clayshard")["bands"]
        assert all((band.get("filter") == "shuffle") == filtered for band in bands)


@pytest.fixture
def model_dir(tmp_path):
    from conftest import save_pretraining_model

    return save_pretraining_model(tmp_path / "model")


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")  # torchdata 0.11 on torch >= 2.10
def test_embed_evaluate_and_pretrain_read_shards(model_dir, tmp_path):
    import pyarrow.parquet as pq

    from clay_hf.commands.pretrain import run as pretrain_main
    from clay_hf.evaluation.reconstruction import evaluate_reconstruction, load_pretraining_model
    from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder

    write_synthetic_chips(tmp_path / "chips", 12, size=32, seed=1)
    paths = resolve_sources(tmp_path / "chips")
    pack_shards(paths, tmp_path / "shards", chips_per_shard=5)

    encoder, processor = load_encoder(str(model_dir))
    from_tifs = embed_to_geoparquet(encoder, processor, tmp_path / "chips", tmp_path / "a.parquet", progress=False)
    from_shards = embed_to_geoparquet(encoder, processor, tmp_path / "shards", tmp_path / "b.parquet", progress=False)
    assert from_shards.embedded == from_tifs.embedded == 12
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.column("source_url").to_pylist() == b.column("source_url").to_pylist()
    assert a.column("embeddings").to_pylist() == b.column("embeddings").to_pylist()

    model, processor = load_pretraining_model(str(model_dir))
    on_tifs = evaluate_reconstruction(model, processor, tmp_path / "chips", split="all")
    on_shards = evaluate_reconstruction(model, processor, tmp_path / "shards", split="all")
    assert on_shards["num_chips"] == 12 and on_shards["masked_mse"] == on_tifs["masked_mse"]

    summary = pretrain_main(
        ["--train_dir", str(tmp_path / "shards"), "--output_dir", str(tmp_path / "run"),
         "--config_name", str(model_dir / "config.json"), "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "1", "--max_train_steps", "2", "--report_to", "none"]
    )  # fmt: skip
    assert summary["global_step"] == 2 and summary["chips_seen"] == 4
    assert summary["final_validation_loss"] is not None  # the hash split gave validation records too


def test_a_shard_cut_short_during_a_run_counts_its_records_as_bad(tmp_path):
    write_synthetic_chips(tmp_path / "chips", 4, size=SIZE)
    paths = resolve_sources(tmp_path / "chips")
    report = pack_shards(paths, tmp_path / "shards", chips_per_shard=2)
    dataset = load_chip_dataset(
        tmp_path / "shards", num_shards=1, layout=LAYOUT
    )  # the indexes were fine when it was built
    report.shards[0].write_bytes(report.shards[0].read_bytes()[:100])
    batches = list(chip_dataloader(dataset, batch_size=4))
    assert batches[0]["source_url"] == paths[2:] and batches[0]["bad_chips"] == 2


def test_a_rerun_repacks_a_shard_of_an_older_format_packed_from_the_same_chips(chips, tmp_path):
    """An older format's records may hold other values for the same chips (before format 4 a GeoTIFF's own scale was
    not applied): a rerun keeps only shards of this format, so one dataset never mixes both."""
    shard = pack_shards(chips, tmp_path / "shards").shards[0]
    index = read_index(shard)
    writer = ShardWriter(shard, index.inputs, index.settings, version=3)
    for path in chips:
        writer.add(encode_record(read_chip(path), raster_facts(path), version=3), path)
    writer.close()
    assert read_index(shard).version == 3 and read_index(shard).inputs == index.inputs
    pack_shards(chips, tmp_path / "shards")
    assert read_index(shard).version == 4
