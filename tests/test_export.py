"""ONNX export of the encoder (clay_hf.export, scripts/export_onnx.py): ONNX Runtime equals PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest
import torch
from conftest import random_inputs, small_config

from clay_hf import ClayForMaskedImageModeling, ClayImageProcessor, ClayModel
from clay_hf.commands.export_onnx import main as export_main
from clay_hf.export import OnnxEncoder


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


def test_embed_with_the_onnx_encoder_matches_pytorch(exported, tmp_path):
    from clay_hf.chipping import write_synthetic_chips
    from clay_hf.commands.embed import main as embed_main
    from clay_hf.inference.embeddings import embed_to_geoparquet

    write_synthetic_chips(tmp_path / "chips", 3, size=32, seed=5)
    output = tmp_path / "onnx.parquet"
    assert (
        embed_main(["--onnx", str(exported["path"]), "--data_dir", str(tmp_path / "chips"), "--output", str(output)])
        == 0
    )
    processor = OnnxEncoder(exported["path"]).processor
    reference = embed_to_geoparquet(
        exported["model"], processor, tmp_path / "chips", tmp_path / "torch.parquet", progress=False
    )
    actual, expected = pq.read_table(output), pq.read_table(reference.output)
    assert actual.column("source_url").to_pylist() == expected.column("source_url").to_pylist()
    np.testing.assert_allclose(
        np.stack(actual.column("embeddings").to_numpy(zero_copy_only=False)),
        np.stack(expected.column("embeddings").to_numpy(zero_copy_only=False)),
        rtol=0,
        atol=1e-4,
    )
    assert json.loads(actual.schema.metadata[b"clay:embeddings"])["model_name_or_path"] == str(exported["path"])
