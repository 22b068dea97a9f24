"""The converter maps every tensor of the original layout and refuses anything that does not fit."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_CKPT
from safetensors import safe_open
from transformers import AutoImageProcessor

from clay_hf import (
    CLAY_V0_BAND_NAMES,
    ClayConfig,
    ClayForMaskedImageModeling,
    ClayImageProcessor,
    convert_original_checkpoint,
)
from clay_hf.commands.convert_checkpoint import main as convert_main
from clay_hf.hub.publish import stage_repository
from clay_hf.models.clay.convert_clay_original_checkpoint import (
    CONVERSION_RECORD_NAME,
    CheckpointConversionError,
    conversion_record,
    convert_state_dict,
    derive_config,
    load_original_checkpoint,
    save_converted,
)
from clay_hf.utils.outputs import lock_path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_KEYS = Path(__file__).parent / "fixtures" / "clay_v0_small_state_dict_keys.tsv"
HEADS = {"num_attention_heads": 4, "decoder_num_attention_heads": 2}


def write_checkpoint(path, checkpoint):
    torch.save(checkpoint, path)
    return path


@pytest.fixture()
def original():
    return torch.load(TINY_CKPT, weights_only=True)


def test_every_released_key_maps_onto_clay_small():
    """All 267 tensors of the released v0.1 file map, with their shapes, onto ClayForMaskedImageModeling()."""
    rows = [line.split("\t") for line in REFERENCE_KEYS.read_text().splitlines()[1:]]
    assert len(rows) == 267
    fake = {key: torch.empty(eval(shape)) for key, shape, _ in rows}  # shapes are literal lists
    converted = convert_state_dict(fake)
    expected = ClayForMaskedImageModeling(ClayConfig()).state_dict()
    assert set(converted) == set(expected)
    for key, tensor in converted.items():
        assert tensor.shape == expected[key].shape, key


def test_config_is_derived_from_hyper_parameters_and_shapes(original):
    config = derive_config(original, **HEADS)
    assert (config.image_size, config.patch_size, config.mask_ratio) == (64, 16, 0.75)
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim, config.intermediate_size) == (64, 2, 16, 128)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_head_dim) == (32, 1, 16)
    assert config.group_names == ["rgb", "rededge", "nir", "swir", "sar", "dem"]


def test_custom_size_without_heads_says_what_it_cannot_derive():
    with pytest.raises(CheckpointConversionError, match=r"cannot derive num_attention_heads.*heads × head_dim = 64"):
        convert_original_checkpoint(TINY_CKPT)


def test_preset_model_size_gives_the_heads(original, tmp_path):
    original["hyper_parameters"]["model_size"] = "tiny"  # tiny has 4 encoder heads and 2 decoder heads
    model = convert_original_checkpoint(write_checkpoint(tmp_path / "preset.ckpt", original))
    assert (model.config.num_attention_heads, model.config.head_dim) == (4, 16)
    assert (model.config.decoder_num_attention_heads, model.config.decoder_head_dim) == (2, 16)


def test_missing_tensor_is_named(original, tmp_path):
    del original["state_dict"]["model.decoder.transformer.layers.0.1.net.4.bias"]
    path = write_checkpoint(tmp_path / "missing.ckpt", original)
    with pytest.raises(
        CheckpointConversionError, match=r"missing tensors: decoder\.transformer\.layers\.0\.mlp\.fc2\.bias"
    ):
        convert_original_checkpoint(path, **HEADS)


def test_unexpected_tensor_is_named(original, tmp_path):
    original["state_dict"]["model.encoder.extra_head.weight"] = torch.zeros(3)
    path = write_checkpoint(tmp_path / "extra.ckpt", original)
    with pytest.raises(CheckpointConversionError, match=r"unexpected tensor model\.encoder\.extra_head\.weight"):
        convert_original_checkpoint(path, **HEADS)


def test_misshapen_tensor_is_named(original, tmp_path):
    original["state_dict"]["model.encoder.transformer.layers.1.0.to_out.0.weight"] = torch.zeros(64, 60)
    path = write_checkpoint(tmp_path / "shape.ckpt", original)
    with pytest.raises(
        CheckpointConversionError,
        match=r"misshapen tensors: clay\.encoder\.layers\.1\.attention\.proj\.weight: checkpoint \(64, 60\), model \(64, 64\)",
    ):
        convert_original_checkpoint(path, **HEADS)


class NotATensor:
    """A class that weights_only unpickling must refuse."""


def test_pickle_with_arbitrary_objects_is_refused_by_default(original, tmp_path):
    original["callbacks"] = NotATensor()
    path = write_checkpoint(tmp_path / "pickle.ckpt", original)
    with pytest.raises(CheckpointConversionError, match="refused to unpickle it with weights_only=True"):
        load_original_checkpoint(path)
    model = convert_original_checkpoint(path, allow_unsafe_pickle=True, **HEADS)
    assert model.num_parameters() == 401_728


def test_not_a_lightning_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "plain.ckpt", {"weights": torch.zeros(2)})
    with pytest.raises(CheckpointConversionError, match="no 'state_dict' entry"):
        convert_original_checkpoint(path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointConversionError, match=r"garbage\.ckpt: not a readable PyTorch checkpoint"):
        convert_original_checkpoint(garbage)


def test_script_writes_a_folder_in_our_names(tmp_path, expected):
    output = tmp_path / "converted"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), "--checkpoint", str(TINY_CKPT),
         "--output_dir", str(output), "--num_attention_heads", "4", "--decoder_num_attention_heads", "2"],
        check=True,
    )  # fmt: skip
    with safe_open(output / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "clay.encoder.layers.0.attention.qkv.weight" in keys
    assert not any(key.startswith("model.") or "to_qkv" in key for key in keys)
    model = ClayForMaskedImageModeling.from_pretrained(output).eval()
    with torch.no_grad():
        hidden = model.clay(expected["pixels"], expected["timestep"], expected["latlon"]).last_hidden_state
    torch.testing.assert_close(hidden, expected["encoder_last_hidden_state"], atol=1e-5, rtol=1e-5)
    converted_folder_publishes(output, tmp_path)


def converted_folder_publishes(output, tmp_path):
    """The converted folder has the v0 processor for its bands and a conversion record, so it publishes."""
    processor = AutoImageProcessor.from_pretrained(output)
    assert isinstance(processor, ClayImageProcessor) and processor.band_names == list(CLAY_V0_BAND_NAMES)
    assert processor.image_mean == ClayImageProcessor(band_names=CLAY_V0_BAND_NAMES).image_mean
    record = json.loads((output / CONVERSION_RECORD_NAME).read_text())
    assert record["source_checkpoint"] == "clay_v0_tiny.ckpt"
    assert record["source_sha256"] == hashlib.sha256(TINY_CKPT.read_bytes()).hexdigest()
    assert record["v0_1_architecture"] is False  # the fixture is a tiny custom model
    staged = stage_repository(output, tmp_path / "staging", "made-with-clay/Clay")  # what publish --dry_run does
    text = (staged.folder / "README.md").read_text()
    assert "converted from the original Clay checkpoint `clay_v0_tiny.ckpt`" in text and "0.46" not in text


def test_converter_keeps_a_partial_band_set_in_the_processor(original, tmp_path):
    """The processor saved beside converted weights has the checkpoint's bands, in its order."""
    bands = ["red", "green", "blue", "nir"]
    original["hyper_parameters"]["band_groups"] = {"rgb": [0, 1, 2], "nir": [3]}
    for key in list(original["state_dict"]):
        if any(f"patch_embedding.{group}." in key or f"embed_to_pixels.{group}." in key
               for group in ("rededge", "swir", "sar", "dem")):  # fmt: skip
            del original["state_dict"][key]
    config = derive_config(original, band_names=bands, **HEADS)
    path = write_checkpoint(tmp_path / "partial.ckpt", original)
    model = convert_original_checkpoint(path, config=config)
    folder = save_converted(model, tmp_path / "out", conversion_record(path, model.config))
    assert AutoImageProcessor.from_pretrained(folder).band_names == bands


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "no/such.ckpt"], "error: no/such.ckpt: no such file."),
        ([], "error: {ckpt}: cannot derive num_attention_heads"),
        (["--checkpoint", "{garbage}"], "error: {garbage}: not a readable PyTorch checkpoint"),
        (["--config", "{garbage}", "--num_attention_heads", "4"], "error: {garbage}: not a readable Clay config.json"),
    ],
)
def test_conversion_mistakes_are_one_line_not_a_traceback(tmp_path, capsys, args, message):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    names = {"ckpt": str(TINY_CKPT), "garbage": str(garbage)}
    argv = ["--checkpoint", str(TINY_CKPT), "--output_dir", str(tmp_path / "out")]
    argv += [arg.format(**names) for arg in args]
    assert convert_main(argv) == 1  # returned, not raised: no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(**names)), err
    assert not (tmp_path / "out").exists() and not lock_path(tmp_path / "out").exists()
