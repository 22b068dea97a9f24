"""Fine-tune Clay with `transformers.Trainer`: semantic segmentation, chip classification or chip regression.

    python scripts/finetune.py --task semantic-segmentation --model_name_or_path clay-v0.1 --train_dir floods/ \
        --num_labels 2 --output_dir runs/floods [--freeze_encoder] [--from_scratch] [TrainingArguments flags]

`accelerate launch scripts/finetune.py …` runs it on several devices; bf16, accumulation, checkpoints and resume
(`--resume_from_checkpoint`), TensorBoard (`--report_to`) all come from `Trainer`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, Trainer, TrainingArguments
from transformers.utils.logging import get_logger

from ..data.chips import file_band_names
from ..evaluation.reconstruction import EVAL_RESULTS_NAME, write_eval_results
from ..models.clay.image_processing_clay import CLAY_V0_BAND_STATISTICS, ClayImageProcessor
from ..models.clay.modeling_clay_heads import ClayForImageClassification, ClayForSemanticSegmentation
from ..utils.model_source import from_pretrained_checked, model_reference
from ..utils.outputs import OutputLock, make_folder, model_folder, remove_partials
from .data import (
    TASKS,
    ChipLabelDataset,
    ChipReader,
    ClayDataCollator,
    SegmentationDataset,
    labelled_chips,
    processor_with_statistics,
    segmentation_pairs,
    train_validation,
)
from .scores import StreamingMetrics, predictions_for_metrics

logger = get_logger(__name__)


@dataclass
class FineTuningArguments:
    """What to fine-tune on what; every `TrainingArguments` flag is accepted besides these."""

    task: str = field(metadata={"help": f"one of {', '.join(TASKS)}", "choices": TASKS})
    model_name_or_path: str = field(metadata={"help": "a pretrained Clay folder or Hub id (MIM or encoder-only)"})
    train_dir: str = field(
        metadata={"help": "segmentation: a folder with images/ and labels/; classification: class folders or a CSV"}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "default: the stable hash split of train_dir"})
    validation_fraction: float = field(default=0.2, metadata={"help": "share of train_dir for validation"})
    bands: list[str] | None = field(
        default=None, metadata={"help": "names of the files' bands, in file order (default: band descriptions)"}
    )
    date: str | None = field(default=None, metadata={"help": "YYYY-MM-DD of chips that carry no date"})
    num_labels: int | None = field(default=None, metadata={"help": "classes (segmentation; default: from id2label)"})
    id2label: str | None = field(
        default=None, metadata={"help": 'class names: "water,land" or JSON {"0": "water", "1": "land"}'}
    )
    ignore_index: int = field(default=255, metadata={"help": "label value that is not scored"})
    freeze_encoder: bool = field(default=False, metadata={"help": "train only the new head (a frozen backbone)"})
    from_scratch: bool = field(
        default=False, metadata={"help": "same architecture from random weights: the baseline for pretraining"}
    )
    decode_head_type: str = field(default="upernet", metadata={"help": "upernet or fcn", "choices": ("upernet", "fcn")})
    feature_fusion: str = field(
        default="mean", metadata={"help": "band groups averaged or concatenated", "choices": ("mean", "concat")}
    )
    dice_loss_weight: float = field(default=0.0, metadata={"help": "add this × soft Dice to the cross-entropy"})
    augment: bool = field(default=False, metadata={"help": "random flips and 90° rotations of image and label"})
    image_mean: list[float] | None = field(default=None, metadata={"help": "raw mean per model band"})
    image_std: list[float] | None = field(default=None, metadata={"help": "raw standard deviation per model band"})
    compute_statistics: bool = field(
        default=False, metadata={"help": "normalise with statistics of the training chips (saved with the model)"}
    )


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """'water,land' or '{"0": "water", "1": "land"}' → {0: 'water', 1: 'land'}."""
    if not text:
        return None
    if text.lstrip().startswith("{"):
        return {int(key): str(value) for key, value in json.loads(text).items()}
    return dict(enumerate(name.strip() for name in text.split(",")))


def input_band_names(args: FineTuningArguments, first_image: str) -> list[str] | None:
    """The chips' band names: `--bands`, else the first training image's band names by the data reader's rule
    (descriptions, aliases such as B02 included; None if they name no band)."""
    if args.bands:
        return list(args.bands)
    return file_band_names(first_image)


def build_model(
    args: FineTuningArguments,
    label_names: dict[int, str] | None,
    num_labels: int,
    input_bands: list[str] | None = None,
):
    """The task model: the pretrained encoder with new heads, or (`from_scratch`) all random. When the chips lack
    some of the model's bands, the model keeps the band groups the chips complete (`bands=` of `from_pretrained`)."""
    overrides: dict[str, Any] = {
        "num_labels": num_labels,
        "ignore_index": args.ignore_index,
        "decode_head_type": args.decode_head_type,
        "feature_fusion": args.feature_fusion,
        "dice_loss_weight": args.dice_loss_weight,
    }
    if label_names is not None:
        overrides.update(id2label=label_names, label2id={name: index for index, name in label_names.items()})
    if args.task == "semantic-segmentation":
        model_class = ClayForSemanticSegmentation
    else:
        model_class = ClayForImageClassification
        overrides["problem_type"] = "regression" if args.task == "regression" else "single_label_classification"
    config = from_pretrained_checked(AutoConfig, args.model_name_or_path)
    if input_bands is not None and not set(config.band_names) <= set(input_bands):
        overrides["bands"] = input_bands
    if args.from_scratch:
        return model_class(AutoConfig.from_pretrained(args.model_name_or_path, **overrides))
    return model_class.from_pretrained(args.model_name_or_path, **overrides)


def base_processor(args: FineTuningArguments, model_bands: list[str]) -> ClayImageProcessor | None:
    """Given statistics, else the processor saved with the model, else the v0 statistics of the bands that have
    them; None when no band has any (statistics missing here are computed from the training chips)."""
    if args.image_mean is not None or args.image_std is not None:
        return ClayImageProcessor(band_names=model_bands, image_mean=args.image_mean, image_std=args.image_std)
    try:
        return ClayImageProcessor.from_pretrained(args.model_name_or_path)
    except OSError:
        known = [band for band in model_bands if band in CLAY_V0_BAND_STATISTICS]
        return ClayImageProcessor(band_names=known) if known else None


def build_datasets(args: FineTuningArguments, reader: ChipReader, label_names: dict[int, str] | None, num_labels: int):
    if args.task == "semantic-segmentation":
        train, validation = train_validation(
            args.train_dir, args.validation_dir, segmentation_pairs, args.validation_fraction
        )
        make = lambda examples, augment: SegmentationDataset(  # noqa: E731
            examples, reader, num_labels, args.ignore_index, augment
        )
    else:
        find = lambda source: labelled_chips(source, regression=args.task == "regression")  # noqa: E731
        train, validation = train_validation(args.train_dir, args.validation_dir, find, args.validation_fraction)
        label2id = None if label_names is None else {name: index for index, name in label_names.items()}
        make = lambda examples, augment: ChipLabelDataset(examples, reader, label2id, augment)  # noqa: E731
    if not validation:
        raise ValueError(f"no validation examples: give --validation_dir or more chips in {args.train_dir}")
    return make(train, args.augment), make(validation, False)


def first_training_image(args: FineTuningArguments) -> str:
    if args.task == "semantic-segmentation":
        return segmentation_pairs(args.train_dir)[0][0]
    return labelled_chips(args.train_dir, regression=args.task == "regression")[0][0]


def resolve_labels(args: FineTuningArguments) -> tuple[dict[int, str] | None, int]:
    """Class names and count: from --id2label / --num_labels, or the class folders / CSV labels."""
    label_names = parse_label_names(args.id2label)
    if args.task == "regression":
        return None, 1
    if args.task == "image-classification" and label_names is None:
        names = sorted({str(label) for _, label in labelled_chips(args.train_dir)})
        label_names = dict(enumerate(names))
    num_labels = args.num_labels or (len(label_names) if label_names else None)
    if num_labels is None:
        raise ValueError("give --num_labels (or --id2label) for semantic segmentation")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(f"--id2label names {len(label_names)} classes but --num_labels is {num_labels}")
    return label_names, num_labels


def training_record(training_args: TrainingArguments, global_step: int) -> dict[str, Any]:
    """The `Trainer` settings a model card reports: steps, learning rate, effective batch, precision, devices."""
    return {
        "global_step": global_step,
        "learning_rate": training_args.learning_rate,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": training_args.world_size,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "seed": training_args.seed,
    }


def finetune(args: FineTuningArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Train, evaluate, save the model with its processor and `eval_results.json`; return the results. The run holds
    the output folder's lock (one run per output folder: another is refused, naming this one)."""
    output_dir = make_folder(training_args.output_dir)
    main = training_args.process_index == 0
    lock = OutputLock(output_dir).acquire() if main else None
    try:
        if lock is not None:
            remove_partials(output_dir)  # what a killed run left unfinished
        return train_and_save(args, training_args)
    finally:
        if lock is not None:
            lock.release()


def train_and_save(args: FineTuningArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The run itself (on every process): train, evaluate, save; [`finetune`] holds the output folder."""
    label_names, num_labels = resolve_labels(args)
    model = build_model(args, label_names, num_labels, input_band_names(args, first_training_image(args)))
    if args.freeze_encoder:
        model.freeze_encoder()
    model_bands = list(model.config.band_names)
    processor = base_processor(args, model_bands)
    reader = ChipReader(model_bands, [0.0] * len(model_bands), args.bands, args.date)  # fill values: see below
    train_dataset, eval_dataset = build_datasets(args, reader, label_names, num_labels)
    unknown = [band for band in model_bands if processor is None or band not in processor.band_names]
    if args.compute_statistics or unknown:
        recompute = None if args.compute_statistics else unknown
        logger.info(
            "normalisation statistics of %s from %d training chips", recompute or "all bands", len(train_dataset)
        )
        processor = processor_with_statistics(processor, reader, train_dataset.headers, recompute)
    reader.fill_values = processor.band_statistics(model_bands)[0]

    training_args.remove_unused_columns = False
    training_args.batch_eval_metrics = True
    training_args.label_names = ["labels"]
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ClayDataCollator(processor, model_bands),
        processing_class=processor,
        compute_metrics=StreamingMetrics(args.task, num_labels, args.ignore_index, label_names),
        preprocess_logits_for_metrics=predictions_for_metrics(args.task),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    results = {
        "task": args.task,
        "base_model": None if args.from_scratch else model_reference(args.model_name_or_path),
        "base_model_is_local": Path(args.model_name_or_path).is_dir(),  # a folder here, not a Hub id
        "from_scratch": args.from_scratch,
        "freeze_encoder": args.freeze_encoder,
        "labels": label_names,
        "metrics": {key.removeprefix("eval_"): value for key, value in metrics.items()},
        "train_loss": train_result.training_loss,
        "training": training_record(training_args, trainer.state.global_step),
        "num_train_chips": len(train_dataset),
        "num_validation_chips": len(eval_dataset),
        "bad_chips_skipped": len(train_dataset.bad) + len(eval_dataset.bad),
        "dataset": args.validation_dir or f"{args.train_dir} (hash split, {args.validation_fraction:.0%})",
    }
    save_outputs(trainer, Path(training_args.output_dir), results)
    return results


def save_outputs(trainer: Trainer, output_dir: Path, results: dict[str, Any]) -> None:
    """The model, its processor, `eval_results.json` and their `checksums.sha256`, each file atomic (the folder also
    holds the Trainer's checkpoints, which the checksums do not cover; the checksums and `eval_results.json` go last,
    once the model is complete)."""
    main = trainer.is_world_process_zero()
    with model_folder(output_dir, EVAL_RESULTS_NAME, shared=True) if main else nullcontext(output_dir) as staging:
        if main:
            trainer.save_model(str(staging))
            write_eval_results(results, staging)
    if main:
        logger.info("wrote %s: %s", output_dir / EVAL_RESULTS_NAME, results["metrics"])


__all__ = ["FineTuningArguments", "build_model", "finetune", "parse_label_names"]
