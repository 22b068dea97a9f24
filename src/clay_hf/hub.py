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

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .configuration_clay import ClayConfig
from .convert_clay_original_checkpoint import CONVERSION_RECORD_NAME as CONVERSION_RECORD
from .convert_clay_original_checkpoint import V0_1_RELEASE_FILE, has_v0_1_architecture
from .evaluation import EVAL_RESULTS_NAME as EVAL_RESULTS
from .image_processing_clay import CLAY_V0_BAND_STATISTICS
from .modeling_clay import ClayForMaskedImageModeling, ClayModel

PACKAGE_DIR = Path(__file__).parent
CARD_DIR = PACKAGE_DIR / "model_card"  # package data: the card template and the licence ship with the wheel
STAGING_MARKER = ".clay-staging"  # marks a folder this tool made, so that a later run may empty it
REMOTE_CODE = (
    "configuration_clay.py",
    "configuration_clay_heads.py",
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
TRAINING_SUMMARY = "training_summary.json"

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
    "The released v0.1 weights were trained on 4 NVIDIA A10G GPUs for 25 epochs, about 15 hours each (roughly "
    "375 hours of the 4-GPU machine). The energy used and its carbon intensity were not measured."
)


class StagingError(ValueError):
    """The model folder or the staged repository is not fit to publish."""


@dataclass
class StagedRepository:
    folder: Path
    repo_id: str
    files: list[str]
    reused: bool = False  # True when `folder` was an earlier staging folder of this tool, emptied and refilled


# ---------------------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------------------


def stage_repository(model_dir: str | PathLike, staging_dir: str | PathLike, repo_id: str) -> StagedRepository:
    """Assemble the Hub repository for the `save_pretrained` folder `model_dir` in `staging_dir`, and validate it.

    `staging_dir` must be new, empty, or a staging folder this tool made before (it holds `STAGING_MARKER`); it is
    never the model folder, inside it, or a folder that contains it. Nothing else is ever deleted.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise StagingError(f"{model_dir}: missing {', '.join(missing)} (a save_pretrained folder with its processor)")
    staging, reused = prepare_staging_dir(staging_dir, model_dir)

    for name in ("model.safetensors", TRAINING_SUMMARY, EVAL_RESULTS, CONVERSION_RECORD):
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
    files = sorted(
        str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file() and path.name != STAGING_MARKER
    )
    return StagedRepository(staging, repo_id, files, reused)


def prepare_staging_dir(staging_dir: str | PathLike, model_dir: str | PathLike) -> tuple[Path, bool]:
    """Make `staging_dir` ready and marked as ours; returns (folder, reused). Refuses any folder it did not make.

    Allowed: a folder that does not exist (created), an empty folder, or a folder holding `STAGING_MARKER` from an
    earlier run (emptied: `reused`). Refused: the model folder, a folder inside it or containing it, a file, and
    any other non-empty folder.
    """
    staging, model = Path(staging_dir).resolve(), Path(model_dir).resolve()
    if staging == model or staging in model.parents:
        relation = "is" if staging == model else "contains"
        raise StagingError(
            f"--staging_dir {staging_dir} {relation} the model folder {model_dir}: staging would overwrite the model. "
            "Choose a separate, new or empty folder (or leave --staging_dir out for a temporary one)."
        )
    if model in staging.parents:
        raise StagingError(
            f"--staging_dir {staging_dir} is inside the model folder {model_dir}: choose a folder outside it."
        )
    if staging.exists() and not staging.is_dir():
        raise StagingError(f"--staging_dir {staging_dir} is a file, not a folder.")
    reused = False
    if staging.is_dir() and any(staging.iterdir()):
        if not (staging / STAGING_MARKER).is_file():
            raise StagingError(
                f"--staging_dir {staging_dir} is not empty and was not made by this tool: refusing to delete its "
                "contents. Choose a new or empty folder (or leave --staging_dir out for a temporary one)."
            )
        for entry in staging.iterdir():  # a staging folder made by an earlier run: its files are ours
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        reused = True
    staging.mkdir(parents=True, exist_ok=True)
    (staging / STAGING_MARKER).write_text(
        "A Hub repository staged by clay_hf (clay-publish). The next staging run into this folder empties it.\n"
    )
    return Path(staging_dir), reused


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class WeightsOrigin:
    """What a model folder records about how its weights were made: a training summary, a conversion record, or
    nothing. Only converted weights of the released v0.1 architecture get the v0.1 facts on the card."""

    summary: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None
    v0_1_config: bool = False  # the folder's config has the released v0.1 architecture

    @classmethod
    def of(cls, model_dir: Path, config: ClayConfig) -> WeightsOrigin:
        summary, conversion = (
            _optional_json(model_dir / TRAINING_SUMMARY),
            _optional_json(model_dir / CONVERSION_RECORD),
        )
        return cls(summary, conversion, has_v0_1_architecture(config))

    @property
    def trained(self) -> bool:
        return self.summary is not None

    @property
    def converted(self) -> bool:
        return self.summary is None and self.conversion is not None

    @property
    def v0_1(self) -> bool:
        return self.converted and bool(self.conversion.get("v0_1_architecture")) and self.v0_1_config

    @property
    def source(self) -> str:
        return f"`{self.conversion.get('source_checkpoint', 'unknown')}`" if self.conversion else ""


def render_model_card(model_dir: str | PathLike, repo_id: str) -> ModelCard:
    """Fill the card template (package data) from the folder's config, training summary or conversion record,
    and evaluation results. It states only what the folder records."""
    model_dir = Path(model_dir)
    config = ClayConfig.from_pretrained(model_dir)
    origin = WeightsOrigin.of(model_dir, config)
    evaluation = _optional_json(model_dir / EVAL_RESULTS)
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
    with torch.device("meta"):  # parameter counts only: no memory, no initialisation
        num_parameters = ClayForMaskedImageModeling(config).num_parameters()
        encoder_parameters = ClayModel(config).num_parameters()
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_DIR / "template.md"),
        model_name=model_name,
        repo_id=repo_id,
        summary=_summary_text(config, origin),
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
        weights_origin=_origin_line(origin),
        license_file=LICENSE_FILE,
        band_table=_band_table(config, model_dir),
        group_list=", ".join(
            f"`{name}` ({', '.join(config.band_names[i] for i in bands)})" for name, bands in config.band_groups
        ),
        training_section=_training_text(origin),
        evaluation_section=_evaluation_text(evaluation, origin),
        environment_section=_environment_text(origin),
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _shape_text(width: int, depth: int, heads: int) -> str:
    return f"width {width}, {depth} layers, {heads} heads"


def _origin_line(origin: WeightsOrigin) -> str:
    if origin.trained:
        return "pretrained with clay_hf (see *Training data and procedure*)"
    if origin.converted:
        digest = str(origin.conversion.get("source_sha256", ""))[:16]
        return f"converted from the original Clay checkpoint {origin.source}" + (
            f" (sha256 {digest}…)" if digest else ""
        )
    return "no training record came with these weights (no training summary, no conversion record)"


def _summary_text(config: ClayConfig, origin: WeightsOrigin) -> str:
    if origin.trained:
        how = f"These weights were pretrained with `clay_hf` for {origin.summary['global_step']:,} optimizer steps."
    elif origin.v0_1:
        how = (
            f"These weights were converted from the original Clay checkpoint {origin.source}, which has the "
            "architecture of the released Clay v0.1 model; every tensor was mapped and checked."
        )
    elif origin.converted:
        how = (
            f"These weights were converted from the original Clay checkpoint {origin.source}, a model of a different "
            "size or band set than the released v0.1 model; its training run is not recorded here."
        )
    else:
        how = (
            "No record of how these weights were made came with them (no training summary, no conversion record): "
            "they may be untrained, and this card does not describe their training."
        )
    return (
        "Clay is an open geospatial foundation model: a masked autoencoder (ViT encoder and decoder) for "
        f"{config.num_channels}-band stacks of Sentinel-2, Sentinel-1 and Copernicus DEM. Its encoder turns a chip, "
        "its place and its date into an embedding vector for search, classification and change detection. " + how
    )


def _band_table(config: ClayConfig, model_dir: Path) -> str:
    processor = _optional_json(model_dir / "preprocessor_config.json") or {}
    means = processor.get("image_mean") or [CLAY_V0_BAND_STATISTICS[b][0] for b in config.band_names]
    stds = processor.get("image_std") or [CLAY_V0_BAND_STATISTICS[b][1] for b in config.band_names]
    return "\n".join(
        f"| {i} | {band} | {mean:g} | {std:g} |"
        for i, (band, mean, std) in enumerate(zip(config.band_names, means, stds, strict=True))
    )


def _training_text(origin: WeightsOrigin) -> str:
    if origin.v0_1:
        return (
            f"Converted from {origin.source}, which has the architecture of the released v0.1 model; the release "
            f"(`{V0_1_RELEASE_FILE}`) was trained as follows. " + V0_TRAINING
        )
    if origin.converted:
        return f"Converted from the original Clay checkpoint {origin.source}; its training run is not recorded here."
    if not origin.trained:
        return "No training record came with these weights (no `training_summary.json`)."
    summary = origin.summary
    hardware = summary.get("hardware", {})
    validation = summary.get("final_validation_loss")
    masking = summary.get("validation_masking")
    return (
        f"Pretrained with `clay-pretrain` (masked autoencoding, mask ratio {summary.get('mask_ratio')}) for "
        f"{summary['global_step']:,} optimizer steps over {summary['chips_seen']:,} chips "
        f"({summary.get('epochs_completed', 0)} complete epochs), effective batch {summary.get('effective_batch_size')}, "
        f"hyperparameters {json.dumps(summary.get('hyperparameters', {}))}. Final training loss "
        f"{_number(summary.get('final_train_loss'))}, validation loss {_number(validation)} (held-out chips, "
        f"{'masking: ' + masking if masking else 'masking not recorded'}). "
        f"{summary.get('bad_chips_skipped', 0)} unreadable chips were skipped."
        f" Hardware: {hardware.get('num_processes', 1)} × {hardware.get('device', 'unknown')}."
    )


def _evaluation_text(evaluation: dict | None, origin: WeightsOrigin) -> str:
    if not evaluation:
        released = (
            " The released v0.1 model reached a validation loss (masked MSE of normalised pixels, v0's validation "
            "masking) of 0.46."
            if origin.v0_1
            else ""
        )
        return (
            f"No evaluation results were supplied with these weights.{released} Measure them on held-out chips with "
            "`clay-evaluate --model_name_or_path MODEL --data_dir chips/ --output_dir MODEL --split validation`."
        )
    rows = "\n".join(
        f"| {name} | {'not measured (no masked patch)' if value is None else f'{value:.4f}'} |"
        for name, value in evaluation.get("masked_mse_per_group", {}).items()
    )
    return (
        f"Masked reconstruction error (MSE of normalised pixels over masked patches) on {_chips_text(evaluation)}; "
        f"masking: {_masking_text(evaluation)}. Total (the v0 loss): **{_number(evaluation.get('masked_mse'))}**."
        f"\n\n| band group | masked MSE |\n|---|---|\n{rows}"
    )


def _chips_text(evaluation: dict) -> str:
    dataset, count = f"`{Path(str(evaluation.get('dataset'))).name}`", evaluation.get("num_chips")
    split = evaluation.get("split")
    if split in ("validation", "train"):
        fraction = evaluation.get("validation_fraction", 0.2)
        return (
            f"{count} chips of the {split} split of {dataset} (the training run's hash split of file names, "
            f"{fraction:.0%} validation)"
        )
    if split == "all":
        return f"{count} chips: all of {dataset}, not split (they may include training chips)"
    return f"{count} chips of {dataset} (which chips: not recorded)"


def _masking_text(evaluation: dict) -> str:
    ratio = evaluation.get("mask_ratio")
    if evaluation.get("masking") == "random":
        return (
            f"random with a fixed seed ({evaluation.get('masking_seed')}), mask ratio {ratio}: every band group is "
            "masked at the same rate on average"
        )
    if evaluation.get("masking") == "v0":
        return (
            f"v0's validation masking (eval mode, no shuffle: the first {ratio} of tokens in group order, so the last "
            "groups are never masked)"
        )
    return str(evaluation.get("masking", "not recorded"))


def _environment_text(origin: WeightsOrigin) -> str:
    if origin.v0_1:
        return V0_ENVIRONMENT
    if not origin.trained:
        return "Not recorded: no training summary came with these weights."
    hardware = origin.summary.get("hardware", {})
    hours = origin.summary.get("wall_time_seconds", 0) / 3600
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
        dataset_split=evaluation.get("split"),
        metric_type="mse",
    )
    results = [EvalResult(metric_name="masked MSE", metric_value=evaluation["masked_mse"], **common)]
    for name, value in evaluation.get("masked_mse_per_group", {}).items():
        if value is not None:  # a group with no masked patch was not measured: no number to publish
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
        ignore_patterns=[STAGING_MARKER],
        commit_message="Upload Clay model, processor, remote code and model card",
    )
    return str(commit)


__all__ = [
    "STAGING_MARKER",
    "StagedRepository",
    "StagingError",
    "WeightsOrigin",
    "prepare_staging_dir",
    "render_model_card",
    "stage_repository",
    "upload_repository",
    "validate_model_card",
]
