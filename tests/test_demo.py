"""The demo's chips: the real Sentinel-2 scene when it can be fetched, synthetic chips (said so) when not."""

from __future__ import annotations

import rasterio

from clay_hf.chipping import SampleDataUnavailable
from clay_hf.commands import demo


def test_partial_config_keeps_the_v0_groups_of_the_sentinel2_bands():
    config = demo.partial_config(
        ["nir", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir08", "swir16", "swir22"]
    )
    assert config.band_names[:3] == ["blue", "green", "red"] and config.num_channels == 10
    assert config.band_groups == [["rgb", [2, 1, 0]], ["rededge", [3, 4, 5, 7]], ["nir", [6]], ["swir", [8, 9]]]


def test_demo_falls_back_to_synthetic_chips_and_says_so(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise SampleDataUnavailable("no registry")

    monkeypatch.setattr(demo, "sentinel2_sample_scene", offline)
    chips = demo.make_demo_chips(tmp_path, num_synthetic=2)
    assert "SYNTHETIC" in chips.description and "no registry" in chips.description
    assert chips.config_name == "tiny" and len(list(chips.folder.glob("*.tif"))) == 2


def test_demo_chips_of_the_real_scene_carry_the_sentinel2_band_names(tmp_path, monkeypatch):
    try:
        scene = demo.sentinel2_sample_scene()
    except SampleDataUnavailable:
        import pytest

        pytest.skip("the sample Sentinel-2 scene is not available")
    monkeypatch.setattr(demo, "DEMO_CHIP_SIZE", 512)
    chips = demo.make_demo_chips(tmp_path, num_synthetic=2)
    assert "real Sentinel-2 scene" in chips.description and scene
    paths = sorted(chips.folder.glob("*.tif"))
    assert len(paths) == 9  # 3 × 3 whole 512-pixel chips of 1933 × 1947
    with rasterio.open(paths[0]) as chip:
        assert chip.descriptions == tuple(demo.partial_config(list(chip.descriptions)).band_names)
        assert chip.count == 10
