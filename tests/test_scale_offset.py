"""A GeoTIFF's own scale/offset (GDAL band metadata) is applied as a STAC item's `raster:bands` are: once, in v0's
unit, recorded in the chip's `clay_raster_bands` tag, never carried by the chip again."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from geotiffs import write_geotiff

from clay_hf.chipping import make_chips, make_datacube_chips
from clay_hf.chipping.datacube import DECLARED_TAG, BandSource

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
