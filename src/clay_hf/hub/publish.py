"""Publishing Clay on the Hub: a repository folder with weights, processor, remote code, model card and licence.

`stage_repository` assembles and validates the folder, for a pretrained Clay (`ClayModel`,
`ClayForMaskedImageModeling`) or a fine-tuned one (`ClayForSemanticSegmentation`, `ClayForImageClassification`, as
`clay-finetune` writes it); `upload_repository` sends it with `huggingface_hub` (`create_repo`, `upload_folder`), the
token taken from the environment (`HF_TOKEN`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard

from ..evaluation.reconstruction import EVAL_RESULTS_NAME as EVAL_RESULTS
from ..models.clay.convert_clay_original_checkpoint import CONVERSION_RECORD_NAME as CONVERSION_RECORD
from ..models.clay.pipeline_clay import CLAY_PIPELINES
from ..utils.errors import ClayUserError, IntegrityError
from ..utils.outputs import OutputLock, atomic_folder, foreign_contents, read_json, verify_checksums, write_json
from .cards import (
    CARD_DIR,
    LICENSE_FILE,
    PRETRAINED_PIPELINE_TAG,
    TAGS,
    TRAINING_SUMMARY,
    WeightsOrigin,
    finetuned_tags,
    finetuned_task,
    hub_base_model,
    is_repo_id,
    pipeline_task,
    render_finetuned_card,
    render_model_card,
    weights_from_scratch,
)
from .weights_license import OPENRAIL, OWN_WEIGHTS_LICENSE, WeightsLicense, license_file_text, license_problems

#: The Hub remote-code unit: `models/clay/` of this package.
REMOTE_CODE_DIR = Path(__file__).resolve().parents[1] / "models" / "clay"
STAGING_MARKER = ".clay-staging"  # marks a folder this tool made, so that a later run may empty it
#: The remote code uploaded with a model: every module of `models/clay/` but its `__init__` and the checkpoint
#: converter (which is not shipped).
REMOTE_CODE = tuple(
    sorted(
        path.name
        for path in REMOTE_CODE_DIR.glob("*.py")
        if path.name not in ("__init__.py", "convert_clay_original_checkpoint.py")
    )
)
ENCODER_AUTO_MAP = {"AutoConfig": "configuration_clay.ClayConfig", "AutoModel": "modeling_clay.ClayModel"}
#: The task heads, for fine-tuning a pretrained repository or loading a fine-tuned one with trust_remote_code.
HEAD_AUTO_MAP = {
    "AutoModelForSemanticSegmentation": "modeling_clay_heads.ClayForSemanticSegmentation",
    "AutoModelForImageClassification": "modeling_clay_heads.ClayForImageClassification",
}
MODEL_AUTO_MAP = {
    **ENCODER_AUTO_MAP,
    "AutoModelForMaskedImageModeling": "modeling_clay.ClayForMaskedImageModeling",
    "AutoModelForPreTraining": "modeling_clay.ClayForMaskedImageModeling",
    **HEAD_AUTO_MAP,
}


def custom_pipelines(hub_task: str) -> dict[str, dict[str, Any]]:
    """config.json's `custom_pipelines`: for the Hub task id of the card, the Clay pipeline class in
    `pipeline_clay.py` (shipped with the repository) and its Auto class, as transformers'
    `pipeline(task, model=repo, trust_remote_code=True)` reads them."""
    pipeline_class, auto_class = next((cls, auto) for cls, auto, task in CLAY_PIPELINES.values() if task == hub_task)
    return {hub_task: {"impl": f"pipeline_clay.{pipeline_class.__name__}", "pt": [auto_class], "type": "image"}}


PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "image_processing_clay.ClayImageProcessor"}
REQUIRED_FILES = ("config.json", "preprocessor_config.json")
WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"  # one file, or shards and an index


class StagingError(ClayUserError, ValueError):
    """The model folder or the staged repository is not fit to publish."""


@dataclass
class StagedRepository:
    folder: Path
    repo_id: str
    files: list[str]
    reused: bool = False  # True when `folder` was an earlier staging folder of this tool, emptied and refilled
    notes: list[str] = field(default_factory=list)  # what the publisher should know (printed by clay-publish)


# ---------------------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------------------


def stage_repository(
    model_dir: str | PathLike,
    staging_dir: str | PathLike,
    repo_id: str,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> StagedRepository:
    """Assemble the Hub repository for the `save_pretrained` folder `model_dir` in `staging_dir`, and validate it.

    A pretrained Clay gets the pretraining card; a fine-tuned one (a task head in the config's `architectures`) the
    fine-tuned card, whose `base_model` is the Hub id `clay-finetune` recorded, or `base_model` when given (for a
    model fine-tuned from a local folder). `staging_dir` must be new, empty, or a staging folder this tool made
    before (it holds `STAGING_MARKER`); it is never the model folder, inside it, or a folder that contains it.
    Nothing else is ever deleted. One staging run writes a folder at a time (its `OutputLock`).

    The weights' licence follows their origin through every base they were trained from (see
    [`weights_from_scratch`], [`weights_license`]): OpenRAIL-M for converted Clay v0 weights and what was trained
    from them; `license` (a Hub licence id, default apache-2.0; `other` with `license_name` and `license_link`) for
    weights that descend from random initialisation alone.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    weights = _weights_files(model_dir)
    if not weights:
        missing.append(f"{WEIGHTS_FILE} (or {WEIGHTS_INDEX} and its shards)")
    if missing:
        raise StagingError(f"{model_dir}: missing {', '.join(missing)} (a save_pretrained folder with its processor)")
    config = read_json(model_dir / "config.json")
    task = finetuned_task(config)
    if base_model is not None and task is None:
        raise StagingError(f"{model_dir}: --base_model is for fine-tuned models; this folder holds a pretrained Clay.")
    if base_model is not None and not is_repo_id(base_model):
        raise StagingError(f"--base_model {base_model!r} is not a Hub repository id (OWNER/NAME).")
    weights_licence = weights_license(weights_from_scratch(model_dir), license, license_name, license_link)
    check_model_files(model_dir, weights)
    final, reused = prepare_staging_dir(staging_dir, model_dir)
    notes: list[str] = []
    # one writer per staged repository (its lock); the staged repository is complete or absent
    with OutputLock(final), atomic_folder(final.resolve()) as staging:
        _mark_staging(staging)
        for name in (*weights, TRAINING_SUMMARY, EVAL_RESULTS, CONVERSION_RECORD):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staging / name)
        auto_map = (
            MODEL_AUTO_MAP if task is None else {**ENCODER_AUTO_MAP, task.auto_class: HEAD_AUTO_MAP[task.auto_class]}
        )
        hub_task = PRETRAINED_PIPELINE_TAG if task is None else pipeline_task(task)
        write_json(
            staging / "config.json",
            {**config, "auto_map": auto_map, "custom_pipelines": custom_pipelines(hub_task)},
            sort_keys=True,
        )
        processor_config = {**read_json(model_dir / "preprocessor_config.json"), "auto_map": PROCESSOR_AUTO_MAP}
        write_json(staging / "preprocessor_config.json", processor_config, sort_keys=True)
        for name in REMOTE_CODE:
            shutil.copy2(REMOTE_CODE_DIR / name, staging / name)
        (staging / LICENSE_FILE).write_text(license_file_text(weights_licence))

        if task is None:
            render_model_card(model_dir, repo_id, weights_licence).save(staging / "README.md")
            validate_model_card(staging / "README.md", license=weights_licence)
        else:
            render_finetuned_card(model_dir, repo_id, task, base_model, weights_licence).save(staging / "README.md")
            validate_model_card(staging / "README.md", task.pipeline_tag, finetuned_tags(task), weights_licence)
            notes += _base_model_notes(model_dir, base_model)
    staging = final
    files = sorted(
        str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file() and path.name != STAGING_MARKER
    )
    return StagedRepository(staging, repo_id, files, reused, notes)


def _weights_files(model_dir: Path) -> list[str]:
    """The weights of a save_pretrained folder: model.safetensors, or (saved with `max_shard_size`) the index and
    every shard it names; empty when they are not all there."""
    if (model_dir / WEIGHTS_FILE).is_file():
        return [WEIGHTS_FILE]
    if not (model_dir / WEIGHTS_INDEX).is_file():
        return []
    shards = sorted(set(read_json(model_dir / WEIGHTS_INDEX)["weight_map"].values()))
    return [WEIGHTS_INDEX, *shards] if all((model_dir / shard).is_file() for shard in shards) else []


def weights_license(
    from_scratch: bool | None, license: str | None, name: str | None = None, link: str | None = None
) -> WeightsLicense:
    """The licence of weights of this origin ([`weights_from_scratch`], followed through every base): `from_scratch`
    False (converted Clay v0 weights, or trained from them at any remove) is OpenRAIL-M, whose terms bind
    derivatives, so no other `license` is accepted; True (descended from random weights alone) is `license`, by
    default the code's apache-2.0; None (no record) is OpenRAIL-M unless the publisher names a `license`."""
    if license is None and (name or link):
        raise StagingError("--license_name and --license_link go with --license other.")
    if license is None:
        return WeightsLicense(OWN_WEIGHTS_LICENSE) if from_scratch else WeightsLicense()
    if from_scratch is False and license != OPENRAIL:
        raise StagingError(
            f"--license {license}: these weights derive from the Clay v0 weights (converted, or trained from them), "
            "released under OpenRAIL-M, whose terms pass on to derivatives, or from a base model whose records cannot "
            "be read here (a Hub id, a folder no longer there); another licence is for weights that descend from "
            "random initialisation alone (clay-pretrain without --model_name_or_path, clay-finetune --from_scratch, "
            "and models trained from those)."
        )
    problems = license_problems(license, name, link)
    if problems:
        raise StagingError(f"--license {license}: " + "; ".join(problems))
    return WeightsLicense(license, name, link)


def _base_model_notes(model_dir: Path, base_model: str | None) -> list[str]:
    """A base model `clay-finetune` recorded as a local folder cannot be linked on the Hub: say how to link it."""
    evaluation = read_json(model_dir / EVAL_RESULTS) if (model_dir / EVAL_RESULTS).is_file() else {}
    recorded = evaluation.get("base_model")
    if not recorded or hub_base_model(evaluation, base_model):
        return []
    return [
        f"the base model was the local folder {recorded}: the card names it but cannot link it; pass "
        "--base_model OWNER/NAME (its Hub repository) to set base_model in the card's metadata"
    ]


def check_model_files(model_dir: str | PathLike, weights: list[str] | None = None) -> None:
    """Refuse a model folder whose files were damaged after they were saved: the files its `checksums.sha256`
    lists (folders `clay-pretrain` and `clay-finetune` wrote), each safetensors file of its weights (its header must
    cover the file: a truncated copy is refused), and the JSON files the card reads. Each refusal names the file."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    verify_checksums(model_dir, required=False)
    for name in weights if weights is not None else _weights_files(model_dir):
        if not name.endswith(".safetensors"):
            read_json(model_dir / name)  # the index of a sharded folder
            continue
        try:
            with safe_open(model_dir / name, "pt") as opened:
                opened.keys()
        except Exception as error:  # safetensors raises its own error types for a short or garbled file
            raise IntegrityError(
                f"{model_dir / name} is damaged or truncated ({error}): save the model again"
            ) from error
    for name in ("config.json", "preprocessor_config.json", TRAINING_SUMMARY, EVAL_RESULTS, CONVERSION_RECORD):
        if (model_dir / name).is_file():
            read_json(model_dir / name)


def prepare_staging_dir(staging_dir: str | PathLike, model_dir: str | PathLike) -> tuple[Path, bool]:
    """Check that `staging_dir` may receive the staged repository; returns (folder, reused). Refuses any folder it
    did not make.

    Allowed: a folder that does not exist, an empty folder, or a folder holding `STAGING_MARKER` from an earlier
    run (`reused`: replaced whole once the new repository is complete). Refused: the model folder, a folder inside
    it or containing it, a file, and any other non-empty folder.
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
    foreign = foreign_contents(staging, marker=STAGING_MARKER)
    if foreign:
        raise StagingError(
            f"--staging_dir {staging_dir} is not empty and was not made by this tool: refusing to delete its "
            f"contents ({', '.join(foreign[:5])}). Choose a new or empty folder (or leave --staging_dir out for a "
            "temporary one)."
        )
    reused = staging.is_dir() and any(staging.iterdir())  # a staging folder of an earlier run: ours, replaced whole
    return Path(staging_dir), reused


def _mark_staging(folder: Path) -> None:
    (folder / STAGING_MARKER).write_text(
        "A Hub repository staged by clay_hf (clay-publish). The next staging run into this folder replaces it.\n"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def validate_model_card(
    path: str | PathLike,
    pipeline_tag: str | None = PRETRAINED_PIPELINE_TAG,
    tags: list[str] = TAGS,
    license: WeightsLicense | None = None,
) -> ModelCard:
    """Parse the card and check what can be checked offline: required metadata, licence fields as the Hub's
    model-card spec has them (and, given `license`, that licence), no placeholder."""
    card = ModelCard.load(path)
    data = card.data
    fields = {key: getattr(data, key, None) for key in ("license", "license_name", "license_link")}
    problems = license_problems(*fields.values())
    if license is not None and {key: value for key, value in fields.items() if value} != license.metadata():
        problems.append(f"license must be {license.metadata()} (the weights' licence), not {fields}")
    if data.library_name != "transformers" or data.pipeline_tag != pipeline_tag:
        problems.append(f"library_name must be transformers and pipeline_tag {pipeline_tag}")
    if data.base_model and getattr(data, "base_model_relation", None) != "finetune":
        problems.append("base_model needs base_model_relation: finetune")
    missing_tags = sorted(set(tags) - set(data.tags or []))
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
    "CARD_DIR",
    "STAGING_MARKER",
    "StagedRepository",
    "StagingError",
    "WeightsLicense",
    "WeightsOrigin",
    "check_model_files",
    "finetuned_task",
    "prepare_staging_dir",
    "render_model_card",
    "stage_repository",
    "upload_repository",
    "validate_model_card",
    "weights_from_scratch",
    "weights_license",
]
