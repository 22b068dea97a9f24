"""One chip contract for every path (issue #22): missing pixels, band names and dates read the same everywhere, on
the real Sentinel-2 sample scene (cropped, masked and relabelled by the tests)."""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pystac
import pytest
import rasterio
from conftest import save_pretraining_model, small_config
from geotiffs import SENTINEL2_L1C_BANDS, sample_scene_or_skip, write_geotiff, write_scene_stack

from clay_hf.chipping import make_chips, make_datacube_chips, write_synthetic_chips
from clay_hf.chipping.datacube import DECLARED_TAG
from clay_hf.chipping.stac import stac_band_sources
from clay_hf.commands.embed import main as embed_main
from clay_hf.commands.pretrain import main as pretrain_main
from clay_hf.data import ChipError, ChipLayout, load_chip_dataset, read_chip
from clay_hf.data.shards import pack_shards
from clay_hf.data.webdataset import pack_webdataset
from clay_hf.finetuning.data import ChipReader
from clay_hf.models.clay.configuration_clay import CLAY_V0_BAND_NAMES

S2_CLAY_BANDS = tuple(CLAY_V0_BAND_NAMES[:10])
#: the Sentinel-2 id of each clay band
S2_IDS = dict(zip(S2_CLAY_BANDS, ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), strict=True))
SIZE = 128


@pytest.fixture(scope="module")
def scene():
    return sample_scene_or_skip()


def source_band(path, description: str) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(dataset.descriptions.index(description) + 1)


# --- missing pixels ---------------------------------------------------------------------------------------------------


def test_make_chips_honours_the_mask_and_counts_pixels(scene, tmp_path):
    """Item 1: a block of zeros hidden by an internal mask (no nodata value) is missing in the tiler too."""
    block = (slice(20, 40), slice(30, 80))  # 1000 pixels in the first 128-pixel chip
    source = write_scene_stack(scene, tmp_path / "scene.tif", window=(600, 600, 256, 256), hidden=block)
    assert int(read_chip(source).missing.any(axis=0).sum()) == 1000
    strict = make_chips(source, tmp_path / "strict", chip_size=SIZE)
    assert len(strict.written) == 3
    assert strict.skipped[0][1] == "1000 of 16384 pixels missing (6.1% nodata, limit 0%)"
    lenient = make_chips(source, tmp_path / "lenient", chip_size=SIZE, max_nodata_fraction=0.1)
    chip = read_chip(lenient.written[0])
    assert chip.missing is not None and chip.missing.any(axis=0)[block].all()
    assert int(chip.missing.any(axis=0).sum()) == 1000
    with pytest.raises(ChipError, match=r"6\.1% nodata"):
        read_chip(lenient.written[0], layout=ChipLayout(bands=("blue", "green", "red", "nir"), size=(SIZE, SIZE)))


def test_a_shard_keeps_the_mask_and_the_pixels_bit_for_bit(scene, tmp_path):
    """Item 2: a chip whose top 32 rows are masked is as bad read from its shard as from its GeoTIFF."""
    chip = write_scene_stack(
        scene,
        tmp_path / "chips" / "masked.tif",
        S2_IDS.values(),
        (600, 600, SIZE, SIZE),
        hidden=(slice(0, 32), slice(None)),
    )
    strict = ChipLayout(bands=S2_CLAY_BANDS, size=(SIZE, SIZE))
    with pytest.raises(ChipError, match=r"masked\.tif: 25% nodata"):
        read_chip(chip, layout=strict)
    pack_shards([str(chip)], tmp_path / "shards")
    (record,) = list(load_chip_dataset(tmp_path / "shards", layout=strict))
    assert record["bad_chip"].startswith("25% nodata")
    filled = ChipLayout(bands=S2_CLAY_BANDS, size=(SIZE, SIZE), fill_values=tuple(range(10)))
    (from_shard,) = list(load_chip_dataset(tmp_path / "shards", layout=filled))
    from_file = read_chip(chip, layout=filled)
    assert np.asarray(from_shard["pixels"]).tobytes() == from_file.pixels.tobytes()
    assert from_shard["nodata_fraction"] == pytest.approx(0.25)
    raw = ChipLayout(bands=S2_CLAY_BANDS, size=(SIZE, SIZE), dtype="uint16", fill_values=tuple(range(10)))
    (unfilled,) = list(load_chip_dataset(tmp_path / "shards", layout=raw))
    assert (np.asarray(unfilled["pixels"])[:, 32:] == read_chip(chip).pixels[:, 32:]).all()  # the pixels, bit for bit


def test_the_fine_tuning_reader_honours_the_mask(scene, tmp_path):
    """Item 3: masked pixels are filled (not fed as 0) and unscored, as the data reader fills them."""
    block = (slice(10, 30), slice(5, 50))
    chip = write_scene_stack(scene, tmp_path / "masked.tif", S2_IDS.values(), (600, 600, SIZE, SIZE), hidden=block)
    means = [float(value) for value in range(1, 11)]
    reader = ChipReader(S2_CLAY_BANDS, means)
    pixels, missing, _, _ = reader.read(reader.header(str(chip)))
    assert missing[block].all() and int(missing.sum()) == 20 * 45
    assert (pixels[:, block[0], block[1]] == np.asarray(means, np.float32)[:, None, None]).all()
    layout = ChipLayout(bands=S2_CLAY_BANDS, size=(SIZE, SIZE), fill_values=tuple(means))
    assert pixels.tobytes() == read_chip(chip, layout=layout).pixels.tobytes()
    with rasterio.open(chip) as dataset:
        window_pixels, window_missing = reader.read_window(dataset, reader.header(str(chip)), 0, 0, SIZE, SIZE)
    assert window_pixels.tobytes() == pixels.tobytes() and (window_missing == missing).all()


def test_stac_raster_bands_nodata_scale_and_offset_are_applied_and_recorded(scene, tmp_path):
    """Item 4: a zero-filled corner declared nodata by the item is missing; scale and offset are applied, and the
    reflectance they give is written in v0's unit for an optical band (× 10 000), where its statistics apply."""
    band = write_scene_stack(scene, tmp_path / "B02.tif", ("B02",), (600, 600, 64, 64), date=None)
    with rasterio.open(band, "r+") as dataset:
        raw = dataset.read(1)
        raw[:16, :16] = 0  # outside the swath
        dataset.write(raw, 1)
    item = pystac.Item("S2-crop", None, [0, 0, 1, 1], dt.datetime(2016, 5, 11, tzinfo=dt.timezone.utc), {})
    declared = {"raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]}
    item.add_asset("B02", pystac.Asset(str(band), roles=["data"], extra_fields=declared))
    found = stac_band_sources([item])
    assert (found.bands[0].nodata, found.bands[0].scale, found.bands[0].offset) == (0.0, 0.0001, -0.1)
    report = make_datacube_chips(found.bands, tmp_path / "chips", date=found.date, chip_size=64)
    assert not report.written and report.skipped[0][1].startswith("256 of 4096 pixels missing")
    report = make_datacube_chips(found.bands, tmp_path / "kept", date=found.date, chip_size=64, max_nodata_fraction=0.1)
    with rasterio.open(report.written[0]) as chip:
        values = chip.read(1)
        assert json.loads(chip.tags()[DECLARED_TAG]) == {
            "blue": {"nodata": 0.0, "scale": 0.0001, "offset": -0.1, "written_unit": 0.0001}
        }
    assert np.isnan(values[:16, :16]).all()
    np.testing.assert_allclose(values[16:], (raw[16:] * 0.0001 - 0.1) / 0.0001, rtol=1e-5, atol=1e-2)
    assert 0 < np.nanmean(values) < 10_000  # digital numbers less the 1000 of the offset, not reflectance in 0..1


# --- band names -------------------------------------------------------------------------------------------------------


def test_sentinel2_band_names_in_descriptions_decide(scene, tmp_path):
    """Items 5 and 6: a 13-band L1C stack named B01…B12 is read by name, never in v0 order, by every reader."""
    stack = write_scene_stack(scene, tmp_path / "l1c.tif", SENTINEL2_L1C_BANDS, (600, 600, 64, 64))
    s2 = ChipLayout(bands=S2_CLAY_BANDS, size=(64, 64), dtype="uint16")
    chip = read_chip(stack, layout=s2)
    for index, band in enumerate(S2_CLAY_BANDS):
        assert (chip.pixels[index] == source_band(stack, S2_IDS[band])).all(), band
    reader = ChipReader(S2_CLAY_BANDS, [0.0] * 10)
    pixels, _, _, _ = reader.read(reader.header(str(stack)))
    assert (pixels == chip.pixels.astype(np.float32)).all()
    v0 = ChipLayout(size=(64, 64))
    with pytest.raises(ChipError, match=r"lacks band\(s\) \['vv', 'vh', 'dem'\]"):
        read_chip(stack, layout=v0)
    with pytest.raises(ChipError, match=r"lacks band\(s\) \['vv', 'vh', 'dem'\]"):
        ChipReader(CLAY_V0_BAND_NAMES, [0.0] * 13).header(str(stack))
    records = list(load_chip_dataset(tmp_path, layout=v0))
    assert len(records) == 1 and "lacks band(s) ['vv', 'vh', 'dem']" in records[0]["bad_chip"]


def test_descriptions_that_name_no_band_make_the_chip_bad(scene, tmp_path):
    names = ("B02", "B03", "B04", "B08", "thermal", "Band 6")
    stack = write_scene_stack(
        scene, tmp_path / "odd.tif", ("B02", "B03", "B04", "B08", "B11", "B12"), descriptions=names
    )
    layout = ChipLayout(bands=("blue", "green", "red", "nir"), size=(256, 256))
    with pytest.raises(ChipError, match=r"odd\.tif: has band descriptions that name no known band: \['thermal'\]"):
        read_chip(stack, layout=layout)
    with pytest.raises(ChipError, match=r"name no known band: \['thermal'\]"):
        ChipReader(layout.bands, [0.0] * 4).header(str(stack))
    named = write_scene_stack(scene, tmp_path / "named.tif", descriptions=("blue", "b3", "Red", "NIR"))
    assert read_chip(named, layout=ChipLayout(bands=("nir", "blue"), size=(256, 256), dtype="uint16")).pixels.shape == (
        2, 256, 256
    )  # fmt: skip


# --- dates ------------------------------------------------------------------------------------------------------------


def test_the_files_own_date_wins_over_the_date_flag(scene, tmp_path):
    """Item 7: --date is the fallback, not an override."""
    tagged = write_scene_stack(scene, tmp_path / "tagged.tif", window=(600, 600, 128, 128))
    report = make_chips(tagged, tmp_path / "chips", chip_size=128, date="2016-05-01")
    assert [path.name for path in report.written] == ["claytile_tagged_20160511_v02_0000.tif"]
    assert read_chip(report.written[0], date="2016-05-01").date == dt.date(2016, 5, 11)
    undated = write_scene_stack(scene, tmp_path / "undated.tif", window=(600, 600, 128, 128), date=None)
    report = make_chips(undated, tmp_path / "chips", chip_size=128, date="2016-05-01")
    assert report.written[0].name == "claytile_undated_20160501_v02_0000.tif"


# --- every path, the same verdict -------------------------------------------------------------------------------------


def test_every_reader_gives_the_same_verdict_and_pixels(scene, tmp_path):
    """The same masked, relabelled and dated chips through read_chip, the GeoTIFF loader (streaming and map-style),
    Clay shards, WebDataset and the fine-tuning reader."""
    folder = tmp_path / "chips"
    write_scene_stack(scene, folder / "a_masked.tif", S2_IDS.values(), (600, 600, 64, 64), hidden=(slice(0, 8), slice(None)))  # fmt: skip
    write_scene_stack(scene, folder / "b_relabelled.tif", tuple(reversed(S2_IDS.values())), (700, 600, 64, 64))
    named = "claytile_T18TWL_20160511_v02_0000.tif"  # dated by its v0 name only
    write_scene_stack(scene, folder / named, S2_IDS.values(), (800, 600, 64, 64), date=None)
    layout = ChipLayout(bands=S2_CLAY_BANDS, size=(64, 64))
    paths = sorted(str(path) for path in folder.glob("*.tif"))
    pack_shards(paths, tmp_path / "shards")
    pack_webdataset(paths, tmp_path / "tars")
    expected = {}
    for path in paths:
        try:
            expected[path] = read_chip(path, layout=layout, date="2016-05-01").pixels.tobytes()
        except ChipError as error:
            expected[path] = error.problem
    assert expected[paths[0]].startswith("12.5% nodata")  # the masked chip is bad
    streamed = {r["source_url"]: r for r in load_chip_dataset(folder, layout=layout)}
    shards = {r["source_url"]: r for r in load_chip_dataset(tmp_path / "shards", layout=layout)}
    for path in paths:
        for records in (streamed, shards):
            record = records[path]
            got = record["bad_chip"] if record["bad_chip"] else np.asarray(record["pixels"]).tobytes()
            assert got == expected[path], path
            assert record["bad_chip"] or record["date"] == dt.date(2016, 5, 11)  # the tag, or the v0 name
    tars = {r["source_url"]: r for r in load_chip_dataset(tmp_path / "tars", layout=layout)}
    assert sorted(tars) == paths[1:]  # the WebDataset packer already refused the masked chip
    reader = ChipReader(S2_CLAY_BANDS, [0.0] * 10)
    for path in paths[1:]:
        assert np.asarray(tars[path]["pixels"]).tobytes() == expected[path]
        assert tars[path]["date"] == dt.date(2016, 5, 11)
        header = reader.header(path)
        assert header.date == dt.date(2016, 5, 11) and reader.read(header)[0].tobytes() == expected[path]
    with pytest.raises(ChipError, match=r"12\.5% nodata"):
        read_chip(paths[0], layout=layout)


# --- outputs and counts -----------------------------------------------------------------------------------------------


def test_skip_reasons_count_pixels_and_skips_count_per_run(tmp_path, caplog):
    """Item 9: 6 missing pixels of 65 536 are not "0.0%"; "(N skipped so far)" counts over the whole run."""
    data = np.random.default_rng(0).uniform(1, 100, (2, 256, 256)).astype("float32")
    data[:, 0, :6] = np.nan
    source = write_geotiff(tmp_path / "scene.tif", data=data, size=(256, 256))
    report = make_chips(source, tmp_path / "chips", chip_size=256)
    assert report.skipped[0][1] == "6 of 65536 pixels missing (0.00916% nodata, limit 0%)"
    for index in range(2):
        write_geotiff(tmp_path / "bad" / f"chip{index}.tif", size=(16, 16), crs=None)
    with caplog.at_level(logging.WARNING):
        records = list(load_chip_dataset(tmp_path / "bad", layout=ChipLayout(size=(16, 16)), num_shards=2))
    assert [record["bad_chip"] != "" for record in records] == [True, True]
    counts = [int(message.rsplit("(", 1)[1].split()[0]) for message in caplog.messages if "skipped so far" in message]
    assert len(counts) == 2 and counts[1] == counts[0] + 1  # two slices of work, one count


def test_a_run_that_can_use_no_chip_says_why_before_it_works(tmp_path, capsys):
    """Item 10: pretraining at 512 over 128-pixel chips stops before the first step with the fix; embedding chips
    that are all bad exits 1 with the reason."""
    write_synthetic_chips(tmp_path / "chips", 6, size=32, seed=1)
    config = tmp_path / "config.json"
    small_config(image_size=64).to_json_file(config)
    args = ["--train_dir", str(tmp_path / "chips"), "--output_dir", str(tmp_path / "run"), "--config_name", str(config),
            "--max_train_steps", "2", "--report_to", "none", "--per_device_train_batch_size", "2"]  # fmt: skip
    assert pretrain_main(args) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is 32×32 pixels, expected 64×64" in error and "--image_size 32" in error
    assert not list((tmp_path / "run").glob("checkpoint*")) and not (tmp_path / "run" / "model.safetensors").exists()
    model = save_pretraining_model(tmp_path / "model")
    command = ["--model_name_or_path", str(model), "--data_dir", str(tmp_path / "chips"), "--output",
               str(tmp_path / "e.parquet"), "--image_size", "32"]  # fmt: skip
    for chip in (tmp_path / "chips").glob("*.tif"):
        with rasterio.open(chip, "r+") as dataset:
            dataset.nodata = float(dataset.read(1)[0, 0])  # one missing value per chip: every chip bad
    assert embed_main(command) == 1
    assert "no chip of" in capsys.readouterr().err
