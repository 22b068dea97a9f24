"""Hub metadata by the model-card spec: the weights' licence follows their origin and is written as the spec has it,
the model-index uses Hub task ids and names its data honestly, sharded folders publish, and the pretrained card's
partial-input snippet loads quietly."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import pretrain_in_process, save_pretraining_model, small_config
from huggingface_hub import ModelCard

from clay_hf import ClayForImageClassification, ClayForMaskedImageModeling, ClayImageProcessor
from clay_hf.chipping import write_synthetic_chips
from clay_hf.hub.publish import StagingError, stage_repository, validate_model_card

REPO_ID = "made-with-clay/Clay"
HUB_TASKS = {"image-feature-extraction", "image-segmentation", "image-classification", "other"}
SUMMARY = {
    "global_step": 30, "chips_seen": 240, "epochs_completed": 3, "effective_batch_size": 8, "final_train_loss": 0.2,
    "final_validation_loss": 0.25, "mask_ratio": 0.75, "wall_time_seconds": 60, "hardware": {"device": "cpu"},
}  # fmt: skip
EVALUATION = {"masked_mse": 0.31, "masked_mse_per_group": {"rgb": 0.2}, "num_chips": 4, "split": "validation"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return save_pretraining_model(tmp_path_factory.mktemp("pretrained") / "model")


def with_records(source: Path, target: Path, **records: dict) -> Path:
    """A copy of the model folder with the given JSON records (file stem → content)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    for stem, content in records.items():
        (target / f"{stem}.json").write_text(json.dumps(content))
    return target


def card_of(staged) -> ModelCard:
    return ModelCard.load(staged.folder / "README.md")


def licence_fields(card: ModelCard) -> tuple:
    return card.data.license, card.data.license_name, card.data.license_link


# --- the weights' licence ----------------------------------------------------------------------------------------


def test_converted_weights_are_openrail_alone_and_keep_it(pretrained, tmp_path):
    folder = with_records(pretrained, tmp_path / "converted", clay_conversion={"source_checkpoint": "v0.ckpt"})
    card = card_of(stage_repository(folder, tmp_path / "repo", REPO_ID))
    assert licence_fields(card) == ("openrail", None, None)
    assert "forbids using the model" in card.text and "OpenRAIL-M" in (tmp_path / "repo" / "LICENSE.md").read_text()
    with pytest.raises(StagingError, match="derive from the Clay v0 weights"):
        stage_repository(folder, tmp_path / "other", REPO_ID, license="mit")


def test_weights_pretrained_from_scratch_take_apache_2_or_the_publishers_licence(pretrained, tmp_path):
    summary = {**SUMMARY, "initialised_from": None}
    folder = with_records(pretrained, tmp_path / "own", training_summary=summary)
    card = card_of(stage_repository(folder, tmp_path / "default", REPO_ID))
    assert licence_fields(card) == ("apache-2.0", None, None)
    assert "OpenRAIL" not in card.text.split("## Prohibited uses")[1].split("## How to use")[0].replace(
        "OpenRAIL-M's use restrictions do not apply", ""
    )
    licence = (tmp_path / "default" / "LICENSE.md").read_text()
    assert "Model weights: `apache-2.0`" in licence and "random initialisation" in licence
    card = card_of(stage_repository(folder, tmp_path / "mit", REPO_ID, license="mit"))
    assert licence_fields(card) == ("mit", None, None) and "`mit`" in card.text
    link = "https://example.org/licence"
    staged = stage_repository(folder, tmp_path / "other", REPO_ID, license="other", license_name="ours-1.0",
                              license_link=link)  # fmt: skip
    assert licence_fields(card_of(staged)) == ("other", "ours-1.0", link)
    with pytest.raises(StagingError, match="license: other needs license_name and license_link"):
        stage_repository(folder, tmp_path / "bad", REPO_ID, license="other")


def test_continued_pretraining_is_openrail(pretrained, tmp_path):
    summary = {**SUMMARY, "initialised_from": "made-with-clay/Clay"}
    folder = with_records(pretrained, tmp_path / "continued", training_summary=summary)
    assert licence_fields(card_of(stage_repository(folder, tmp_path / "repo", REPO_ID))) == ("openrail", None, None)


def finetuned_folder(folder: Path, num_labels: int = 2, **evaluation) -> Path:
    config = small_config(num_labels=num_labels, problem_type="regression" if num_labels == 1 else None)
    ClayForImageClassification(config).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    results = {"task": "image-classification", "metrics": {"accuracy": 0.5, "rmse": 1.5}, **evaluation}
    (folder / "eval_results.json").write_text(json.dumps(results))
    return folder


def test_a_model_finetuned_from_scratch_takes_apache_2_one_from_a_base_openrail(tmp_path):
    scratch = finetuned_folder(tmp_path / "scratch", from_scratch=True, base_model=None)
    card = card_of(stage_repository(scratch, tmp_path / "a", "o/landcover"))
    assert licence_fields(card) == ("apache-2.0", None, None) and "the licence of the Clay" not in card.text
    based = finetuned_folder(tmp_path / "based", from_scratch=False, base_model=REPO_ID, base_model_is_local=False)
    card = card_of(stage_repository(based, tmp_path / "b", "o/landcover"))
    assert licence_fields(card) == ("openrail", None, None) and "the licence of the Clay v0 weights" in card.text


# The licence follows the weights' origin through every base they were trained from.


def own_pretrained(pretrained: Path, folder: Path) -> Path:
    """A model pretrained from random weights (clay-pretrain without --model_name_or_path)."""
    return with_records(pretrained, folder, training_summary={**SUMMARY, "initialised_from": None})


def converted(pretrained: Path, folder: Path) -> Path:
    return with_records(pretrained, folder, clay_conversion={"source_checkpoint": "v0.ckpt"})


def test_a_model_finetuned_from_an_own_from_scratch_model_takes_apache_2_or_the_publishers_licence(
    pretrained, tmp_path
):
    base = own_pretrained(pretrained, tmp_path / "own")
    folder = finetuned_folder(tmp_path / "tuned", from_scratch=False, base_model=str(base), base_model_is_local=True)
    card = card_of(stage_repository(folder, tmp_path / "a", "o/landcover"))
    assert licence_fields(card) == ("apache-2.0", None, None) and "the licence of the Clay" not in card.text
    card = card_of(stage_repository(folder, tmp_path / "b", "o/landcover", license="mit"))
    assert licence_fields(card) == ("mit", None, None)


def test_a_model_finetuned_from_a_converted_base_is_openrail_and_keeps_it(pretrained, tmp_path):
    base = converted(pretrained, tmp_path / "v0")
    folder = finetuned_folder(tmp_path / "tuned", from_scratch=False, base_model=str(base), base_model_is_local=True)
    card = card_of(stage_repository(folder, tmp_path / "a", "o/landcover"))
    assert licence_fields(card) == ("openrail", None, None) and "the licence of the Clay v0 weights" in card.text
    with pytest.raises(StagingError, match="derive from the Clay v0 weights"):
        stage_repository(folder, tmp_path / "b", "o/landcover", license="mit")


@pytest.mark.parametrize(("origin", "licence"), [("own", "apache-2.0"), ("converted", "openrail")])
def test_continued_pretraining_keeps_the_licence_of_its_base(pretrained, tmp_path, origin, licence):
    base = (
        own_pretrained(pretrained, tmp_path / "base") if origin == "own" else converted(pretrained, tmp_path / "base")
    )
    continued = with_records(
        pretrained, tmp_path / "continued", training_summary={**SUMMARY, "initialised_from": str(base)}
    )
    assert licence_fields(card_of(stage_repository(continued, tmp_path / "repo", REPO_ID)))[0] == licence


def test_a_run_from_a_relative_base_path_records_it_absolute_so_the_licence_resolves_anywhere(
    pretrained, tmp_path, monkeypatch
):
    """`--model_name_or_path base` typed relative to the run's directory: the summary records the base's absolute
    path, so staging from another directory still finds the base and its licence (apache-2.0 for an own model)."""
    own_pretrained(pretrained, tmp_path / "base")
    write_synthetic_chips(tmp_path / "chips", 2, size=32, seed=1)
    monkeypatch.chdir(tmp_path)
    args = ["--model_name_or_path", "base", "--train_dir", "chips", "--output_dir", "continued", "--max_train_steps",
            "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--validation_fraction", "0", "--report_to", "none"]  # fmt: skip
    assert pretrain_in_process(args) == 0
    recorded = json.loads((tmp_path / "continued" / "training_summary.json").read_text())["initialised_from"]
    assert recorded == str(tmp_path / "base")
    monkeypatch.chdir(tmp_path / "chips")
    repository = stage_repository(tmp_path / "continued", tmp_path / "repo", REPO_ID)
    assert licence_fields(card_of(repository))[0] == "apache-2.0"


@pytest.mark.parametrize(("origin", "licence"), [("own", "apache-2.0"), ("converted", "openrail")])
def test_the_licence_follows_the_origin_through_two_steps(pretrained, tmp_path, origin, licence):
    """Pretrained (own or converted) → pretraining continued → fine-tuned: the licence of the first."""
    base = (
        own_pretrained(pretrained, tmp_path / "base") if origin == "own" else converted(pretrained, tmp_path / "base")
    )
    continued = with_records(
        pretrained, tmp_path / "continued", training_summary={**SUMMARY, "initialised_from": str(base)}
    )
    folder = finetuned_folder(tmp_path / "tuned", base_model=str(continued), base_model_is_local=True)
    assert licence_fields(card_of(stage_repository(folder, tmp_path / "repo", "o/landcover")))[0] == licence


@pytest.mark.parametrize("base", ["gone", "unrecorded", "hub"])
def test_a_base_whose_origin_is_unknown_counts_as_derived_from_clay_v0(pretrained, tmp_path, base):
    """A base folder no longer there, one that records no origin (a save_pretrained copy of released weights), or a
    Hub id: OpenRAIL-M, and no other licence."""
    if base == "unrecorded":
        shutil.copytree(pretrained, tmp_path / base)
    name, local = (REPO_ID, False) if base == "hub" else (str(tmp_path / base), True)
    folder = finetuned_folder(tmp_path / "tuned", base_model=name, base_model_is_local=local)
    assert licence_fields(card_of(stage_repository(folder, tmp_path / "repo", "o/landcover")))[0] == "openrail"
    with pytest.raises(StagingError, match="a base model whose records cannot be read here"):
        stage_repository(folder, tmp_path / "other", "o/landcover", license="mit")


def publish_cli(capsys, *args: str) -> tuple[int, str]:
    from clay_hf.commands.publish import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_clay_publish_writes_the_license_the_publisher_names(pretrained, tmp_path, capsys):
    folder = own_pretrained(pretrained, tmp_path / "own")
    common = ["--model_dir", str(folder), "--repo_id", REPO_ID, "--dry_run"]
    assert publish_cli(capsys, *common, "--staging_dir", str(tmp_path / "mit"), "--license", "mit") == (0, "")
    assert licence_fields(ModelCard.load(tmp_path / "mit" / "README.md")) == ("mit", None, None)
    link = "https://example.org/ours"
    other = ["--license", "other", "--license_name", "ours-1.0", "--license_link", link]
    assert publish_cli(capsys, *common, "--staging_dir", str(tmp_path / "other"), *other) == (0, "")
    assert licence_fields(ModelCard.load(tmp_path / "other" / "README.md")) == ("other", "ours-1.0", link)
    code, err = publish_cli(capsys, *common, "--staging_dir", str(tmp_path / "bad"), "--license", "other")
    assert code == 1 and err.startswith("error: --license other: license: other needs license_name and license_link")


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"license": "openrail"}, True),
        ({"license": "apache-2.0"}, True),
        ({"license": "other", "license_name": "openrail-m", "license_link": "LICENSE.md"}, True),
        ({"license": "openrail", "license_name": "openrail-m", "license_link": "LICENSE.md"}, False),
        ({"license": "other", "license_name": "openrail-m"}, False),
        ({"license": "Not An Id"}, False),
    ],
)
def test_the_validator_accepts_every_spec_valid_licence_form_and_only_those(pretrained, tmp_path, fields, valid):
    card = card_of(stage_repository(pretrained, tmp_path / "repo", REPO_ID))
    for key in ("license", "license_name", "license_link"):
        setattr(card.data, key, fields.get(key))
    card.save(tmp_path / "README.md")
    if valid:
        validate_model_card(tmp_path / "README.md")
    else:
        with pytest.raises(StagingError, match="license"):
            validate_model_card(tmp_path / "README.md")


# --- model-index -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "dataset_type"), [("/data/chips", "chips"), ("hf://datasets/made-with-clay/chips/val", None)]
)
def test_the_pretrained_model_index_has_a_hub_task_id_and_an_honest_dataset(
    pretrained, tmp_path, dataset, dataset_type
):
    folder = with_records(pretrained, tmp_path / "model", eval_results={**EVALUATION, "dataset": dataset})
    results = card_of(stage_repository(folder, tmp_path / "repo", REPO_ID)).data.eval_results
    assert {result.task_type for result in results} == {"image-feature-extraction"}
    if dataset_type is None:  # a Hub dataset: its id
        assert {(result.dataset_type, result.dataset_name) for result in results} == {("made-with-clay/chips",) * 2}
    else:  # local chips: the folder's name, said to be no Hub dataset
        assert {result.dataset_type for result in results} == {dataset_type}
        assert all("not a Hub dataset" in result.dataset_name for result in results)


@pytest.mark.parametrize(("num_labels", "task_type"), [(2, "image-classification"), (1, "other")])
def test_the_finetuned_model_index_uses_hub_task_ids(tmp_path, num_labels, task_type):
    folder = finetuned_folder(tmp_path / "model", num_labels, dataset="/data/chips_val", base_model=None)
    results = card_of(stage_repository(folder, tmp_path / "repo", "o/model")).data.eval_results
    assert {result.task_type for result in results} == {task_type} and task_type in HUB_TASKS
    assert {result.dataset_type for result in results} == {"chips_val"}


# --- sharded folders and the partial-input snippet ---------------------------------------------------------------


def test_a_sharded_save_pretrained_folder_publishes_and_loads(tmp_path):
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(small_config())
    model.save_pretrained(tmp_path / "model", max_shard_size="200KB")
    ClayImageProcessor().save_pretrained(tmp_path / "model")
    shards = sorted(path.name for path in (tmp_path / "model").glob("model-*.safetensors"))
    assert len(shards) > 1
    staged = stage_repository(tmp_path / "model", tmp_path / "repo", REPO_ID)
    assert {"model.safetensors.index.json", *shards} <= set(staged.files)
    loaded = ClayForMaskedImageModeling.from_pretrained(staged.folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_the_partial_input_snippet_uses_bands_and_loads_without_a_load_report(pretrained, tmp_path):
    text = card_of(stage_repository(pretrained, tmp_path / "repo", REPO_ID)).text
    snippet = re.search(r"\*\*Partial inputs\.\*\*.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    assert "bands=[" in snippet and "config=" not in snippet
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        namespace: dict = {}
        exec("import clay_hf\nfrom transformers import AutoImageProcessor, AutoModel\n", namespace)
        exec(snippet.replace(REPO_ID, str(pretrained)), namespace)
    finally:
        transformers_logger.removeHandler(handler)
    assert namespace["model"].config.group_names == ["rgb", "nir"]
    assert namespace["processor"].band_names == ["blue", "green", "red", "nir"]
    assert not [message for message in records if "LOAD REPORT" in message or "UNEXPECTED" in message]
