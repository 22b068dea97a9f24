import json

import pytest

from clay_hf import CLAY_V0_BAND_GROUPS, ClayConfig


def test_defaults_are_the_released_clay_small():
    config = ClayConfig()
    assert (config.image_size, config.patch_size, config.mask_ratio) == (512, 32, 0.75)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (
        768,
        12,
        12,
        64,
    )
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        512,
        8,
        8,
    )
    assert config.num_channels == 13
    assert config.group_names == ["rgb", "rededge", "nir", "swir", "sar", "dem"]


def test_dict_band_groups_keep_insertion_order():
    config = ClayConfig(band_groups={"sar": (10, 11), "rgb": (2, 1, 0), "dem": 12, "rest": [3, 4, 5, 6, 7, 8, 9]})
    assert config.band_groups == [["sar", [10, 11]], ["rgb", [2, 1, 0]], ["dem", [12]], ["rest", [3, 4, 5, 6, 7, 8, 9]]]


def test_json_round_trip_does_not_reorder_groups(tmp_path):
    groups = [["swir", [8, 9]], ["rgb", [2, 1, 0]]]
    ClayConfig(band_groups=groups).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["band_groups"] == groups
    assert ClayConfig.from_pretrained(tmp_path).band_groups == groups


def test_default_groups_are_not_shared_between_configs():
    config = ClayConfig()
    config.band_groups[0][1].append(99)
    assert ClayConfig().band_groups == CLAY_V0_BAND_GROUPS
    assert CLAY_V0_BAND_GROUPS[0] == ["rgb", [2, 1, 0]]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": 500}, "multiple of patch_size"),
        ({"band_groups": [["rgb", [2, 1, 13]]]}, "out of range"),
        ({"band_groups": [["a", [0, 1]], ["b", [1]]]}, "both group 'a' and group 'b'"),
        ({"band_groups": [["a", [0]], ["a", [1]]]}, "names must be unique"),
        ({"band_groups": [["a", []]]}, "has no bands"),
        ({"band_groups": [["a"]]}, "pair"),
        ({"hidden_size": 100}, "multiple of 8"),
        ({"decoder_hidden_size": 8}, "at least 16"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"band_names": ["a", "a"], "band_groups": [["g", [0]]]}, "band_names must be unique"),
    ],
)
def test_invalid_configs_are_rejected_with_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        ClayConfig(**fields)


def test_presets_match_the_v0_factories():
    assert ClayConfig.from_preset("small").to_dict() == ClayConfig().to_dict()
    medium = ClayConfig.from_preset("medium", image_size=256)
    assert (medium.hidden_size, medium.num_hidden_layers, medium.image_size) == (1024, 24, 256)
    with pytest.raises(ValueError, match="Unknown Clay preset"):
        ClayConfig.from_preset("huge")


def test_from_pretrained_kwargs_are_normalised_like_constructor_arguments(tmp_path):
    ClayConfig(image_size=32, patch_size=8).save_pretrained(tmp_path)
    config = ClayConfig.from_pretrained(tmp_path, band_groups={"rgb": [2, 1, 0], "nir": [6]}, mask_ratio=0.5)
    assert config.band_groups == [["rgb", [2, 1, 0]], ["nir", [6]]]
    assert (config.mask_ratio, config.image_size) == (0.5, 32)
    config, unused = ClayConfig.from_pretrained(tmp_path, band_groups={"dem": 12}, foo=1, return_unused_kwargs=True)
    assert config.band_groups == [["dem", [12]]] and unused == {"foo": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"band_groups": {"rgb": [2, 1, 13]}}, "out of range"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"image_size": 500}, "multiple of patch_size"),
        ({"band_groups": [["a"]]}, "pair"),
    ],
)
def test_from_pretrained_kwargs_are_validated_like_constructor_arguments(tmp_path, fields, message):
    ClayConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        ClayConfig.from_pretrained(tmp_path, **fields)


def test_assigned_band_groups_are_stored_as_ordered_pairs():
    config = ClayConfig()
    config.band_groups = {"sar": (10, 11), "rgb": (2, 1, 0)}
    assert config.band_groups == [["sar", [10, 11]], ["rgb", [2, 1, 0]]]
