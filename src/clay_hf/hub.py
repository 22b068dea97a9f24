"""Publishing Clay on the Hub: a repository folder with weights, processor, remote code, model card and licence.

`stage_repository` assembles and validates the folder; `upload_repository` sends it with `huggingface_hub`
(`create_repo`, `upload_folder`), the token taken from the environment (`HF_TOKEN`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .configuration_clay import ClayConfig
from .image_processing_clay import CLAY_V0_BAND_STATISTICS
from .modeling_clay import ClayForMaskedImageModeling, ClayModel

PACKAGE_DIR = Path(__file__).parent
CARD_DIR = Path(__file__).resolve().parents[2] / "model_card"
REMOTE_CODE = (
    "configuration_clay.py",
    "modeling_clay.py",
    "recompute.py",
    "loss_clay.py",
    "image_processing_clay.py",
)
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_clay.ClayConfig",
    "AutoModel": "modeling_clay.ClayModel",
    "AutoModelForMaskedImageModeling": "modeling_clay.ClayForMaskedImageModeling",
    "AutoModelForPreTraining": "modeling_clay.ClayForMaskedImageModeling",
}
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "image_processing_clay.ClayImageProcessor"}
TAGS = ["earth-observation", "remote-sensing", "sentinel-2", "sentinel-1", "masked-autoencoder", "geospatial"]
LICENSE_FILE = "LICENSE.md"
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")

#: What the released v0.1 weights were trained on (for converted weights without a training summary).
V0_TRAINING = (
    "The released Clay v0.1 weights were trained with the original Clay code on about 1.2 million 13-band chips "
    "(512×512 pixels at 10 m: Sentinel-2 L2A, Sentinel-1 RTC backscatter and Copernicus DEM) sampled from MGRS "
    "tiles across the land surface, split 80/20 into training and validation sets. Recipe: masked autoencoding "
    "with 75% of band-group patches masked; AdamW (lr 1e-4, weight decay 0.05, betas 0.9/0.95); "
    "CosineAnnealingWarmRestarts (T_0 = 1000, T_mult = 2, eta_min = 10 × lr) stepped per optimizer step; batch 10 "
    "per GPU × 4 GPUs × 5 accumulation steps = 200; 25 epochs. Final training loss 0.52, validation loss 0.46."
)
V0_ENVIRONMENT = (
    "The v0.1 weights were trained on 4 NVIDIA A10G GPUs for 25 epochs, about 15 hours each (roughly 375 hours "
    "of the 4-GPU machine). The energy used and its carbon intensity were not measured."
)


class StagingError(ValueError):
    """The model folder or the staged repository is not fit to publish."""


@dataclass
class StagedRepository:
    folder: Path
    repo_id: str
    files: list[str]


# ---------------------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------------------


def stage_repository(model_dir: str | PathLike, staging_dir: str | PathLike, repo_id: str) -> StagedRepository:
    """Assemble the Hub repository for the `save_pretrained` folder `model_dir` in `staging_dir`, and validate it."""
    model_dir, staging = Path(model_dir), Path(staging_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise StagingError(f"{model_dir}: missing {', '.join(missing)} (a save_pretrained folder with its processor)")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    for name in ("model.safetensors", "training_summary.json", "eval_results.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, staging / name)
    _write_json(staging / "config.json", {**_read_json(model_dir / "config.json"), "auto_map": MODEL_AUTO_MAP})
    processor_config = {**_read_json(model_dir / "preprocessor_config.json"), "auto_map": PROCESSOR_AUTO_MAP}
    _write_json(staging / "preprocessor_config.json", processor_config)
    for name in REMOTE_CODE:
        shutil.copy2(PACKAGE_DIR / name, staging / name)
    shutil.copy2(CARD_DIR / "LICENSE.md", staging / LICENSE_FILE)

    card = render_model_card(model_dir, repo_id)
    card.save(staging / "README.md")
    validate_model_card(staging / "README.md")
    files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
    return StagedRepository(staging, repo_id, files)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------


def render_model_card(model_dir: str | PathLike, repo_id: str) -> ModelCard:
    """Fill `model_card/template.md` from the folder's config, training summary and evaluation results."""
    model_dir = Path(model_dir)
    config = ClayConfig.from_pretrained(model_dir)
    summary = _optional_json(model_dir / "training_summary.json")
    evaluation = _optional_json(model_dir / "eval_results.json")
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        license="openrail",
        license_name="openrail-m",
        license_link=LICENSE_FILE,
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=TAGS,
        eval_results=_eval_results(evaluation),
    )
    num_parameters = ClayForMaskedImageModeling(config).num_parameters()
    encoder_parameters = ClayModel(config).num_parameters()
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_DIR / "template.md"),
        model_name=model_name,
        repo_id=repo_id,
        summary=_summary_text(config, summary),
        encoder_shape=_shape_text(config.hidden_size, config.num_hidden_layers, config.num_attention_heads),
        decoder_shape=_shape_text(
            config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads
        ),
        num_parameters=f"{num_parameters:,}",
        encoder_parameters=f"{encoder_parameters:,}",
        num_bands=config.num_channels,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_groups=config.num_groups,
        hidden_size=config.hidden_size,
        weights_origin="trained with clay_hf (see below)"
        if summary
        else "converted from the released Clay v0.1 checkpoint",
        license_file=LICENSE_FILE,
        band_table=_band_table(config, model_dir),
        group_list=", ".join(
            f"`{name}` ({', '.join(config.band_names[i] for i in bands)})" for name, bands in config.band_groups
        ),
        training_section=_training_text(summary),
        evaluation_section=_evaluation_text(evaluation),
        environment_section=_environment_text(summary),
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _shape_text(width: int, depth: int, heads: int) -> str:
    return f"width {width}, {depth} layers, {heads} heads"


def _summary_text(config: ClayConfig, summary: dict | None) -> str:
    origin = (
        f"These weights were pretrained with `clay_hf` for {summary['global_step']:,} optimizer steps."
        if summary
        else "These are the released Clay v0.1 weights, converted to this format and checked against the original "
        "code's outputs."
    )
    return (
        "Clay is an open geospatial foundation model: a masked autoencoder (ViT encoder and decoder) trained on "
        f"{config.num_channels}-band stacks of Sentinel-2, Sentinel-1 and Copernicus DEM. Its encoder turns a chip, "
        "its place and its date into an embedding vector for search, classification and change detection. " + origin
    )


def _band_table(config: ClayConfig, model_dir: Path) -> str:
    processor = _optional_json(model_dir / "preprocessor_config.json") or {}
    means = processor.get("image_mean") or [CLAY_V0_BAND_STATISTICS[b][0] for b in config.band_names]
    stds = processor.get("image_std") or [CLAY_V0_BAND_STATISTICS[b][1] for b in config.band_names]
    return "\n".join(
        f"| {i} | {band} | {mean:g} | {std:g} |"
        for i, (band, mean, std) in enumerate(zip(config.band_names, means, stds, strict=True))
    )


def _training_text(summary: dict | None) -> str:
    if not summary:
        return V0_TRAINING
    hardware = summary.get("hardware", {})
    validation = summary.get("final_validation_loss")
    return (
        f"Pretrained with `scripts/pretrain.py` (masked autoencoding, mask ratio {summary.get('mask_ratio')}) for "
        f"{summary['global_step']:,} optimizer steps over {summary['chips_seen']:,} chips "
        f"({summary.get('epochs_completed', 0)} complete epochs), effective batch {summary.get('effective_batch_size')}, "
        f"hyperparameters {json.dumps(summary.get('hyperparameters', {}))}. Final training loss "
        f"{_number(summary.get('final_train_loss'))}, validation loss {_number(validation)}. "
        f"{summary.get('bad_chips_skipped', 0)} unreadable chips were skipped."
        f" Hardware: {hardware.get('num_processes', 1)} × {hardware.get('device', 'unknown')}."
    )


def _evaluation_text(evaluation: dict | None) -> str:
    if not evaluation:
        return (
            "No evaluation results were supplied with these weights. The released v0.1 model reached a validation "
            "loss (masked MSE of normalised pixels) of 0.46. Run `scripts/evaluate.py` on your chips to measure it."
        )
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in evaluation.get("masked_mse_per_group", {}).items())
    return (
        f"Masked reconstruction error (MSE of normalised pixels over masked patches) on {evaluation['num_chips']} "
        f"chips of `{Path(str(evaluation.get('dataset'))).name}`, masking: {evaluation.get('masking')}. Total (the v0 loss): "
        f"**{evaluation['masked_mse']:.4f}**.\n\n| band group | masked MSE |\n|---|---|\n{rows}"
    )


def _environment_text(summary: dict | None) -> str:
    if not summary:
        return V0_ENVIRONMENT
    hardware = summary.get("hardware", {})
    hours = summary.get("wall_time_seconds", 0) / 3600
    return (
        f"Trained for {hours:.2f} hours on {hardware.get('num_processes', 1)} × {hardware.get('device', 'unknown')} "
        f"({hardware.get('device_type', 'unknown')}). The energy used and its carbon intensity were not measured."
    )


def _number(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def _eval_results(evaluation: dict | None) -> list[EvalResult] | None:
    if not evaluation or evaluation.get("masked_mse") is None:
        return None
    common = dict(
        task_type="masked-image-modeling",
        task_name="Masked image modeling",
        dataset_type="geotiff-chips",
        dataset_name=Path(str(evaluation.get("dataset", "chips"))).name,
        metric_type="mse",
    )
    results = [EvalResult(metric_name="masked MSE", metric_value=evaluation["masked_mse"], **common)]
    for name, value in evaluation.get("masked_mse_per_group", {}).items():
        results.append(EvalResult(metric_name=f"masked MSE ({name})", metric_value=value, **common))
    return results


def validate_model_card(path: str | PathLike) -> ModelCard:
    """Parse the card and check what can be checked offline: required metadata, licence fields, no placeholder."""
    card = ModelCard.load(path)
    data = card.data
    problems = []
    if data.license != "openrail" or not data.license_name or not data.license_link:
        problems.append("license must be 'openrail' with license_name and license_link")
    if data.library_name != "transformers" or data.pipeline_tag != "image-feature-extraction":
        problems.append("library_name must be transformers and pipeline_tag image-feature-extraction")
    missing_tags = sorted(set(TAGS) - set(data.tags or []))
    if missing_tags:
        problems.append(f"missing tags {missing_tags}")
    for marker in ("{{", "}}", "[More Information Needed]", "TODO"):
        if marker in card.text:
            problems.append(f"an unfilled placeholder {marker!r} remains")
    if problems:
        raise StagingError(f"{path}: " + "; ".join(problems))
    return card


# ---------------------------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------------------------


def upload_repository(
    staged: StagedRepository, private: bool = False, revision: str | None = None, token: str | None = None
) -> str:
    """Create the repository if needed and upload the staged folder; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(staged.repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(staged.repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=staged.repo_id,
        folder_path=staged.folder,
        repo_type="model",
        revision=revision,
        commit_message="Upload Clay model, processor, remote code and model card",
    )
    return str(commit)


__all__ = [
    "StagedRepository",
    "StagingError",
    "render_model_card",
    "stage_repository",
    "upload_repository",
    "validate_model_card",
]
