"""Publishing a fine-tuned Clay: the staged folder of a `clay-finetune` output loads through the task's Auto class
without clay_hf, and its card states the task, labels, base model, inputs and the scores of `eval_results.json`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import random_inputs, small_config
from huggingface_hub import ModelCard

from clay_hf import (
    ClayForImageClassification,
    ClayForMaskedImageModeling,
    ClayForSemanticSegmentation,
    ClayImageProcessor,
)
from clay_hf.commands.finetune import run as finetune_main
from clay_hf.commands.publish import main as publish_main
from clay_hf.finetuning.synthetic import write_synthetic_classification, write_synthetic_segmentation
from clay_hf.hub.publish import StagingError, stage_repository
from clay_hf.utils.errors import IntegrityError
from clay_hf.utils.outputs import read_checksums, write_checksums

BASE_ID = "made-with-clay/Clay"


class Published(NamedTuple):
    repo_id: str
    model_class: type
    auto_class: str
    labels: dict[int, str]
    scores: set[str]  # the scores of eval_results.json that the card publishes


TASKS = {
    "semantic-segmentation": Published(
        "made-with-clay/Clay-floods",
        ClayForSemanticSegmentation,
        "AutoModelForSemanticSegmentation",
        {0: "land", 1: "water"},
        {"mean_iou", "pixel_accuracy", "mean_f1", "iou_land", "iou_water", "f1_land", "f1_water"},
    ),
    "image-classification": Published(
        "made-with-clay/Clay-landcover",
        ClayForImageClassification,
        "AutoModelForImageClassification",
        {0: "bare", 1: "water"},
        {"accuracy", "macro_f1"},
    ),
}
PIPELINE_TAGS = {"semantic-segmentation": "image-segmentation", "image-classification": "image-classification"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict[str, Path]:
    """`clay-finetune` outputs (two optimizer steps from a tiny pretrained folder) for segmentation and classification."""
    root = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config(neck_hidden_size=16, decode_hidden_size=16)).save_pretrained(root / "mim")
    write_synthetic_segmentation(root / "floods", 4, size=32, seed=1)
    write_synthetic_segmentation(root / "floods_val", 2, size=32, seed=2)
    write_synthetic_classification(root / "chips", 2, size=32, seed=1)
    write_synthetic_classification(root / "chips_val", 1, size=32, seed=2)
    data = {"semantic-segmentation": ("floods", "--id2label", "land,water"), "image-classification": ("chips",)}
    outputs = {}
    for task, (folder, *extra) in data.items():
        outputs[task] = root / task
        finetune_main([
            "--task", task, "--model_name_or_path", str(root / "mim"), "--output_dir", str(outputs[task]),
            "--train_dir", str(root / folder), "--validation_dir", str(root / f"{folder}_val"), *extra,
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
            "--use_cpu", "--seed", "0", "--disable_tqdm", "true",
        ])  # fmt: skip
    return outputs


def publish(capsys, *args: str) -> str:
    capsys.readouterr()
    assert publish_main(["--dry_run", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def staged(finetuned, tmp_path_factory) -> dict[str, Path]:
    """Staged with `clay-publish --dry_run`: segmentation linked to its Hub base model, classification not."""
    folders = {}
    for task, model_dir in finetuned.items():
        folders[task] = tmp_path_factory.mktemp("staging") / "repo"
        link = ["--base_model", BASE_ID] if task == "semantic-segmentation" else []
        argv = ["--model_dir", str(model_dir), "--repo_id", TASKS[task].repo_id, "--staging_dir", str(folders[task])]
        assert publish_main(["--dry_run", *argv, *link]) == 0
    return folders


def eval_scores(folder: Path) -> dict:
    return json.loads((folder / "eval_results.json").read_text())["metrics"]


@pytest.mark.parametrize("task", TASKS)
def test_card_metadata_states_task_base_model_licence_and_the_eval_scores(finetuned, staged, task):
    model_class, auto_class, published = TASKS[task].model_class, TASKS[task].auto_class, TASKS[task].scores
    data = ModelCard.load(staged[task] / "README.md").data
    assert data.pipeline_tag == PIPELINE_TAGS[task] and data.library_name == "transformers"
    assert (data.license, data.license_name, data.license_link) == ("openrail", None, None)
    assert {"earth-observation", "remote-sensing", "fine-tuned", task} <= set(data.tags)
    if task == "semantic-segmentation":  # linked with --base_model (clay-finetune recorded a local folder)
        assert (data.base_model, data.base_model_relation) == (BASE_ID, "finetune")
    else:
        assert data.base_model is None and getattr(data, "base_model_relation", None) is None
    scores = eval_scores(finetuned[task])
    expected = {key: value for key, value in scores.items() if key in published and math.isfinite(value)}
    assert expected and set(expected) <= published
    assert {result.metric_name: result.metric_value for result in data.eval_results} == expected
    assert {(result.task_type, result.dataset_split) for result in data.eval_results} == {
        (PIPELINE_TAGS[task], "validation")
    }
    config = json.loads((staged[task] / "config.json").read_text())
    assert config["auto_map"][auto_class] == f"modeling_clay_heads.{model_class.__name__}"
    assert config["architectures"] == [model_class.__name__]


@pytest.mark.parametrize("task", TASKS)
def test_card_text_lists_labels_inputs_and_how_to_load(finetuned, staged, task):
    repo_id, auto_class, labels = TASKS[task].repo_id, TASKS[task].auto_class, TASKS[task].labels
    text = ModelCard.load(staged[task] / "README.md").text
    for index, name in labels.items():
        assert f"| {index} | {name} |" in text
    assert "| 12 | dem | 499.46 | 880.35 |" in text and "blue, green, red" in text and "32×32 pixels" in text
    assert "`timestep` (B, 3)" in text and "`latlon` (B, 2)" in text
    assert f'{auto_class}.from_pretrained("{repo_id}")' in text and "import clay_hf" in text
    assert f'{auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)' in text
    assert "OpenRAIL-M" in text and "## Prohibited uses" in text and "forbids using the model" in text
    assert "2 optimizer steps" in text and "2 validation chips" in text and "training the whole model" in text
    for key, value in eval_scores(finetuned[task]).items():
        if key in TASKS[task].scores:
            assert f"| {key} | {value:.4f} |" in text
    assert "{{" not in text and "runtime" not in text


PROGRAM = """
import json, sys
sys.modules["clay_hf"] = None  # clay_hf cannot be imported: only the repository's own code may run
import torch
import transformers
model = transformers.{auto_class}.from_pretrained({folder!r}, trust_remote_code=True).eval()
processor = transformers.AutoImageProcessor.from_pretrained({folder!r}, trust_remote_code=True)
inputs = {{key: torch.tensor(value) for key, value in json.loads(sys.stdin.read()).items()}}
with torch.no_grad():
    logits = model(**inputs).logits
print(json.dumps({{"model": type(model).__module__ + "." + type(model).__name__,
                  "processor": type(processor).__name__, "logits": logits.tolist()}}))
"""


@pytest.mark.parametrize("task", TASKS)
def test_staged_folder_loads_without_clay_hf_and_gives_the_same_logits(finetuned, staged, task, tmp_path):
    model_class, auto_class = TASKS[task].model_class, TASKS[task].auto_class
    model = model_class.from_pretrained(finetuned[task]).eval()
    inputs = random_inputs(model.config, seed=3)
    with torch.no_grad():
        expected = model(**inputs).logits
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(auto_class=auto_class, folder=str(staged[task]))],
        input=json.dumps({key: value.tolist() for key, value in inputs.items()}),
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["model"].startswith("transformers_modules.") and result["model"].endswith(model_class.__name__)
    assert result["processor"] == "ClayImageProcessor"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", TASKS)
def test_the_staged_repository_of_a_finetuning_run_ships_its_clay_pipeline(staged, task):
    config = json.loads((staged[task] / "config.json").read_text())
    pipeline_class = {
        "semantic-segmentation": "ClayImageSegmentationPipeline",
        "image-classification": "ClayImageClassificationPipeline",
    }[task]
    assert config["custom_pipelines"] == {
        PIPELINE_TAGS[task]: {
            "impl": f"pipeline_clay.{pipeline_class}",
            "pt": [TASKS[task].auto_class],
            "type": "image",
        }
    }
    assert (staged[task] / "pipeline_clay.py").is_file()


# --- the fault contract -----------------------------------------------------------------------------------------------


def test_a_finetuning_output_carries_checksums_and_publish_refuses_a_flipped_byte(finetuned, tmp_path):
    output = finetuned["image-classification"]
    listed = set(read_checksums(output))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "eval_results.json"} <= listed
    folder = tmp_path / "model"
    shutil.copytree(output, folder)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # a tensor's byte: the header still reads
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(IntegrityError, match=re.escape(f"{folder / 'model.safetensors'} is damaged")):
        stage_repository(folder, tmp_path / "repo", "o/landcover")
    assert not (tmp_path / "repo").exists()


# --- the base model --------------------------------------------------------------------------------------------------


def copy_with_results(source: Path, target: Path, **changes) -> Path:
    """A copy of a `clay-finetune` output as it would have recorded other results (checksums included)."""
    shutil.copytree(source, target)
    results = json.loads((target / "eval_results.json").read_text())
    (target / "eval_results.json").write_text(json.dumps({**results, **changes}))
    write_checksums(target, read_checksums(target))
    return target


def test_a_local_base_model_is_named_not_linked_and_the_publisher_told(finetuned, tmp_path, capsys):
    out = publish(
        capsys, "--model_dir", str(finetuned["image-classification"]), "--staging_dir", str(tmp_path / "repo")
    )
    assert "note: the base model was the local folder" in out and "--base_model OWNER/NAME" in out
    text = (tmp_path / "repo" / "README.md").read_text()
    assert "fine-tuned from the pretrained Clay model the local folder `mim`" in text
    assert "base_model:" not in text


def test_a_hub_base_model_recorded_by_finetune_is_linked(finetuned, tmp_path):
    folder = copy_with_results(
        finetuned["image-classification"], tmp_path / "model", base_model=BASE_ID, base_model_is_local=False
    )
    staged = stage_repository(folder, tmp_path / "repo", "made-with-clay/Clay-landcover")
    data = ModelCard.load(staged.folder / "README.md").data
    assert (data.base_model, data.base_model_relation) == (BASE_ID, "finetune") and not staged.notes


def test_a_model_trained_from_scratch_has_no_base_model(finetuned, tmp_path):
    folder = copy_with_results(
        finetuned["image-classification"], tmp_path / "model", base_model=None, from_scratch=True
    )
    staged = stage_repository(folder, tmp_path / "repo", "made-with-clay/Clay-landcover")
    card = ModelCard.load(staged.folder / "README.md")
    assert card.data.base_model is None and "trained from random weights" in card.text and not staged.notes


def test_base_model_must_be_a_hub_id_and_only_for_finetuned_models(finetuned, tmp_path):
    with pytest.raises(StagingError, match="not a Hub repository id"):
        stage_repository(finetuned["image-classification"], tmp_path / "a", "o/n", base_model="/local/folder")
    pretrained = finetuned["image-classification"].parent / "mim"
    shutil.copy(finetuned["image-classification"] / "preprocessor_config.json", pretrained)
    with pytest.raises(StagingError, match="--base_model is for fine-tuned models"):
        stage_repository(pretrained, tmp_path / "b", "o/n", base_model=BASE_ID)


def test_a_class_absent_from_the_validation_chips_is_not_published(finetuned, tmp_path):
    scores = {**eval_scores(finetuned["semantic-segmentation"]), "iou_water": float("nan"), "f1_water": None}
    folder = copy_with_results(finetuned["semantic-segmentation"], tmp_path / "model", metrics=scores)
    card = ModelCard.load(stage_repository(folder, tmp_path / "repo", "o/floods").folder / "README.md")
    names = {result.metric_name for result in card.data.eval_results}
    assert "iou_water" not in names and "f1_water" not in names and "iou_land" in names
    assert "| iou_water | not measured (class absent) |" in card.text


def test_a_regression_model_has_no_pipeline_tag_and_publishes_rmse_mae_r2(tmp_path):
    config = small_config(num_labels=1, problem_type="regression")
    folder = tmp_path / "biomass"
    ClayForImageClassification(config).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    scores = {"loss": 2.0, "rmse": 1.5, "mae": 1.2, "r2": 0.4, "runtime": 0.1}
    (folder / "eval_results.json").write_text(json.dumps({"task": "regression", "metrics": scores, "base_model": None}))
    staged = stage_repository(folder, tmp_path / "repo", "o/biomass")
    card = ModelCard.load(staged.folder / "README.md")
    assert card.data.pipeline_tag is None
    assert {result.metric_name: result.metric_value for result in card.data.eval_results} == {
        "rmse": 1.5, "mae": 1.2, "r2": 0.4
    }  # fmt: skip
    assert {result.metric_type for result in card.data.eval_results} == {"rmse", "mae", "r_squared"}
    assert "One value per chip" in card.text and "AutoModelForImageClassification" in card.text
    config = json.loads((staged.folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_clay_heads.ClayForImageClassification"


def test_a_pretrained_repository_loads_into_a_head_without_clay_hf(finetuned, tmp_path):
    """The pretrained repository's auto_map lists the heads: fine-tuning can start from it with trust_remote_code."""
    pretrained = tmp_path / "mim"
    shutil.copytree(finetuned["semantic-segmentation"].parent / "mim", pretrained)
    ClayImageProcessor().save_pretrained(pretrained)
    staged = stage_repository(pretrained, tmp_path / "repo", BASE_ID)
    program = f"""
import json, sys
sys.modules["clay_hf"] = None
import transformers
model = transformers.AutoModelForSemanticSegmentation.from_pretrained({str(staged.folder)!r}, trust_remote_code=True,
                                                                      num_labels=3)
print(json.dumps({{"name": type(model).__name__, "encoder": model.clay.embeddings.latlon_embedding.weight.tolist()}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    mim = ClayForMaskedImageModeling.from_pretrained(pretrained)
    assert result["name"] == "ClayForSemanticSegmentation"
    assert torch.equal(torch.tensor(result["encoder"]), mim.clay.embeddings.latlon_embedding.weight.detach())
