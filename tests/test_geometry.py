"""Chip footprints and places anywhere on Earth: the antimeridian, the poles, CRSs without an EPSG code, 0–360
longitudes, rotated grids — through `read_chip`, the loader and `embed_to_geoparquet`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from conftest import small_config
from geotiffs import write_geotiff
from pyproj import CRS, Transformer
from rasterio.transform import Affine
from shapely import Point, from_wkb

from clay_hf import ClayImageProcessor, ClayModel
from clay_hf.data import ChipLayout, collate_chips, load_geotiff_dataset, read_chip
from clay_hf.inference.embeddings import embed_to_geoparquet
from clay_hf.utils.geometry import chip_outline, footprint, lonlat_bbox, normalize_longitude

ORTHOGRAPHIC = "+proj=ortho +lat_0=40 +lon_0=-100 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ClayModel(small_config()).eval(), ClayImageProcessor()


def centred_chip(path, crs, lon, lat, size=32, resolution=10.0, **kwargs):
    """A chip in `crs` whose centre is (lon, lat)."""
    x, y = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(lon, lat)
    half = size * resolution / 2
    return write_geotiff(path, size=(size, size), crs=crs, origin=(x - half, y + half), resolution=resolution, **kwargs)


def embed(encoder, folder, tmp_path):
    model, processor = encoder
    run = embed_to_geoparquet(model, processor, folder, tmp_path / "out.parquet", progress=False)
    table = pq.read_table(run.output)
    geo = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
    urls, wkb = table.column("source_url").to_pylist(), table.column("geometry").to_pylist()
    rows = {url.rsplit("/", 1)[-1]: from_wkb(value) for url, value in zip(urls, wkb, strict=True)}
    return run, rows, geo


def test_chip_across_the_antimeridian_is_split_and_the_bbox_crosses_it(encoder, tmp_path):
    folder = tmp_path / "chips"
    centred_chip(folder / "dateline.tif", "EPSG:32601", 180.0, 60.0)  # centre exactly on lon 180
    centred_chip(folder / "east.tif", "EPSG:32660", 179.0, 60.0)
    run, rows, geo = embed(encoder, folder, tmp_path)
    assert run.embedded == 2 and run.bad_chips == 0
    dateline = rows["dateline.tif"]
    assert dateline.geom_type == "MultiPolygon" and dateline.is_valid
    assert dateline.area < 0.01  # two slivers of a 320 m chip, not a strip around the globe
    west_part, east_part = sorted(dateline.geoms, key=lambda part: part.bounds[0])
    assert west_part.bounds[0] == -180 and east_part.bounds[2] == 180
    assert west_part.bounds[2] - west_part.bounds[0] < 0.01 and east_part.bounds[2] - east_part.bounds[0] < 0.01
    assert "MultiPolygon" in geo["geometry_types"]
    west, south, east, north = geo["bbox"]
    assert west > east and 178.9 < west < 179.0 and -180 < east < -179.99  # crosses the antimeridian, 1° wide
    assert 59.9 < south < north < 60.1
    chip = read_chip(folder / "dateline.tif")
    assert -180 <= chip.lon <= 180 and chip.lat == pytest.approx(60.0)


def test_chip_around_a_pole_reaches_it_and_is_valid(encoder, tmp_path):
    folder = tmp_path / "chips"
    write_geotiff(folder / "south.tif", size=(32, 32), crs="EPSG:3031", origin=(-160.0, 160.0))
    write_geotiff(folder / "north.tif", size=(32, 32), crs="EPSG:3413", origin=(-160.0, 160.0))
    _, rows, geo = embed(encoder, folder, tmp_path)
    for name, pole in (("south.tif", Point(0, -90)), ("north.tif", Point(0, 90))):
        assert rows[name].is_valid and rows[name].intersects(pole)
        assert rows[name].bounds[0] == -180 and rows[name].bounds[2] == 180
    assert geo["bbox"] == [-180.0, -90.0, 180.0, 90.0]


def test_crs_without_epsg_code_and_0_360_longitudes_are_embedded(encoder, tmp_path):
    folder = tmp_path / "chips"
    centred_chip(folder / "ortho.tif", ORTHOGRAPHIC, -100.0, 40.0)
    write_geotiff(folder / "east360.tif", size=(32, 32), crs="EPSG:4326", origin=(200.0, 10.0), resolution=0.001)
    assert CRS.from_user_input(ORTHOGRAPHIC).to_epsg() is None
    assert read_chip(folder / "ortho.tif").epsg is None and "ortho" in read_chip(folder / "ortho.tif").crs.lower()
    east = read_chip(folder / "east360.tif")
    assert east.lon == pytest.approx(-160 + 0.016)  # 200.016 → -159.984
    collate_chips(
        list(load_geotiff_dataset(folder, layout=ChipLayout(size=(32, 32))))
    )  # encodes every chip's place without error
    run, rows, _ = embed(encoder, folder, tmp_path)
    assert run.embedded == 2 and run.bad_chips == 0
    assert rows["ortho.tif"].centroid.distance(Point(-100, 40)) < 1e-3
    assert rows["east360.tif"].bounds == pytest.approx((-160.0, 9.968, -159.968, 10.0))


def test_rotated_chip_footprint_is_its_outline_not_its_envelope(encoder, tmp_path):
    folder = tmp_path / "chips"
    path = write_geotiff(folder / "rotated.tif", size=(32, 32), crs="EPSG:32633")
    rotated = Affine.translation(500_000, 5_000_000) @ Affine.rotation(30) @ Affine.scale(10, -10)
    with rasterio.open(path, "r+") as dataset:
        dataset.transform = rotated
    _, rows, _ = embed(encoder, folder, tmp_path)
    corners = [rotated @ corner for corner in [(0, 0), (32, 0), (32, 32), (0, 32)]]
    to_lonlat = Transformer.from_crs("EPSG:32633", "OGC:CRS84", always_xy=True)
    expected = shapely.Polygon([to_lonlat.transform(*corner) for corner in corners])
    assert rows["rotated.tif"].symmetric_difference(expected).area < 1e-3 * expected.area
    assert rows["rotated.tif"].area < 0.9 * expected.envelope.area


def test_longitudes_are_normalised_and_bboxes_take_the_short_way():
    assert normalize_longitude(-180.00000000000003) == pytest.approx(180.0)
    assert normalize_longitude(200.0) == -160.0 and normalize_longitude(180.0) == 180.0
    assert list(normalize_longitude(np.array([-10.0, 370.0]))) == [-10.0, 10.0]
    left = footprint(chip_outline((0.01, 0, 179.5, 0, -0.01, 1.0), 100, 100), "EPSG:4326")
    right = footprint(chip_outline((0.01, 0, -179.8, 0, -0.01, 1.0), 100, 100), "EPSG:4326")
    assert lonlat_bbox([left, right]) == pytest.approx([179.5, 0.0, -178.8, 1.0])
    assert lonlat_bbox([footprint(chip_outline((0.01, 0, 10, 0, -0.01, 1.0), 10, 10), 4326)]) == pytest.approx(
        [10.0, 0.9, 10.1, 1.0]
    )


def test_a_mirrored_crs_gives_the_same_footprint():
    """A Transverse Mercator with westing (x grows to the west) mirrors the outline; the footprint is the chip."""
    mirrored = "+proj=tmerc +lat_0=0 +lon_0=15 +k=1 +x_0=0 +y_0=0 +axis=wnu +ellps=WGS84 +units=m +no_defs"
    x, y = Transformer.from_crs("OGC:CRS84", mirrored, always_xy=True).transform(15.5, 45.0)
    polygon = footprint(chip_outline((-10.0, 0, x, 0, -10.0, y), 32, 32), mirrored)
    assert polygon.geom_type == "Polygon" and polygon.is_valid and polygon.area < 1e-4
    assert shapely.is_ccw(polygon.exterior)  # RFC 7946: exterior rings counter-clockwise
    assert polygon.contains(
        Point(Transformer.from_crs(mirrored, "OGC:CRS84", always_xy=True).transform(x - 160, y - 160))
    )


def test_a_chip_off_the_earth_is_skipped_and_one_without_a_footprint_keeps_its_embedding(encoder, tmp_path, caplog):
    folder = tmp_path / "chips"
    write_geotiff(folder / "a_good.tif", size=(32, 32), crs="EPSG:4326", origin=(10.0, 45.0), resolution=0.001)
    write_geotiff(folder / "a_sky.tif", size=(32, 32), crs="EPSG:4326", origin=(10.0, 120.0), resolution=0.001)
    # On the rim of an orthographic disk: the centre is on Earth, the outline's far side is not.
    write_geotiff(folder / "c_rim.tif", size=(32, 32), crs=ORTHOGRAPHIC, origin=(6_100_000.0, 160_000.0), resolution=10_000.0)  # fmt: skip
    run, rows, _ = embed(encoder, folder, tmp_path)
    assert run.embedded == 2  # a_sky is skipped with a warning (and counted), the run goes on
    assert "a_sky.tif: its centre is not a place on Earth" in caplog.text
    assert rows["a_good.tif"] is not None and rows["c_rim.tif"] is None
    assert "c_rim.tif: no footprint" in caplog.text
