"""The Clay encoder as ONNX, and an encoder that runs the ONNX file with ONNX Runtime.

The graph takes `pixel_values` (B, C, H, W) float32, `timestep` (B, 3), `latlon` (B, 2) and gives
`last_hidden_state` (B, G·h·w + 2, D) and `pooler_output` (B, D). Batch size and image size (H, W multiples of the
patch size) are dynamic: torch.export traces the sin-cos position encoding as operations on the input's grid.
The file carries the model's config and image processor (metadata `clay:config`, `clay:image_processor`), so it
embeds chips on its own. It is written under the fault contract of `clay_hf.utils.outputs`: aside, checked by
`onnx.checker` with its metadata read back, then renamed into place; `clay-export-onnx` holds `OUTPUT.lock`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.utils.logging import get_logger

from ..models.clay.configuration_clay import ClayConfig
from ..models.clay.image_processing_clay import ClayImageProcessor
from ..models.clay.modeling_clay import ClayModel, ClayModelOutput
from ..utils.errors import IntegrityError, OutputError
from ..utils.outputs import atomic_file, disk_full, make_folder, partial_path, writing

logger = get_logger(__name__)

INPUT_NAMES = ("pixel_values", "timestep", "latlon")
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")
CONFIG_METADATA = "clay:config"
PROCESSOR_METADATA = "clay:image_processor"
#: Weights above this size go to an external data file `NAME.onnx.data` beside the graph (as torch's exporter does:
#: a protobuf holds at most 2 GiB).
EXTERNAL_DATA_BYTES = 3 << 29  # 1.5 GiB


class ClayEncoderForExport(nn.Module):
    """ClayModel's unmasked forward with tensor outputs only: (last_hidden_state, pooler_output)."""

    def __init__(self, model: ClayModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, timestep: torch.Tensor, latlon: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(pixel_values, timestep=timestep, latlon=latlon, return_dict=True)
        return outputs.last_hidden_state, outputs.pooler_output


def sample_inputs(config: ClayConfig, batch_size: int = 2, patches: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of `patches` × `patches` patches (export traces shapes, not values)."""
    generator = torch.Generator().manual_seed(seed)
    size = patches * config.patch_size
    return {
        "pixel_values": torch.randn(batch_size, config.num_channels, size, size, generator=generator),
        "timestep": torch.randn(batch_size, 3, generator=generator),
        "latlon": torch.randn(batch_size, 2, generator=generator),
    }


def export_onnx(
    model: ClayModel,
    output: str | PathLike,
    processor: ClayImageProcessor | None = None,
    dynamic_image_size: bool = True,
    opset_version: int | None = None,
) -> Path:
    """Export the encoder to `output` (dynamic batch; dynamic image size unless told otherwise, when the graph is
    traced at `config.image_size`). The model's config and `processor` are stored in the file's metadata.

    The file is written aside and renamed into place once `onnx.checker` accepts it and its metadata reads back
    ([`atomic_file`]): a full disk is an OutputError naming `output`, and an earlier file there stays whole. Large
    weights go to `NAME.data`, written and checked with the graph before either is renamed (the data first).
    """
    output = Path(output)
    make_folder(output.parent)
    config = model.config
    model = model.float().eval()
    batch = torch.export.Dim("batch", min=1)
    if dynamic_image_size:
        inputs = sample_inputs(config)
        rows, cols = torch.export.Dim("patch_rows", min=1), torch.export.Dim("patch_cols", min=1)
        image = {0: batch, 2: config.patch_size * rows, 3: config.patch_size * cols}
    else:
        inputs = sample_inputs(config, patches=config.image_size // config.patch_size)
        image = {0: batch}
    dynamic_shapes = {"pixel_values": image, "timestep": {0: batch}, "latlon": {0: batch}}
    with _encoding_in_graph(model), warnings.catch_warnings():
        # A deprecation inside torch's own pytree code, and a note on naming axes; neither concerns the graph.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
        program = torch.onnx.export(
            ClayEncoderForExport(model).eval(),
            tuple(inputs[name] for name in INPUT_NAMES),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[CONFIG_METADATA] = config.to_json_string(use_diff=False)
    if processor is not None:
        program.model.metadata_props[PROCESSOR_METADATA] = json.dumps(processor.to_dict())
    for leftover in (partial_path(output), staging_folder(output)):  # what a killed run left
        _discard(leftover)
    if _weights_bytes(program) > EXTERNAL_DATA_BYTES:
        _write_with_external_data(program, output)
    else:
        with atomic_file(output, verify=check_onnx_file) as temporary:
            _save_program(program, temporary, output.name)
        _discard(external_data_path(output))  # an earlier large export's weights: this graph holds its own
    return output


def _weights_bytes(program: torch.onnx.ONNXProgram) -> int:
    return sum(value.const_value.nbytes for value in program.model.graph.initializers.values())


def _save_program(program: torch.onnx.ONNXProgram, path: Path, name: str) -> None:
    """Save the exported graph to `path`; weights over `EXTERNAL_DATA_BYTES` go to `NAME.data` beside it, named
    after the final `name` (the graph records that name, relative to its folder)."""
    if _weights_bytes(program) <= EXTERNAL_DATA_BYTES:
        program.save(str(path), external_data=False)
        return
    import onnx_ir

    onnx_ir.save(program.model, path, external_data=f"{name}.data")


def _write_with_external_data(program: torch.onnx.ONNXProgram, output: Path) -> None:
    """Write the graph and its weights (`NAME.data`) into a folder beside `output` ([`staging_folder`]) under their
    final names, so that the graph names its final data file and the check reads the pair; then rename the data into
    place, and the graph after it. A failed check or a full disk leaves neither new file (an earlier pair stays
    whole); only a kill between the two renames leaves the new data beside the earlier graph, until the rerun."""
    staging = staging_folder(output)
    with writing(output, staging):
        staging.mkdir()
        _save_program(program, staging / output.name, output.name)
        try:
            check_onnx_file(staging / output.name)
        except Exception as error:
            full = "; No space left on device" if disk_full(output.parent) else ""
            raise OutputError(output, f"it did not read back complete ({error}){full}") from error
        for file in (external_data_path(output), output):  # the data first: a graph in place finds its data
            with atomic_file(file) as temporary:
                os.replace(staging / file.name, temporary)
        staging.rmdir()


def staging_folder(output: Path) -> Path:
    """Where a graph with external data is written and checked with its data: `.NAME.staging.partial/`."""
    return partial_path(output.with_name(f"{output.name}.staging"))


def external_data_path(output: str | PathLike) -> Path:
    """The file that holds the weights of a large exported graph: `NAME.data` beside it."""
    output = Path(output)
    return output.with_name(f"{output.name}.data")


def check_onnx_file(path: Path) -> None:
    """Refuse an ONNX file that `onnx.checker` rejects, whose `clay:config` metadata does not read back, or whose
    external data file is shorter than the weights the graph places in it."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    if CONFIG_METADATA not in {prop.key for prop in model.metadata_props}:
        raise IntegrityError(f"{path}: has no '{CONFIG_METADATA}' metadata")
    for tensor in filter(uses_external_data, model.graph.initializer):
        info = ExternalDataInfo(tensor)
        data = path.parent / info.location
        if info.length is None or data.stat().st_size < (info.offset or 0) + info.length:
            raise IntegrityError(f"{data}: cut short (weight {tensor.name} ends past its end)")


def _discard(path: Path) -> None:
    """Remove a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _encoding_in_graph(model: ClayModel) -> Iterator[None]:
    """While exporting, build the position-band encoding from the input's grid in the graph: its per-grid cache
    cannot key on the symbolic sizes of a dynamic shape."""
    encoding = model.embeddings.position_band_encoding
    encoding.forward = lambda height, width, device, dtype: encoding._build(height, width, device).to(dtype)
    try:
        yield
    finally:
        del encoding.forward  # back to the class's cached forward
        encoding._cache.clear()


class OnnxEncoder:
    """Runs an exported encoder with ONNX Runtime behind ClayModel's call: `encoder(pixel_values, timestep=…,
    latlon=…)` → ClayModelOutput (last_hidden_state, pooler_output) on the CPU, float32."""

    def __init__(self, path: str | PathLike, providers: list[str] | None = None) -> None:
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file.")
        self.session = onnxruntime.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_METADATA not in metadata:
            raise ValueError(f"{self.path}: has no '{CONFIG_METADATA}' metadata; export it with export_onnx.py.")
        self.config = ClayConfig.from_dict(json.loads(metadata[CONFIG_METADATA]))
        processor = metadata.get(PROCESSOR_METADATA)
        self.processor = (
            ClayImageProcessor.from_dict(json.loads(processor))
            if processor
            else ClayImageProcessor(band_names=self.config.band_names)  # the v0 statistics of its bands
        )
        self.device = torch.device("cpu")
        self.name_or_path = str(self.path)

    def __call__(self, pixel_values: torch.Tensor, timestep: torch.Tensor, latlon: torch.Tensor) -> ClayModelOutput:
        feeds = {
            name: np.ascontiguousarray(tensor.detach().cpu().float().numpy())
            for name, tensor in zip(INPUT_NAMES, (pixel_values, timestep, latlon), strict=True)
        }
        last_hidden_state, pooler_output = self.session.run(list(OUTPUT_NAMES), feeds)
        return ClayModelOutput(
            last_hidden_state=torch.from_numpy(last_hidden_state), pooler_output=torch.from_numpy(pooler_output)
        )

    def eval(self) -> OnnxEncoder:
        return self


def max_difference(model: ClayModel, encoder: OnnxEncoder, batch_size: int, patches: int, seed: int = 0) -> float:
    """The largest absolute difference between PyTorch's and ONNX Runtime's outputs on random inputs."""
    inputs = sample_inputs(model.config, batch_size, patches, seed)
    with torch.no_grad():
        expected = model(**inputs)
    actual = encoder(**inputs)
    return max(float((getattr(expected, name) - getattr(actual, name)).abs().max()) for name in OUTPUT_NAMES)


__all__ = ["ClayEncoderForExport", "OnnxEncoder", "check_onnx_file", "export_onnx", "max_difference", "sample_inputs"]
