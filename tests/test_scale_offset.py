"""A GeoTIFF's own scale/offset (GDAL band metadata) is applied as a STAC item's `raster:bands` are: in v0's unit,
once: float chips are written in it (recorded in the chip's `clay_raster_bands` tag, not carried again), integer
chips carry the scale, and every chip reader applies a file's scale."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from geotiffs import write_geotiff

from clay_hf.chipping import make_chips, make_datacube_chips
from clay_hf.chipping.datacube import DECLARED_TAG, BandSource
from clay_hf.data import ChipLayout, read_chip
from clay_hf.finetuning.data import ChipReader

SIZE = 32
DN = np.arange(1000, 1000 + SIZE * SIZE, dtype=np.uint16).reshape(1, SIZE, SIZE)  # Sentinel-2 L2A digital numbers


def _scaled(path, scale: float, offset: float, bands: int = 1):
    """A uint16 GeoTIFF whose bands declare `scale` and `offset` (as an L2A band file: 1e-4 and -0.1)."""
    write_geotiff(path, bands=bands, size=(SIZE, SIZE), dtype="uint16", data=np.repeat(DN, bands, axis=0))
    with rasterio.open(path, "r+") as dataset:
        dataset.scales, dataset.offsets = (scale,) * bands, (offset,) * bands
    return path


def _chip(folder):
    path = sorted(folder.glob("*.tif"))[0]
    with rasterio.open(path) as chip:
        return chip.read(), chip.tags(), chip.scales, chip.offsets


def test_a_band_files_scale_and_offset_are_applied_in_v0_units(tmp_path):
    source = _scaled(tmp_path / "T33TMT_20210615_B04.tif", 1e-4, -0.1)
    make_datacube_chips({"red": source}, tmp_path / "chips", chip_size=SIZE)
    pixels, tags, scales, offsets = _chip(tmp_path / "chips")
    np.testing.assert_allclose(pixels[0], DN[0] - 1000.0, atol=1e-2)  # (DN × 1e-4 − 0.1) / 1e-4
    assert json.loads(tags[DECLARED_TAG]) == {"red": {"scale": 1e-4, "offset": -0.1, "written_unit": 1e-4}}
    assert scales == (1.0,) and offsets == (0.0,)  # the chip's values are not scaled again by a reader


def test_the_items_scale_and_offset_win_over_the_files(tmp_path):
    source = _scaled(tmp_path / "LC09_SR_B4.tif", 1e-4, -0.1)
    landsat = BandSource("red", str(source), scale=2.75e-05, offset=-0.2)
    make_datacube_chips([landsat], tmp_path / "chips", chip_size=SIZE)
    pixels, tags, _, _ = _chip(tmp_path / "chips")
    np.testing.assert_allclose(pixels[0], (DN[0] * 2.75e-05 - 0.2) / 1e-4, rtol=1e-5, atol=1e-2)
    assert json.loads(tags[DECLARED_TAG])["red"]["scale"] == 2.75e-05


def test_the_scene_tiler_applies_a_scenes_scale_and_offset(tmp_path):
    scene = _scaled(tmp_path / "scene.tif", 1e-4, -0.1, bands=2)
    with rasterio.open(scene, "r+") as dataset:
        dataset.descriptions = ("red", "vv")
    make_chips(scene, tmp_path / "chips", chip_size=SIZE)
    pixels, tags, scales, offsets = _chip(tmp_path / "chips")
    np.testing.assert_allclose(pixels[0], DN[0] - 1000.0, atol=1e-2)  # optical: in v0's unit
    np.testing.assert_allclose(pixels[1], DN[0] * 1e-4 - 0.1, atol=1e-6)  # not optical: the physical value
    assert json.loads(tags[DECLARED_TAG]) == {
        "red": {"scale": 1e-4, "offset": -0.1, "written_unit": 1e-4},
        "vv": {"scale": 1e-4, "offset": -0.1, "written_unit": 1.0},
    }
    assert scales == (1.0, 1.0) and offsets == (0.0, 0.0)


def test_a_rescaled_value_equal_to_the_sources_nodata_stays_a_pixel(tmp_path):
    """DN 1000 of an L2A band is reflectance 0, written as ~0.0: the chip must not declare the source's nodata 0 (in
    the source's unit) over rescaled values, where it would mark such pixels missing."""
    scene = _scaled(tmp_path / "scene.tif", 1e-4, -0.1)
    with rasterio.open(scene, "r+") as dataset:
        dataset.descriptions = ("red",)
        dataset.nodata = 0
        pixels = dataset.read()
        pixels[0, 0, 0] = 1000
        dataset.write(pixels)
    make_chips(scene, tmp_path / "chips", chip_size=SIZE)
    pixels, *_ = _chip(tmp_path / "chips")
    assert abs(pixels[0, 0, 0]) < 1e-3
    with rasterio.open(sorted((tmp_path / "chips").glob("*.tif"))[0]) as chip:
        assert chip.nodata is None or np.isnan(chip.nodata)


def _scaled_red_scene(path, nodata: float | None = None):
    """A 1-band L2A red band (uint16 DN, scale 1e-4, offset -0.1) named `red`, DN 1000 (reflectance 0) at (0, 0)."""
    scene = _scaled(path, 1e-4, -0.1)
    with rasterio.open(scene, "r+") as dataset:
        dataset.descriptions = ("red",)
        dataset.nodata = nodata
        pixels = dataset.read()
        pixels[0, 0, 0] = 1000
        dataset.write(pixels)
    return scene


def test_every_chip_reader_applies_a_files_scale_and_offset(tmp_path):
    """A chip a user made (not by our chipping) that declares a scale: read_chip, the layout path and the
    fine-tuning scene reader all read v0's unit, and the file's nodata 0 (a stored value) marks nothing else."""
    scene = _scaled_red_scene(tmp_path / "T33TMT_20210615_red.tif", nodata=0)
    expected = DN[0].astype(np.float32) - 1000.0
    expected[0, 0] = 0.0
    plain = read_chip(scene)
    np.testing.assert_allclose(plain.pixels[0], expected, atol=1e-2)
    assert plain.missing is None and plain.nodata is None
    layout = ChipLayout(bands=("red",), size=(SIZE, SIZE), dtype="float32")
    np.testing.assert_allclose(read_chip(scene, layout=layout).pixels[0], expected, atol=1e-2)
    reader = ChipReader(["red"], [0.0])
    header = reader.header(str(scene))
    with rasterio.open(scene) as dataset:
        pixels, missing = reader.read_window(dataset, header, 0, 0, SIZE, SIZE)
    np.testing.assert_allclose(pixels[0], expected, atol=1e-2)
    assert not missing.any()


def test_integer_chips_carry_the_scale_that_readers_apply(tmp_path):
    """`make_chips --dtype source`: integer chips keep the stored values and carry the scale and offset, so they
    read as the float chips of the same scene."""
    scene = _scaled_red_scene(tmp_path / "scene.tif")
    make_chips(scene, tmp_path / "float", chip_size=SIZE)
    make_chips(scene, tmp_path / "source", chip_size=SIZE, dtype="source")
    stored, tags, scales, offsets = _chip(tmp_path / "source")
    assert stored.dtype == np.uint16 and stored[0, 0, 1] == DN[0, 0, 1]
    assert scales == (1e-4,) and offsets == (-0.1,) and DECLARED_TAG not in tags
    from_integer = read_chip(sorted((tmp_path / "source").glob("*.tif"))[0]).pixels
    from_float = read_chip(sorted((tmp_path / "float").glob("*.tif"))[0]).pixels
    np.testing.assert_allclose(from_integer, from_float, atol=1e-3)
