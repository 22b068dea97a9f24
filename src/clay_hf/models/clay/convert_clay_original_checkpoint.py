"""Convert an original Clay v0 Lightning checkpoint (`*.ckpt`) into a [`ClayForMaskedImageModeling`].

Every tensor of the original `state_dict` is renamed to our layout; a missing, unexpected or misshapen tensor is
an error that names it. The file is opened with `torch.load(weights_only=True)`, which refuses arbitrary pickled
code; `allow_unsafe_pickle=True` is the only way past that, for files from a source you trust.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from ...utils.errors import ClayUserError
from .configuration_clay import CLAY_V0_PRESETS, ClayConfig, normalize_band_groups
from .image_processing_clay import ClayImageProcessor
from .modeling_clay import ClayForMaskedImageModeling

ORIGINAL_PREFIX = "model."
#: Written beside converted weights: which file they came from. The model card states v0 facts only with it.
CONVERSION_RECORD_NAME = "clay_conversion.json"
#: The file name of the released Clay v0.1 checkpoint.
V0_1_RELEASE_FILE = "Clay_v0.1_epoch-24_val-loss-0.46.ckpt"
#: The config fields that make a model the released v0.1 architecture (`ClayConfig()`, the `small` preset).
_ARCHITECTURE_FIELDS = (
    "image_size", "patch_size", "band_names", "band_groups", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "head_dim", "intermediate_size", "decoder_hidden_size", "decoder_num_hidden_layers",
    "decoder_num_attention_heads", "decoder_head_dim", "decoder_intermediate_size",
)  # fmt: skip

# (original pattern, our name); `{i}` is a layer index, `{g}` a band group name.
_RENAMES: list[tuple[str, str]] = [
    (r"encoder\.latlon_embedding\.(weight|bias)", r"clay.embeddings.latlon_embedding.\1"),
    (r"encoder\.time_embedding\.(weight|bias)", r"clay.embeddings.time_embedding.\1"),
    (
        r"encoder\.patch_embedding\.(\w+)\.proj\.(weight|bias)",
        r"clay.embeddings.patch_embeddings.groups.\1.projection.\2",
    ),
    (
        r"encoder\.patch_embedding\.(\w+)\.norm\.(weight|bias)",
        r"clay.embeddings.patch_embeddings.groups.\1.layernorm.\2",
    ),
    (r"encoder\.transformer\.norm\.(weight|bias)", r"clay.encoder.layernorm.\1"),
    (r"encoder\.transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"clay.encoder.layers.\1.layernorm_before.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.0\.to_qkv\.weight", r"clay.encoder.layers.\1.attention.qkv.weight"),
    (r"encoder\.transformer\.layers\.(\d+)\.0\.to_out\.0\.(weight|bias)", r"clay.encoder.layers.\1.attention.proj.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.1\.net\.0\.(weight|bias)", r"clay.encoder.layers.\1.layernorm_after.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.1\.net\.1\.(weight|bias)", r"clay.encoder.layers.\1.mlp.fc1.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.1\.net\.4\.(weight|bias)", r"clay.encoder.layers.\1.mlp.fc2.\2"),
    (r"decoder\.mask_patch", r"decoder.mask_token"),
    (r"decoder\.enc_to_dec\.(weight|bias)", r"decoder.encoder_to_decoder.\1"),
    (r"decoder\.transformer\.norm\.(weight|bias)", r"decoder.transformer.layernorm.\1"),
    (
        r"decoder\.transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)",
        r"decoder.transformer.layers.\1.layernorm_before.\2",
    ),
    (r"decoder\.transformer\.layers\.(\d+)\.0\.to_qkv\.weight", r"decoder.transformer.layers.\1.attention.qkv.weight"),
    (
        r"decoder\.transformer\.layers\.(\d+)\.0\.to_out\.0\.(weight|bias)",
        r"decoder.transformer.layers.\1.attention.proj.\2",
    ),
    (
        r"decoder\.transformer\.layers\.(\d+)\.1\.net\.0\.(weight|bias)",
        r"decoder.transformer.layers.\1.layernorm_after.\2",
    ),
    (r"decoder\.transformer\.layers\.(\d+)\.1\.net\.1\.(weight|bias)", r"decoder.transformer.layers.\1.mlp.fc1.\2"),
    (r"decoder\.transformer\.layers\.(\d+)\.1\.net\.4\.(weight|bias)", r"decoder.transformer.layers.\1.mlp.fc2.\2"),
    (r"decoder\.embed_to_pixels\.(\w+)\.(weight|bias)", r"decoder.to_pixels.\1.\2"),
]
_COMPILED_RENAMES = [(re.compile(rf"^{pattern}$"), target) for pattern, target in _RENAMES]


class CheckpointConversionError(ClayUserError, ValueError):
    """The original checkpoint does not fit the Clay v0 layout."""


def load_original_checkpoint(checkpoint_path: str | PathLike, allow_unsafe_pickle: bool = False) -> dict[str, Any]:
    """Open a Lightning checkpoint safely (`weights_only=True`) and return its dict."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):
            raise CheckpointConversionError(
                f"{checkpoint_path}: not a readable PyTorch checkpoint ({_summary_line(error)})."
            ) from error
        raise CheckpointConversionError(
            f"{checkpoint_path}: refused to unpickle it with weights_only=True, because it holds objects other "
            "than tensors, dicts, lists, strings and numbers. Arbitrary pickled code can run on load; if you "
            f"trust the file, pass allow_unsafe_pickle=True (--allow_unsafe_pickle). Details: {_first_line(error)}"
        ) from error
    except Exception as error:  # torch raises RuntimeError and others for non-checkpoint files
        raise CheckpointConversionError(
            f"{checkpoint_path}: not a readable PyTorch checkpoint ({_summary_line(error)})."
        ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointConversionError(f"{checkpoint_path}: not a Lightning checkpoint (no 'state_dict' entry).")
    return dict(checkpoint)


def _summary_line(error: Exception) -> str:
    """The first line of a library's (often multi-line) message."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if "Unsupported global" in line]
    return lines[0].strip() if lines else str(error).splitlines()[0]


def rename_original_key(key: str) -> str:
    """Map one original key (without the `model.` prefix) to our name."""
    for pattern, target in _COMPILED_RENAMES:
        if pattern.match(key):
            return pattern.sub(target, key)
    raise CheckpointConversionError(f"unexpected tensor {ORIGINAL_PREFIX}{key}: no Clay v0 parameter has that name.")


def convert_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole original `state_dict` (keys prefixed `model.`) to ours."""
    converted = {}
    for key, tensor in original.items():
        if not key.startswith(ORIGINAL_PREFIX):
            raise CheckpointConversionError(f"unexpected tensor {key}: every Clay v0 key starts with 'model.'.")
        converted[rename_original_key(key[len(ORIGINAL_PREFIX) :])] = tensor
    return converted


def derive_config(checkpoint: Mapping[str, Any], **overrides: Any) -> ClayConfig:
    """Derive a [`ClayConfig`] from a checkpoint's `hyper_parameters` and tensor shapes.

    Widths, depths and MLP sizes come from the shapes. The number of attention heads cannot be (the qkv matrix only
    holds heads × head_dim): it comes from the `model_size` preset, or must be given in `overrides`.
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    state = checkpoint["state_dict"]
    model_size = hparams.get("model_size", "small")
    preset = CLAY_V0_PRESETS.get(model_size, {})

    def shape(key: str) -> torch.Size:
        if f"model.{key}" not in state:
            raise CheckpointConversionError(f"missing tensor model.{key}: cannot derive the model's shape without it.")
        return state[f"model.{key}"].shape

    def depth(prefix: str) -> int:
        pattern = re.compile(rf"^model\.{prefix}\.transformer\.layers\.(\d+)\.")
        return len({int(match.group(1)) for key in state if (match := pattern.match(key))})

    band_groups = normalize_band_groups(hparams["band_groups"]) if "band_groups" in hparams else None
    hidden_size = shape("encoder.latlon_embedding.weight")[0]
    decoder_hidden_size = shape("decoder.mask_patch")[0]
    patch_size = hparams.get("patch_size", shape(f"encoder.patch_embedding.{_first_group(state)}.proj.weight")[-1])
    derived: dict[str, Any] = dict(
        image_size=hparams.get("image_size", 512),
        patch_size=patch_size,
        mask_ratio=hparams.get("mask_ratio", 0.75),
        hidden_size=hidden_size,
        num_hidden_layers=depth("encoder"),
        intermediate_size=shape("encoder.transformer.layers.0.1.net.1.weight")[0],
        decoder_hidden_size=decoder_hidden_size,
        decoder_num_hidden_layers=depth("decoder"),
        decoder_intermediate_size=shape("decoder.transformer.layers.0.1.net.1.weight")[0],
    )
    if band_groups is not None:
        derived["band_groups"] = band_groups
    for prefix, key in (("", "encoder"), ("decoder_", "decoder")):
        inner = shape(f"{key}.transformer.layers.0.0.to_qkv.weight")[0] // 3
        heads = overrides.get(f"{prefix}num_attention_heads", preset.get(f"{prefix}num_attention_heads"))
        if heads is None:
            raise CheckpointConversionError(
                f"cannot derive {prefix}num_attention_heads: model_size is {model_size!r}, not a preset "
                f"({sorted(CLAY_V0_PRESETS)}), and the {key} qkv weight only gives heads × head_dim = {inner}. "
                f"Pass {prefix}num_attention_heads (or a full config)."
            )
        if inner % heads:
            raise CheckpointConversionError(
                f"{prefix}num_attention_heads={heads} does not divide the {key} attention width {inner}."
            )
        derived[f"{prefix}num_attention_heads"] = heads
        derived[f"{prefix}head_dim"] = inner // heads
    derived.update(overrides)
    return ClayConfig(**derived)


def _first_group(state: Mapping[str, torch.Tensor]) -> str:
    for key in state:
        if match := re.match(r"^model\.encoder\.patch_embedding\.(\w+)\.proj\.weight$", key):
            return match.group(1)
    raise CheckpointConversionError("missing tensor model.encoder.patch_embedding.<group>.proj.weight.")


def _add_identity_encoder_to_decoder(state_dict: dict[str, torch.Tensor], config: ClayConfig) -> None:
    """v0 skips the encoder→decoder projection when both widths are equal (`nn.Identity`): make it explicit."""
    if config.hidden_size == config.decoder_hidden_size and "decoder.encoder_to_decoder.weight" not in state_dict:
        state_dict["decoder.encoder_to_decoder.weight"] = torch.eye(config.hidden_size)
        state_dict["decoder.encoder_to_decoder.bias"] = torch.zeros(config.hidden_size)


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Fail loudly, naming each tensor, unless `state_dict` has exactly the model's tensors and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshapen = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    if misshapen:
        problems.append("misshapen tensors: " + "; ".join(misshapen))
    if problems:
        raise CheckpointConversionError("the checkpoint does not fit the model. " + " | ".join(problems))


def convert_original_checkpoint(
    checkpoint_path: str | PathLike,
    config: ClayConfig | None = None,
    allow_unsafe_pickle: bool = False,
    **config_overrides: Any,
) -> ClayForMaskedImageModeling:
    """Load an original Clay v0 checkpoint into a [`ClayForMaskedImageModeling`] (eval mode, float32).

    Args:
        checkpoint_path: the Lightning `.ckpt` file.
        config: the model's config; derived from the checkpoint when `None` (see [`derive_config`]).
        allow_unsafe_pickle: open the file with `weights_only=False`. Only for files you trust.
        config_overrides: fields that the checkpoint cannot give, e.g. `num_attention_heads` for a custom size.
    """
    checkpoint = load_original_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
    try:
        if config is None:
            config = derive_config(checkpoint, **config_overrides)
        state_dict = convert_state_dict(checkpoint["state_dict"])
        _add_identity_encoder_to_decoder(state_dict, config)
        model = ClayForMaskedImageModeling(config)
        check_state_dict(model, state_dict)
    except ValueError as error:  # CheckpointConversionError, or a config the checkpoint's values do not make
        raise CheckpointConversionError(f"{checkpoint_path}: {error}") from None
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def has_v0_1_architecture(config: ClayConfig) -> bool:
    """Whether `config` has the shape and bands of the released Clay v0.1 model (the `small` preset)."""
    released = ClayConfig()
    return all(getattr(config, name) == getattr(released, name) for name in _ARCHITECTURE_FIELDS)


def conversion_record(checkpoint_path: str | PathLike, config: ClayConfig) -> dict[str, Any]:
    """What the model card needs to know about converted weights: the source file, its digest, the architecture."""
    digest = hashlib.sha256()
    with open(checkpoint_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    from importlib.metadata import PackageNotFoundError, version

    try:
        converter = f"clay_hf {version('clay_hf')}"
    except PackageNotFoundError:  # running from a source checkout that is not installed
        converter = "clay_hf"
    return {
        "converted_by": converter,
        "source_checkpoint": Path(checkpoint_path).name,
        "source_sha256": digest.hexdigest(),
        "v0_1_architecture": has_v0_1_architecture(config),
    }


def save_converted(model: ClayForMaskedImageModeling, output_dir: str | PathLike, record: dict[str, Any]) -> Path:
    """A `save_pretrained` folder for converted weights: model, the v0 processor for its bands, and the record.

    It writes into `output_dir` as it is: `clay-convert-checkpoint` gives it a staging folder that is swapped into
    place whole, with checksums, under a lock (this module ships as Hub remote code, so the fault contract of
    `clay_hf.utils.outputs` lives in the command)."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    ClayImageProcessor(band_names=model.config.band_names).save_pretrained(output_dir)
    (output_dir / CONVERSION_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return output_dir


__all__ = [
    "CONVERSION_RECORD_NAME",
    "CheckpointConversionError",
    "conversion_record",
    "convert_original_checkpoint",
    "convert_state_dict",
    "derive_config",
    "has_v0_1_architecture",
    "load_original_checkpoint",
    "save_converted",
]
