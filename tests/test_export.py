"""ONNX export of the encoder (clay_hf.export, scripts/export_onnx.py): ONNX Runtime equals PyTorch."""

from __future__ import annotations

import onnxruntime
import pytest
import torch
from conftest import random_inputs, small_config

from clay_hf import ClayForMaskedImageModeling, ClayImageProcessor, ClayModel
from clay_hf.export import OnnxEncoder
from clay_hf.export.cli import main as export_main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small model exported by the command-line entry point (which checks batch 1 and 3 itself)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config()).save_pretrained(folder / "model")
    ClayImageProcessor(fill_value="mean").save_pretrained(folder / "model")
    assert export_main(["--model_name_or_path", str(folder / "model"), "--output", str(folder / "encoder.onnx")]) == 0
    return {"model": ClayModel.from_pretrained(folder / "model").eval(), "path": folder / "encoder.onnx"}


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("size", [32, 48, 24])  # the traced size, larger, smaller: the image size is dynamic
def test_onnx_runtime_matches_pytorch(exported, batch_size, size):
    inputs = random_inputs(small_config(), batch_size, size=size, seed=batch_size)
    with torch.no_grad():
        expected = exported["model"](**inputs)
    actual = OnnxEncoder(exported["path"])(**inputs)
    assert actual.last_hidden_state.shape == (batch_size, 6 * (size // 8) ** 2 + 2, 32)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-4)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, rtol=0, atol=1e-4)


def test_graph_names_dynamic_axes_and_metadata(exported):
    session = onnxruntime.InferenceSession(str(exported["path"]), providers=["CPUExecutionProvider"])
    inputs = {node.name: node.shape for node in session.get_inputs()}
    assert list(inputs) == ["pixel_values", "timestep", "latlon"]
    assert [node.name for node in session.get_outputs()] == ["last_hidden_state", "pooler_output"]
    batch, channels, height, width = inputs["pixel_values"]
    assert isinstance(batch, str) and isinstance(height, str) and isinstance(width, str) and channels == 13
    encoder = OnnxEncoder(exported["path"])
    assert encoder.config.to_dict() == exported["model"].config.to_dict()
    assert encoder.processor.fill_value == "mean"  # the saved processor travels in the file


def test_a_file_without_clay_metadata_is_a_clear_error(tmp_path):
    import onnx

    tensor = onnx.helper.make_tensor_value_info
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([identity], "other", [tensor("x", 1, [1])], [tensor("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match=r"other\.onnx: has no 'clay:config' metadata"):
        OnnxEncoder(tmp_path / "other.onnx")
