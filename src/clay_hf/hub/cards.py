"""Model cards of Clay for the Hub, filled from what a model folder records.

`render_model_card`: a pretrained Clay (`ClayModel`, `ClayForMaskedImageModeling`), from its config, training
summary or conversion record, and masked-reconstruction results. `render_finetuned_card`: a fine-tuned Clay
(`ClayForSemanticSegmentation`, `ClayForImageClassification`), from its config, processor and the
`eval_results.json` of `clay-finetune`. The templates and the licence are package data in `hub/templates/`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..evaluation.reconstruction import EVAL_RESULTS_NAME as EVAL_RESULTS
from ..models.clay.configuration_clay import ClayConfig
from ..models.clay.convert_clay_original_checkpoint import CONVERSION_RECORD_NAME as CONVERSION_RECORD
from ..models.clay.convert_clay_original_checkpoint import V0_1_RELEASE_FILE, has_v0_1_architecture
from ..models.clay.image_processing_clay import CLAY_V0_BAND_STATISTICS
from ..models.clay.modeling_clay import ClayForMaskedImageModeling, ClayModel
from ..models.clay.modeling_clay_heads import ClayForImageClassification, ClayForSemanticSegmentation
from ..models.clay.pipeline_clay import CLAY_PIPELINES
from ..utils.outputs import read_json
from .weights_license import (
    CARD_DIR,
    LICENSE_FILE,
    OPENRAIL_M,
    WeightsLicense,
    license_row,
    license_section,
    prohibited_uses,
)

EO_TAGS = ["earth-observation", "remote-sensing", "sentinel-2", "sentinel-1", "geospatial"]
TAGS = [*EO_TAGS, "masked-autoencoder"]
PRETRAINED_PIPELINE_TAG = "image-feature-extraction"
TRAINING_SUMMARY = "training_summary.json"
OTHER_TASK = "other"  # the Hub's task id for what none of its tasks names (chip regression)
HUB_DATASET_PREFIX = "hf://datasets/"

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


@dataclass(frozen=True)
class FineTunedTask:
    """A task of `clay-finetune` as the Hub sees it: pipeline, Auto class, and the metric type of each score that
    `eval_results.json` holds (a key, or a prefix ending in `_` for per-class scores)."""

    name: str  # the `--task` of clay-finetune
    title: str
    pipeline_tag: str | None  # None: the Hub has no pipeline for chip regression
    auto_class: str
    metric_types: dict[str, str] = field(default_factory=dict)

    def metric_type(self, key: str) -> str | None:
        """The model-index metric type of an `eval_results.json` score; None for what is not a score (loss, runtime)."""
        if key in self.metric_types:
            return self.metric_types[key]
        prefix = key.split("_", 1)[0] + "_"
        return self.metric_types.get(prefix) if "_" in key else None


FINETUNED_TASKS = {
    task.name: task
    for task in (
        FineTunedTask(
            "semantic-segmentation",
            "Semantic segmentation",
            "image-segmentation",
            "AutoModelForSemanticSegmentation",
            {"mean_iou": "mean_iou", "pixel_accuracy": "accuracy", "mean_f1": "f1", "iou_": "iou", "f1_": "f1"},
        ),
        FineTunedTask(
            "image-classification",
            "Chip classification",
            "image-classification",
            "AutoModelForImageClassification",
            {"accuracy": "accuracy", "macro_f1": "f1"},
        ),
        FineTunedTask(
            "regression",
            "Chip regression",
            None,
            "AutoModelForImageClassification",
            {"rmse": "rmse", "mae": "mae", "r2": "r_squared"},
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# The card of a pretrained Clay
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


def render_model_card(model_dir: str | PathLike, repo_id: str, license: WeightsLicense = OPENRAIL_M) -> ModelCard:
    """Fill the card template (package data) from the folder's config, training summary or conversion record,
    and evaluation results, with the weights' `license`. It states only what the folder records."""
    model_dir = Path(model_dir)
    config = ClayConfig.from_pretrained(model_dir)
    origin = WeightsOrigin.of(model_dir, config)
    evaluation = _optional_json(model_dir / EVAL_RESULTS)
    model_name = repo_id.split("/")[-1]
    card_data = _card_data(model_name, PRETRAINED_PIPELINE_TAG, TAGS, _eval_results(evaluation), license)
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
        num_parameters=f"{_num_parameters(ClayForMaskedImageModeling, config):,}",
        encoder_parameters=f"{_num_parameters(ClayModel, config):,}",
        num_bands=config.num_channels,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_groups=config.num_groups,
        hidden_size=config.hidden_size,
        weights_origin=_origin_line(origin),
        license_row=license_row(license),
        license_section=license_section(license),
        band_table=_band_table(config, model_dir),
        group_list=_group_list(config),
        prohibited_uses=prohibited_uses(license),
        training_section=_training_text(origin),
        evaluation_section=_evaluation_text(evaluation, origin),
        environment_section=_environment_text(origin),
    )


def _num_parameters(model_class: type, config: ClayConfig) -> int:
    with torch.device("meta"):  # parameter counts only: no memory, no initialisation
        return model_class(config).num_parameters()


def _card_data(
    model_name: str,
    pipeline_tag: str | None,
    tags: list[str],
    eval_results: list[EvalResult] | None,
    license: WeightsLicense,
    **extra: Any,
) -> ModelCardData:
    """The metadata every Clay card carries: the weights' licence, transformers, task and tags."""
    return ModelCardData(
        model_name=model_name,
        **license.metadata(),
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        eval_results=eval_results,
        **extra,
    )


def _group_list(config: ClayConfig) -> str:
    return ", ".join(
        f"`{name}` ({', '.join(config.band_names[i] for i in bands)})" for name, bands in config.band_groups
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


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
    """One row per model band: the processor's statistics by band name (a fine-tuned processor may know more bands
    than a partial model reads), else the v0 statistics."""
    processor = _optional_json(model_dir / "preprocessor_config.json") or {}
    names = processor.get("band_names") or config.band_names
    statistics = zip(processor.get("image_mean") or [], processor.get("image_std") or [], strict=False)
    known = dict(zip(names, statistics, strict=False))  # no statistics saved: an empty table
    rows = []
    for index, band in enumerate(config.band_names):
        mean, std = known.get(band) or CLAY_V0_BAND_STATISTICS.get(band, (float("nan"), float("nan")))
        rows.append(f"| {index} | {band} | {mean:g} | {std:g} |")
    return "\n".join(rows)


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


def _dataset_fields(evaluation: dict) -> dict[str, str]:
    """model-index's dataset: its Hub id when the chips were read from a Hub dataset (`hf://datasets/OWNER/NAME/…`),
    else the folder's name, as both id and name (no Hub dataset holds them)."""
    recorded = str(evaluation.get("dataset") or "chips")
    if recorded.startswith(HUB_DATASET_PREFIX):
        repo_id = "/".join(recorded[len(HUB_DATASET_PREFIX) :].split("@")[0].split("/")[:2])
        return {"dataset_type": repo_id, "dataset_name": repo_id}
    folder = Path(recorded.split(" (")[0].rstrip("/")).name or "chips"  # "chips (hash split, 20%)": chips
    return {"dataset_type": folder, "dataset_name": f"{Path(recorded).name}: GeoTIFF chips, not a Hub dataset"}


def _number(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def _eval_results(evaluation: dict | None) -> list[EvalResult] | None:
    if not evaluation or evaluation.get("masked_mse") is None:
        return None
    common = dict(
        task_type=PRETRAINED_PIPELINE_TAG,  # a Hub task id: the embeddings are the product, measured by reconstruction
        task_name="Masked image modeling (reconstruction of masked patches)",
        **_dataset_fields(evaluation),
        dataset_split=evaluation.get("split"),
        metric_type="mse",
    )
    results = [EvalResult(metric_name="masked MSE", metric_value=evaluation["masked_mse"], **common)]
    for name, value in evaluation.get("masked_mse_per_group", {}).items():
        if value is not None:  # a group with no masked patch was not measured: no number to publish
            results.append(EvalResult(metric_name=f"masked MSE ({name})", metric_value=value, **common))
    return results


# ---------------------------------------------------------------------------------------------------------------------
# The model card of a fine-tuned Clay
# ---------------------------------------------------------------------------------------------------------------------


def finetuned_task(config: dict[str, Any]) -> FineTunedTask | None:
    """The task of a fine-tuned folder's `config.json` (its `architectures`), None for a pretrained Clay."""
    architectures = config.get("architectures") or []
    if ClayForSemanticSegmentation.__name__ in architectures:
        return FINETUNED_TASKS["semantic-segmentation"]
    if ClayForImageClassification.__name__ in architectures:
        regression = config.get("problem_type") == "regression"
        return FINETUNED_TASKS["regression" if regression else "image-classification"]
    return None


def weights_from_scratch(model_dir: str | PathLike, _followed: frozenset[Path] = frozenset()) -> bool | None:
    """Whether a model folder's weights descend from random initialisation alone, followed through every base they
    were trained from (the weights' licence follows this). True: pretrained or fine-tuned from scratch, or trained
    from weights that were; False: converted Clay v0 weights, trained from them, or trained from a base whose origin
    is unknown here (a Hub id, a folder no longer there, a folder that records no origin); None: the folder itself
    records no origin."""
    model_dir = Path(model_dir)
    summary, evaluation = _optional_json(model_dir / TRAINING_SUMMARY), _optional_json(model_dir / EVAL_RESULTS)
    config = _optional_json(model_dir / "config.json") or {}
    if finetuned_task(config) is not None:  # clay-finetune's record: eval_results.json
        if not evaluation:
            return None
        if evaluation.get("from_scratch"):
            return True
        base = evaluation.get("base_model")
    elif summary is not None:  # clay-pretrain's record: training_summary.json
        if "initialised_from" not in summary:
            return None
        base = summary["initialised_from"]
        if base is None:
            return True
    else:
        return False if (model_dir / CONVERSION_RECORD).is_file() else None
    if not base:
        return None
    base_dir = Path(base).expanduser().resolve()
    if not base_dir.is_dir() or base_dir in _followed:
        return False
    # A base that records no origin (e.g. a save_pretrained copy of released weights) counts as Clay v0's.
    return weights_from_scratch(base_dir, _followed | {model_dir.resolve()}) is True


def finetuned_tags(task: FineTunedTask) -> list[str]:
    return [*EO_TAGS, "fine-tuned", task.name]


def hub_base_model(evaluation: dict[str, Any] | None, override: str | None = None) -> str | None:
    """The Hub id of the pretrained model the weights were fine-tuned from: `override`, else the one `clay-finetune`
    recorded in `eval_results.json` when it was a Hub id (not a local folder); None when there is none."""
    if override is not None:
        return override
    recorded = (evaluation or {}).get("base_model")
    if not recorded or evaluation.get("base_model_is_local", Path(recorded).is_dir()):
        return None
    return recorded if is_repo_id(recorded) else None


def is_repo_id(name: str) -> bool:
    """`owner/name` as the Hub accepts it."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def render_finetuned_card(
    model_dir: str | PathLike,
    repo_id: str,
    task: FineTunedTask,
    base_model: str | None = None,
    license: WeightsLicense = OPENRAIL_M,
) -> ModelCard:
    """Fill the fine-tuned card template from the folder's config, processor and `eval_results.json` (as
    `clay-finetune` writes it): task, labels, base model, inputs, training and scores, with the weights' `license`."""
    model_dir = Path(model_dir)
    config = ClayConfig.from_pretrained(model_dir)
    evaluation = _optional_json(model_dir / EVAL_RESULTS) or {}
    base = hub_base_model(evaluation, base_model)
    model_name = repo_id.split("/")[-1]
    card_data = _card_data(
        model_name,
        task.pipeline_tag,
        finetuned_tags(task),
        _finetuned_eval_results(task, evaluation),
        license,
        base_model=base,
        base_model_relation="finetune" if base else None,
    )
    model_class = ClayForSemanticSegmentation if task.name == "semantic-segmentation" else ClayForImageClassification
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_DIR / "finetuned.md"),
        model_name=model_name,
        repo_id=repo_id,
        summary=_finetuned_summary(task, config, evaluation, base),
        task_text=f"{task.title} (`{task.name}`)",
        base_model_text=_base_model_text(evaluation, base),
        model_class=model_class.__name__,
        architecture_text=_head_text(task, config),
        num_parameters=f"{_num_parameters(model_class, config):,}",
        num_bands=config.num_channels,
        band_list=", ".join(config.band_names),
        image_size=config.image_size,
        patch_size=config.patch_size,
        output_text=_output_text(task, config),
        license_row=license_row(license),
        license_section=license_section(license),
        label_section=_label_text(task, config),
        intended_use=_intended_use(task, config),
        prohibited_uses=prohibited_uses(license),
        auto_class=task.auto_class,
        logits_shape=_logits_shape(task, config),
        prediction_line=_prediction_line(task),
        pipeline_task=pipeline_task(task),
        clay_pipeline_task=next(name for name, (*_, hub) in CLAY_PIPELINES.items() if hub == pipeline_task(task)),
        pipeline_output=_pipeline_output(task),
        predict_text=_predict_text(task),
        band_table=_band_table(config, model_dir),
        group_list=_group_list(config),
        training_section=_finetuning_text(task, evaluation, base),
        evaluation_section=_scores_text(task, evaluation),
    )


def _label_names(config: ClayConfig) -> list[str]:
    return [str(config.id2label[index]) for index in range(config.num_labels)]


def _finetuned_summary(task: FineTunedTask, config: ClayConfig, evaluation: dict, base: str | None) -> str:
    if evaluation.get("from_scratch"):
        origin = "trained from random weights with Clay's architecture (no pretraining: the from-scratch baseline)"
    elif base or evaluation.get("base_model"):
        origin = f"fine-tuned from the pretrained Clay model {_base_model_name(evaluation, base)}"
    else:
        origin = "a fine-tuned Clay model (no record of its base model came with it)"
    what = "one value per chip" if task.name == "regression" else f"{config.num_labels} classes"
    return (
        f"{task.title} of Sentinel-2 / Sentinel-1 / DEM chips ({what}) with the Clay geospatial foundation model: "
        f"{origin}, with `clay_hf`'s `{task.name}` head."
    )


def _base_model_text(evaluation: dict, base: str | None) -> str:
    if evaluation.get("from_scratch"):
        return "none: trained from random weights (`--from_scratch`)"
    if base:
        return f"[{base}](https://huggingface.co/{base}) (`base_model_relation: finetune`)"
    if evaluation.get("base_model"):
        return f"{_base_model_name(evaluation, base)} (not a Hub repository)"
    return "not recorded (no `eval_results.json` from `clay-finetune`)"


def _base_model_name(evaluation: dict, base: str | None) -> str:
    if base:
        return f"[{base}](https://huggingface.co/{base})"
    return f"the local folder `{Path(str(evaluation.get('base_model'))).name}`"


def _head_text(task: FineTunedTask, config: ClayConfig) -> str:
    encoder = (
        f"the Clay encoder ({_shape_text(config.hidden_size, config.num_hidden_layers, config.num_attention_heads)})"
    )
    if task.name != "semantic-segmentation":
        return f"{encoder} → the mean of its patch tokens (the v0 chip embedding) → a linear layer"
    fusion = "averaged" if config.feature_fusion == "mean" else "concatenated"
    head = (
        "a feature-pyramid neck and a UperNet head"
        if config.decode_head_type == "upernet"
        else "an FCN head with pixel-shuffle upsampling"
    )
    return (
        f"{encoder} as a backbone (feature maps of blocks {list(config.out_indices)}, band groups {fusion}) → {head}; "
        "logits at the input size"
    )


def _output_text(task: FineTunedTask, config: ClayConfig) -> str:
    if task.name == "semantic-segmentation":
        return f"`logits` (B, {config.num_labels}, H, W): a score per class and pixel; the argmax is the class map"
    if task.name == "regression":
        return "`logits` (B, 1): the chip's value"
    return f"`logits` (B, {config.num_labels}): a score per class and chip"


def _label_text(task: FineTunedTask, config: ClayConfig) -> str:
    if task.name == "regression":
        return "One value per chip (regression, `problem_type: regression`): no classes."
    rows = "\n".join(f"| {index} | {name} |" for index, name in enumerate(_label_names(config)))
    ignored = (
        f" Label value {config.ignore_index} (`ignore_index`) marks pixels that were not scored."
        if task.name == "semantic-segmentation"
        else ""
    )
    return f"`config.id2label` names the class of each logit.{ignored}\n\n| id | label |\n|---|---|\n{rows}"


def _intended_use(task: FineTunedTask, config: ClayConfig) -> str:
    if task.name == "regression":
        return "Estimating a chip-level value from Sentinel-2 / Sentinel-1 / DEM chips like those it was trained on."
    unit = "each pixel" if task.name == "semantic-segmentation" else "each chip"
    return f"Labelling {unit} of Sentinel-2 / Sentinel-1 / DEM chips as one of: {', '.join(_label_names(config))}."


def _logits_shape(task: FineTunedTask, config: ClayConfig) -> str:
    if task.name == "semantic-segmentation":
        return f"(1, {config.num_labels}, {config.image_size}, {config.image_size})"
    return f"(1, {config.num_labels})"


def _prediction_line(task: FineTunedTask) -> str:
    if task.name == "semantic-segmentation":
        return "class_map = logits.argmax(dim=1)  # (1, H, W) class ids; names in model.config.id2label"
    if task.name == "regression":
        return "value = float(logits[0, 0])"
    return "label = model.config.id2label[int(logits.argmax(dim=-1))]"


def pipeline_task(task: FineTunedTask) -> str:
    """The Hub task id whose pipeline the repository ships (`custom_pipelines`); chip regression, which has none on
    the Hub, is served by the classification pipeline."""
    return task.pipeline_tag or "image-classification"


def _pipeline_output(task: FineTunedTask) -> str:
    if task.name == "semantic-segmentation":
        return 'one `{"label": name, "mask": PIL image}` per class present (as transformers\' image-segmentation)'
    if task.name == "regression":
        return 'the value as `[{"label": name, "score": value}]`'
    return 'the labels, best first, as `[{"label": name, "score": probability}, …]`'


def _predict_text(task: FineTunedTask) -> str:
    if task.name == "semantic-segmentation":
        return (
            "It writes one uint8 GeoTIFF class map per chip, named after it, on the chip's grid (CRS, transform, "
            "size), 255 where the chip had nodata."
        )
    return "It writes `predictions.parquet` (GeoParquet: the prediction and the footprint of each chip)."


def _finetuning_text(task: FineTunedTask, evaluation: dict, base: str | None) -> str:
    if not evaluation.get("metrics") and not evaluation.get("task"):
        return "No fine-tuning record came with these weights (no `eval_results.json` from `clay-finetune`)."
    start = "from random weights" if evaluation.get("from_scratch") else f"from {_base_model_name(evaluation, base)}"
    trained = "only the head (the encoder was frozen)" if evaluation.get("freeze_encoder") else "the whole model"
    text = (
        f"Fine-tuned with `clay-finetune` (`transformers.Trainer`, task `{task.name}`) {start}, training {trained}, "
        f"on {evaluation.get('num_train_chips', 'an unrecorded number of')} chips; "
        f"{evaluation.get('num_validation_chips', 'an unrecorded number of')} validation chips "
        f"({_dataset_name(evaluation)}). {evaluation.get('bad_chips_skipped', 0)} unreadable chips were skipped. "
        f"Final training loss {_number(evaluation.get('train_loss'))}."
    )
    training = evaluation.get("training")
    if training:
        batch = (
            training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * training["world_size"]
        )
        text += (
            f" {training['global_step']:,} optimizer steps, learning rate {training['learning_rate']:g}, effective "
            f"batch {batch} ({training['per_device_train_batch_size']} per device × "
            f"{training['gradient_accumulation_steps']} accumulation steps × {training['world_size']} devices), "
            f"{training['precision']}, seed {training['seed']}."
        )
    return text


def _dataset_name(evaluation: dict) -> str:
    """The chips' folder name as `clay-finetune` recorded it (no local path on the card)."""
    return f"`{Path(str(evaluation.get('dataset', 'not recorded'))).name}`"


def _task_scores(task: FineTunedTask, evaluation: dict) -> dict[str, float | None]:
    """The scores of `eval_results.json` that are task metrics (no loss, no runtime), None where not measured."""
    scores = {}
    for key, value in (evaluation.get("metrics") or {}).items():
        if task.metric_type(key) is not None:
            scores[key] = None if value is None or not math.isfinite(value) else float(value)
    return scores


def _scores_text(task: FineTunedTask, evaluation: dict) -> str:
    scores = _task_scores(task, evaluation)
    if not scores:
        return (
            "No evaluation results were supplied with these weights. `clay-finetune` writes them to "
            "`eval_results.json` after training, on the validation chips."
        )
    rows = "\n".join(
        f"| {key} | {'not measured (class absent)' if value is None else f'{value:.4f}'} |"
        for key, value in scores.items()
    )
    return (
        f"Scores on the {evaluation.get('num_validation_chips', '')} validation chips ({_dataset_name(evaluation)}) "
        f"after training, from `eval_results.json`:\n\n| metric | value |\n|---|---|\n{rows}"
    )


def _finetuned_eval_results(task: FineTunedTask, evaluation: dict) -> list[EvalResult] | None:
    """The model-index: every measured task score of `eval_results.json`, on the validation chips."""
    common = dict(
        task_type=task.pipeline_tag or OTHER_TASK,  # Hub task ids; chip regression has none of its own
        task_name=task.title,
        **_dataset_fields(evaluation),
        dataset_split="validation",
    )
    results = [
        EvalResult(metric_name=key, metric_type=task.metric_type(key), metric_value=value, **common)
        for key, value in _task_scores(task, evaluation).items()
        if value is not None  # a class absent from the validation chips was not measured: no number to publish
    ]
    return results or None


__all__ = [
    "CARD_DIR",
    "EO_TAGS",
    "FINETUNED_TASKS",
    "LICENSE_FILE",
    "PRETRAINED_PIPELINE_TAG",
    "TAGS",
    "FineTunedTask",
    "WeightsOrigin",
    "finetuned_tags",
    "finetuned_task",
    "hub_base_model",
    "is_repo_id",
    "pipeline_task",
    "render_finetuned_card",
    "render_model_card",
    "weights_from_scratch",
]
