"""What an epoch is, what a resume may change, and what survives a kill: the pretraining script run for real."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from conftest import pretrain_in_process, small_config
from test_pretrain import launch, summary

from clay_hf.chipping import write_synthetic_chips
from clay_hf.training import list_checkpoints
from clay_hf.training.checkpointing import check_data_layout
from clay_hf.utils.errors import ResumeError
from clay_hf.utils.outputs import write_checksums


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 training chips and 2 validation chips (an explicit --validation_dir: every chip in the folder trains)."""
    root = tmp_path_factory.mktemp("epochs")
    write_synthetic_chips(root / "train", 6, size=32, seed=8)
    write_synthetic_chips(root / "validation", 2, size=32, seed=9)
    config = root / "config.json"
    small_config().to_json_file(config)
    return root


def epoch_args(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--train_dir", str(data / "train"), "--validation_dir", str(data / "validation"), "--output_dir", str(output),
        "--config_name", str(data / "config.json"), "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--report_to", "none", "--logging_steps", "1", "--seed", "3",
        "--log_seen_chips", *extra,
    ]  # fmt: skip


def seen(output: Path, rank: int = 0) -> list[tuple[str, str]]:
    lines = (output / f"seen_chips_rank{rank}.txt").read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines]


def test_n_epochs_train_every_chip_n_times_and_step_the_partial_window(data, tmp_path, caplog):
    """6 chips, batch 2, accumulation 2: 3 batches an epoch, so each epoch is a full window and a partial one."""
    output = tmp_path / "run"
    args = ["--num_train_epochs", "2", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]
    with caplog.at_level(logging.INFO, logger="clay_hf"):
        assert pretrain_in_process(epoch_args(data, output, *args, "--save_every_checkpoint_as_pretrained")) == 0
    lines = seen(output)
    assert Counter(epoch for epoch, _ in lines) == {"0": 6, "1": 6}
    assert set(Counter(url for _, url in lines).values()) == {2} and len({url for _, url in lines}) == 6
    run = summary(output)
    assert run["epochs_completed"] == 2 and run["chips_seen"] == 12 and run["global_step"] == 4
    assert run["partial_accumulation_windows_stepped"] == 2
    assert "partial accumulation window of 1 of 2 batches" in caplog.text
    # --checkpoints_total_limit prunes the save_pretrained copies as well as the checkpoints
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-4"]
    assert sorted(p.name for p in output.glob("pretrained-*")) == ["pretrained-4"]


def test_a_kill_loses_no_seen_chip_line_and_resume_refuses_another_worker_count(data, tmp_path, capsys):
    output = tmp_path / "run"
    args = epoch_args(data, output, "--max_train_steps", "3", "--checkpointing_steps", "1")
    killed = launch(args, env={"CLAY_HF_CRASH_AFTER_STEP": "2"}, check=False)
    assert killed.returncode != 0 and not (output / "model.safetensors").exists()
    assert len(seen(output)) == 6  # steps 1 and 2: the first epoch (a full window, a partial one), despite the kill

    # The refusals come before any training: run in this process (the script's main), not launched.
    capsys.readouterr()
    assert pretrain_in_process([*args, "--resume_from_checkpoint", "latest", "--dataloader_num_workers", "1"]) == 1
    refused = capsys.readouterr().err
    assert "AssertionError" not in refused and "Traceback" not in refused
    assert "--dataloader_num_workers: 0 in the checkpoint, 1 now" in refused
    # A checkpoint whose counters do not record the data layout (intact: its checksums match) is refused by name,
    # not resumed into torchdata's own error.
    checkpoint = list_checkpoints(output)[-1]
    intact = {name: (checkpoint / name).read_bytes() for name in ("train_state.json", "checksums.sha256")}
    state = json.loads(intact["train_state.json"])
    state.pop("data_layout")
    (checkpoint / "train_state.json").write_text(json.dumps(state))
    write_checksums(checkpoint)
    assert pretrain_in_process([*args, "--resume_from_checkpoint", "latest"]) == 1
    unrecorded = capsys.readouterr().err
    assert "error: cannot resume the data position" in unrecorded and "--dataloader_num_workers: None" in unrecorded
    for name, content in intact.items():
        (checkpoint / name).write_bytes(content)
    launch([*args, "--resume_from_checkpoint", "latest"])
    assert summary(output)["global_step"] == 3


def test_resume_with_another_number_of_processes_is_refused_by_name():
    saved = {"num_processes": 2, "dataloader_num_workers": 0, "seed": 1}
    with pytest.raises(ResumeError, match=r"--num_processes: 2 in the checkpoint, 1 now"):
        check_data_layout(saved, {**saved, "num_processes": 1}, Path("checkpoint-5"))
    check_data_layout(saved, dict(saved), Path("checkpoint-5"))  # the same layout resumes


def test_two_ranks_with_uneven_shards_train_every_chip_each_epoch(data, tmp_path):
    """9 chips over 2 ranks: 5 and 4 chips, 3 and 2 batches of 2; the shorter rank pads, no chip is dropped."""
    write_synthetic_chips(tmp_path / "nine", 9, size=32, seed=4)
    output = tmp_path / "run"
    args = epoch_args(data, output, "--num_train_epochs", "2", "--gradient_accumulation_steps", "1")
    args[args.index(str(data / "train"))] = str(tmp_path / "nine")
    launch(args, processes=2)
    lines = seen(output, 0) + seen(output, 1)
    assert Counter(epoch for epoch, _ in lines) == {"0": 9, "1": 9}
    assert set(Counter(url for _, url in lines).values()) == {2} and len({url for _, url in lines}) == 9
    assert summary(output)["chips_seen"] == 18
