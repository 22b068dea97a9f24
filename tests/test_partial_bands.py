"""Partial inputs by band name: `from_pretrained(path, bands=[...])` and `ClayConfig.select_bands` (issue 18.4)."""

import logging

import pytest
import torch
from conftest import random_inputs, small_config
from transformers import AutoImageProcessor, AutoModel

from clay_hf import ClayConfig, ClayForMaskedImageModeling, ClayImageProcessor, ClayModel
from clay_hf.models.clay.image_processing_clay import load_image_processor

BANDS = ["red", "green", "blue", "nir"]  # the input's channel order, not the model's
DROPPED = ["rededge", "swir", "sar", "dem"]


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def log_records():
    """Messages of transformers' loggers (its loading report) and of ours."""
    handler = Records()
    loggers = [logging.getLogger("transformers"), logging.getLogger("clay_hf")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(params=["tiny", "test"])
def full_model_dir(request, tmp_path):
    """A saved 13-band model: the v0 `tiny` size, or the small test shape."""
    tiny = ClayConfig.from_preset("tiny", image_size=32, patch_size=8)
    config = tiny if request.param == "tiny" else small_config()
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(config).eval()
    model.save_pretrained(tmp_path)
    ClayImageProcessor().save_pretrained(tmp_path)
    return tmp_path, model


def test_select_bands_keeps_complete_groups_in_the_input_order():
    config = ClayConfig().select_bands(["nir", "red", "vv", "green", "blue", "dem"])
    assert config.band_names == ["nir", "red", "green", "blue", "dem"]  # vv's group (sar) lacks vh
    assert config.band_groups == [["rgb", [1, 2, 3]], ["nir", [0]], ["dem", [4]]]  # the model's group order
    assert (config.hidden_size, config.num_hidden_layers) == (768, 12)
    assert "sar (lacks vh)" in config.band_selection_summary()
    assert "_dropped_band_groups" not in config.to_json_string()


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        (["red", "thermal"], r"unknown bands \['thermal'\]"),
        (["red", "red"], "repeated bands"),
        (["red", "vv"], "complete no band group"),
    ],
)
def test_select_bands_errors(bands, message):
    with pytest.raises(ValueError, match=message):
        ClayConfig().select_bands(bands)


@pytest.mark.parametrize("model_class", [ClayModel, ClayForMaskedImageModeling, AutoModel])
def test_from_pretrained_with_bands_loads_the_kept_groups_for_any_size(full_model_dir, model_class, log_records):
    path, full = full_model_dir
    partial = model_class.from_pretrained(path, bands=BANDS).eval()
    encoder = partial if isinstance(partial, ClayModel) else partial.clay
    assert partial.config.band_names == BANDS
    assert partial.config.group_names == ["rgb", "nir"]
    assert partial.config.hidden_size == full.config.hidden_size
    for name in ("rgb", "nir"):
        for key, value in encoder.embeddings.patch_embeddings.groups[name].state_dict().items():
            torch.testing.assert_close(value, full.clay.embeddings.patch_embeddings.groups[name].state_dict()[key])
    torch.testing.assert_close(encoder.encoder.layers[0].mlp.fc1.weight, full.clay.encoder.layers[0].mlp.fc1.weight)
    if isinstance(partial, ClayForMaskedImageModeling):
        torch.testing.assert_close(partial.decoder.to_pixels["nir"].weight, full.decoder.to_pixels["nir"].weight)

    # The same chip, given in the partial model's band order, gives the same rgb+nir tokens as the full model.
    inputs = random_inputs(full.config)
    partial_inputs = {**inputs, "pixel_values": inputs["pixel_values"][:, [2, 1, 0, 6]]}
    with torch.no_grad():
        tokens = encoder(**partial_inputs).last_hidden_state
    assert tokens.shape[1] == 2 * 16 + 2

    # One line names the dropped groups; no per-key report of the weights dropped on purpose.
    ours = [message for message in log_records if "dropped the groups" in message]
    assert len(ours) == 1 and all(name in ours[0] for name in DROPPED)
    assert not any("UNEXPECTED" in message or "unexpected" in message.lower() for message in log_records)


def test_config_route_and_given_config_route(full_model_dir, log_records):
    path, _ = full_model_dir
    config = ClayConfig.from_pretrained(path, bands=BANDS)
    assert config.band_names == BANDS and config.hidden_size == ClayConfig.from_pretrained(path).hidden_size
    model = ClayModel.from_pretrained(path, config=config)
    again = ClayModel.from_pretrained(path, config=ClayConfig.from_pretrained(path), bands=BANDS)
    assert model.config.band_groups == again.config.band_groups == [["rgb", [0, 1, 2]], ["nir", [3]]]
    assert not any("UNEXPECTED" in message for message in log_records)


def test_saved_partial_model_reloads_without_notes(full_model_dir, tmp_path, log_records):
    path, _ = full_model_dir
    partial = ClayForMaskedImageModeling.from_pretrained(path, bands=BANDS)
    partial.save_pretrained(tmp_path / "partial")
    log_records.clear()
    reloaded = ClayForMaskedImageModeling.from_pretrained(tmp_path / "partial")
    assert reloaded.config.band_names == BANDS and reloaded.config.band_selection_summary() is None
    assert not any("dropped the groups" in message for message in log_records)


def test_the_processor_follows_the_partial_model(full_model_dir):
    path, _ = full_model_dir
    model = ClayModel.from_pretrained(path, bands=BANDS).eval()
    processor = load_image_processor(path, model.config.band_names)
    assert processor.band_names == BANDS
    full_processor = AutoImageProcessor.from_pretrained(path)
    assert processor.band_statistics() == full_processor.band_statistics(BANDS)
    chip = torch.randint(0, 10000, (4, 32, 32))
    inputs = processor(chip, dates="2023-06-01", lonlat=(12.49, 41.89))
    assert model(**inputs).pooler_output.shape == (1, model.config.hidden_size)
