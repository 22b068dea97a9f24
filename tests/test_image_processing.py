import datetime as dt

import numpy as np
import pytest
import torch
from conftest import small_config
from transformers import AutoImageProcessor

from clay_hf import CLAY_V0_BAND_STATISTICS, ClayForMaskedImageModeling, ClayImageProcessor
from clay_hf.models.clay.configuration_clay import CLAY_V0_BAND_NAMES
from clay_hf.models.clay.image_processing_clay import encode_dates, encode_lonlat, normalize_pixels, parse_date

MEAN = np.array([mean for mean, _ in CLAY_V0_BAND_STATISTICS.values()])
STD = np.array([std for _, std in CLAY_V0_BAND_STATISTICS.values()])


def raw_chips(batch=2, bands=13, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 10000, (batch, bands, size, size)).astype(np.uint16)


def test_fixture_metadata_encodings_are_reproduced(fixture_meta, expected):
    timestep = encode_dates(fixture_meta["dates"])
    latlon = encode_lonlat(fixture_meta["lonlat"])
    np.testing.assert_allclose(timestep, expected["timestep"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(latlon, expected["latlon"].numpy(), atol=1e-6, rtol=0)

    outputs = ClayImageProcessor()(raw_chips(), dates=fixture_meta["dates"], lonlat=fixture_meta["lonlat"])
    torch.testing.assert_close(outputs["timestep"], expected["timestep"], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs["latlon"], expected["latlon"], atol=1e-6, rtol=0)


def test_pixels_are_normalised_per_band_with_the_v0_table():
    images = raw_chips()
    outputs = ClayImageProcessor()(images, dates=["2020-01-01"] * 2, lonlat=[(0, 0), (1, 1)])
    assert outputs["pixel_values"].dtype == torch.float32 and outputs["pixel_values"].shape == (2, 13, 16, 16)
    expected = (images - MEAN[None, :, None, None]) / STD[None, :, None, None]
    np.testing.assert_allclose(outputs["pixel_values"].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_inputs_in_every_accepted_form_give_the_same_result():
    images = raw_chips(batch=1)
    processor = ClayImageProcessor()
    reference = processor(images, dates=["2021-03-04"], lonlat=[(12.5, 41.9)])
    variants = [
        processor(images[0], dates="2021-03-04", lonlat=(12.5, 41.9)),
        processor(torch.from_numpy(images.astype(np.int32))[0], dates=dt.date(2021, 3, 4), lonlat=[12.5, 41.9]),
        processor([images[0]], dates=[np.datetime64("2021-03-04")], lonlat=np.array([[12.5, 41.9]])),
        processor(images, dates=[dt.datetime(2021, 3, 4, 10, 30)], lonlat=[(12.5, 41.9)]),
    ]
    for variant in variants:
        for key in ("pixel_values", "timestep", "latlon"):
            torch.testing.assert_close(variant[key], reference[key])


def test_bands_are_picked_by_name_in_the_processors_order_with_their_statistics():
    """`bands` names the images' channels in the images' order; the output holds the processor's bands in ITS order."""
    model_bands = ["blue", "green", "red", "nir"]
    processor = ClayImageProcessor().select_bands(model_bands)
    images = raw_chips(bands=4)
    chip_order = ["red", "green", "blue", "nir"]  # red and blue swapped relative to the model
    outputs = processor(images, dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2, bands=chip_order)
    reordered = images[:, [chip_order.index(band) for band in model_bands]]
    mean = np.array([CLAY_V0_BAND_STATISTICS[b][0] for b in model_bands])[None, :, None, None]
    std = np.array([CLAY_V0_BAND_STATISTICS[b][1] for b in model_bands])[None, :, None, None]
    np.testing.assert_allclose(outputs["pixel_values"].numpy(), (reordered - mean) / std, rtol=1e-6, atol=1e-6)
    # 13-band chips (v0 order) for the 4-band model: its bands are picked out by name.
    full = raw_chips()
    picked = processor(full, dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2, bands=CLAY_V0_BAND_NAMES)
    expected = full[:, [CLAY_V0_BAND_NAMES.index(band) for band in model_bands]]
    np.testing.assert_allclose(picked["pixel_values"].numpy(), (expected - mean) / std, rtol=1e-6, atol=1e-6)


def test_wrong_or_lacking_bands_are_clear_errors():
    with pytest.raises(ValueError, match=r"images have 13 bands, but 4 are named: \['red', 'green', 'blue', 'nir'\]"):
        ClayImageProcessor()(
            raw_chips(), dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2, bands=["red", "green", "blue", "nir"]
        )
    with pytest.raises(ValueError, match=r"images lack band\(s\) \['blue'\] that this processor's model reads"):
        ClayImageProcessor().select_bands(["blue", "nir"])(
            raw_chips(bands=2), dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2, bands=["red", "nir"]
        )
    with pytest.raises(ValueError, match="unknown bands"):
        ClayImageProcessor().select_bands(["thermal"])


def test_nan_and_inf_are_reported_per_band():
    images = raw_chips(batch=1).astype(np.float32)
    images[0, 2, :2, :3] = np.nan  # 6 in red
    images[0, 12, 0, 0] = np.inf  # 1 in dem
    with pytest.raises(ValueError, match=r"7 missing pixels .* per band red: 6, dem: 1.*fill_value"):
        ClayImageProcessor()(images, dates="2020-01-01", lonlat=(0, 0))


def test_missing_pixels_can_be_filled_with_the_band_mean_or_a_value():
    images = raw_chips(batch=1).astype(np.float32)
    images[0, 2, 0, 0] = np.nan
    images[0, 5, 1, 1] = -9999
    filled = ClayImageProcessor(nodata=-9999, fill_value="mean")(images, dates="2020-01-01", lonlat=(0, 0))
    assert filled["pixel_values"][0, 2, 0, 0] == 0 and filled["pixel_values"][0, 5, 1, 1] == 0
    assert torch.isfinite(filled["pixel_values"]).all()
    valued = ClayImageProcessor()(images, dates="2020-01-01", lonlat=(0, 0), nodata=-9999, fill_value=0)
    torch.testing.assert_close(valued["pixel_values"][0, 2, 0, 0], torch.tensor(-MEAN[2] / STD[2], dtype=torch.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dates": ["2020-13-45", "2020-01-01"]}, "could not parse date '2020-13-45'"),
        ({"dates": ["yesterday", "2020-01-01"]}, "could not parse date 'yesterday'"),
        ({"lonlat": [(0, 0), (200, 10)]}, r"lon/lat out of range at item 1: \(200.0, 10.0\)"),
        ({"lonlat": [(0, 0), (10, -95)]}, "lon/lat out of range"),
        ({"dates": ["2020-01-01"]}, "mismatched batch lengths: 2 images, 1 dates, 2 lon/lat pairs"),
        ({"lonlat": [(0, 0)] * 3}, "mismatched batch lengths"),
        ({"dates": None}, "dates and lonlat are required"),
    ],
)
def test_bad_metadata_is_a_clear_error(kwargs, message):
    arguments = {"dates": ["2020-01-01", "2020-01-02"], "lonlat": [(0, 0), (1, 1)], **kwargs}
    with pytest.raises(ValueError, match=message):
        ClayImageProcessor()(raw_chips(), **arguments)


def test_bad_image_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="channels first"):
        ClayImageProcessor()(np.zeros((16, 16)), dates="2020-01-01", lonlat=(0, 0))
    with pytest.raises(ValueError, match="share one shape"):
        ClayImageProcessor()(
            [np.zeros((13, 8, 8)), np.zeros((13, 4, 4))], dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2
        )


def test_parse_date_forms():
    assert parse_date("2020-02-29") == dt.date(2020, 2, 29)
    assert parse_date("2020-02-29T12:00:00") == dt.date(2020, 2, 29)
    with pytest.raises(ValueError, match="NaT"):
        parse_date(np.datetime64("NaT"))


def test_save_and_load_round_trip(tmp_path):
    processor = ClayImageProcessor(band_names=["red", "nir"], nodata=0, fill_value="mean")
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists()
    loaded = ClayImageProcessor.from_pretrained(tmp_path)
    assert (loaded.band_names, loaded.image_mean, loaded.image_std) == (
        processor.band_names,
        processor.image_mean,
        processor.image_std,
    )
    assert (loaded.nodata, loaded.fill_value) == (0, "mean")
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is ClayImageProcessor and auto.band_names == ["red", "nir"]


def test_auto_image_processor_beside_a_model(tmp_path):
    ClayForMaskedImageModeling(small_config()).save_pretrained(tmp_path)
    ClayImageProcessor().save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is ClayImageProcessor


def test_device_normalisation_matches_the_processor_and_keeps_inputs_compact():
    images = raw_chips()
    processor = ClayImageProcessor()
    on_device = processor.normalize_tensor(torch.from_numpy(images))  # a uint16 tensor
    assert on_device.dtype == torch.float32
    reference = processor(images, dates=["2020-01-01"] * 2, lonlat=[(0, 0)] * 2)["pixel_values"]
    torch.testing.assert_close(on_device, reference, rtol=1e-5, atol=1e-5)
    subset = normalize_pixels(torch.from_numpy(images[:, :2]), MEAN[:2], STD[:2])
    torch.testing.assert_close(subset, on_device[:, :2])


def test_statistics_need_known_bands_or_explicit_values():
    with pytest.raises(ValueError, match="no v0 statistics for bands"):
        ClayImageProcessor(band_names=["thermal"])
    processor = ClayImageProcessor(band_names=["thermal"], image_mean=[300.0], image_std=[20.0])
    assert processor.band_statistics() == ([300.0], [20.0])
    with pytest.raises(ValueError, match="one entry per band"):
        ClayImageProcessor(band_names=["red", "nir"], image_mean=[1.0], image_std=[1.0, 2.0])


@pytest.mark.parametrize(
    ("lonlat", "message"),
    [
        (np.array([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]), r"got shape \(2, 3\) \(a \[longitudes, latitudes\] array"),
        (np.zeros((3, 2, 1)), r"got shape \(3, 2, 1\)"),
        ([0.0, 1.0, 2.0], r"got shape \(3,\)"),
        (np.zeros(6), r"got shape \(6,\)"),
        ([(0.0, 1.0), (2.0,)], "could not read"),
    ],
)
def test_lonlat_of_any_other_shape_than_b2_is_an_error(lonlat, message):
    """A (2, B) array of [lons, lats] (or a flat list) used to be reshaped into wrong pairs without a word."""
    with pytest.raises(ValueError, match=r"lonlat must be \(B, 2\) .*" + message):
        encode_lonlat(lonlat)
    with pytest.raises(ValueError, match=r"lonlat must be \(B, 2\)"):
        ClayImageProcessor()(raw_chips(batch=3), dates=["2020-01-01"] * 3, lonlat=lonlat)


def test_lonlat_pairs_and_a_single_pair_are_accepted():
    pairs = np.array([[12.5, 41.9], [-70.0, -33.4]])
    np.testing.assert_array_equal(encode_lonlat(pairs[0]), encode_lonlat(pairs[:1]))
    assert encode_lonlat(pairs).shape == (2, 2)


def test_a_pil_image_is_refused_with_the_way_to_the_clay_pipeline():
    """What `pipeline("image-feature-extraction")` hands over: an RGB picture, without date or place."""
    from PIL import Image

    with pytest.raises(ValueError, match=r"not PIL images.*clay-feature-extraction"):
        ClayImageProcessor()(Image.new("RGB", (32, 32)), dates="2020-01-01", lonlat=(0, 0))
