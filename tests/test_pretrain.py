"""The pretraining script, run for real: on one process and as two DDP processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pretrain_in_process, small_config
from geotiffs import write_chips_with_nodata, write_geotiff
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from clay_hf import ClayImageProcessor, ClayModel
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.pretrain import parse_args
from clay_hf.data import resolve_sources, split_paths
from clay_hf.training import PretrainingArguments, build_scheduler, list_checkpoints, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "pretrain.py")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_chips")
    write_synthetic_chips(folder, 48, size=32, seed=5)
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    small_config().to_json_file(path)
    return path


def training_args(chips, config_file, output_dir, steps, *extra):
    return [
        "--train_dir", str(chips), "--output_dir", str(output_dir), "--config_name", str(config_file),
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3",
        "--max_train_steps", str(steps), "--report_to", "none", "--logging_steps", "1", "--seed", "7", *extra,
    ]  # fmt: skip


def launch(args, processes=1, mixed_precision="no", env=None, check=True):
    """`accelerate launch` the real script; two processes run DDP on the CPU (gloo)."""
    # --quiet: a failed run shows the script's own error, not the launcher's traceback around a copy of it.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_machines", "1"]
    command += ["--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if processes > 1:
        command += [
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(29500 + os.getpid() % 1000),
        ]
    else:
        command += ["--num_processes", "1", "--cpu"]
    run_env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([*command, SCRIPT, *args], capture_output=True, text=True, env=run_env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def summary(output_dir):
    return json.loads((Path(output_dir) / "training_summary.json").read_text())


# --- pieces -------------------------------------------------------------------------------------------------------------


def test_defaults_are_the_v0_recipe():
    model_args, data_args, args = parse_args(["--train_dir", "x", "--output_dir", "y"])
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (10, 5)
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2) == (1e-4, 0.05, 0.9, 0.95)
    assert (args.lr_scheduler, args.restart_period, args.restart_mult, args.eta_min_factor) == (
        "cosine_warm_restarts",
        1000,
        2,
        10.0,
    )
    assert (model_args.config_name, args.report_to, data_args.validation_fraction) == ("small", "tensorboard", 0.2)


def test_v0_schedule_rises_to_ten_times_lr_and_restarts():
    args = PretrainingArguments(output_dir="y", restart_period=4)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = build_scheduler(optimizer, args, total_steps=100)
    lrs = []
    for _ in range(14):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[2] == pytest.approx(1e-4 + (1e-3 - 1e-4) * 0.5)  # half way up the first period of 4
    assert lrs[4] == pytest.approx(1e-4)  # restart; the next period is 8 steps (T_mult=2)
    assert lrs[8] == pytest.approx(lrs[2]) and lrs[12] == pytest.approx(1e-4)


def test_latest_ignores_a_checkpoint_killed_mid_write_and_rotation(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (5, 10):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "train_state.json").write_text("{}")
    (folder / "tmp-checkpoint-15").mkdir()  # what a kill during a save leaves
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10"]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(folder / "tmp-checkpoint-15"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "elsewhere", "latest")


# --- runs -----------------------------------------------------------------------------------------------------------------


def test_two_ddp_ranks_train_on_disjoint_data_and_loss_falls(chips, config_file, tmp_path):
    output = tmp_path / "ddp"
    fast = ["--gradient_accumulation_steps", "1", "--learning_rate", "3e-3", "--lr_scheduler", "cosine_with_warmup"]
    launch(training_args(chips, config_file, output, 80, *fast, "--log_seen_chips", "--eval_steps", "40"), processes=2)
    seen = [
        [line.split("\t") for line in (output / f"seen_chips_rank{rank}.txt").read_text().splitlines()]
        for rank in range(2)
    ]
    train_chips = set(split_paths(resolve_sources(chips))["train"])
    for epoch in ("0", "1", "5"):
        parts = [{url for e, url in lines if e == epoch} for lines in seen]
        assert parts[0] and parts[1] and not parts[0] & parts[1]  # disjoint within an epoch
        assert parts[0] | parts[1] == train_chips  # complete: uneven ranks pad, they drop no chip
    result = summary(output)
    assert result["hardware"]["num_processes"] == 2 and result["effective_batch_size"] == 8
    assert result["global_step"] == 80 and result["chips_seen"] == len(seen[0]) + len(seen[1])
    history = result["train_loss_history"]
    assert len(history) == 80
    assert np.mean(history[-10:]) < 0.75 * np.mean(history[:10])
    assert result["final_validation_loss"] is not None and "rgb" in result["final_validation_group_losses"]

    # The output folder is a complete transformers folder.
    model = AutoModel.from_pretrained(output)
    assert type(model) is ClayModel
    assert type(AutoImageProcessor.from_pretrained(output)) is ClayImageProcessor


def test_killed_run_resumes_from_latest_to_the_same_weights(chips, config_file, tmp_path):
    from conftest import finish_pretraining, start_pretraining

    common = ["--checkpointing_steps", "5", "--dataloader_num_workers", "1", "--shuffle_buffer_size", "1"]
    unbroken = tmp_path / "unbroken"  # launched beside the run that is killed, on a port of its own
    reference = start_pretraining(training_args(chips, config_file, unbroken, 12, *common), processes=2)

    broken = tmp_path / "broken"
    crashed = launch(
        training_args(chips, config_file, broken, 12, *common),
        processes=2,
        env={"CLAY_HF_CRASH_AFTER_STEP": "7"},
        check=False,
    )
    assert crashed.returncode != 0
    assert [p.name for p in list_checkpoints(broken)] == ["checkpoint-5"]
    assert not (broken / "model.safetensors").exists()
    (broken / "checkpoints" / "tmp-checkpoint-6").mkdir()  # a half-written save must not be picked
    finish_pretraining(reference)

    launch(training_args(chips, config_file, broken, 12, *common, "--resume_from_checkpoint", "latest"), processes=2)
    assert summary(broken)["global_step"] == 12 and summary(broken)["chips_seen"] == summary(unbroken)["chips_seen"]
    expected, resumed = load_file(unbroken / "model.safetensors"), load_file(broken / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert [p.name for p in list_checkpoints(broken)] == ["checkpoint-5", "checkpoint-10"]


def test_bf16_mixed_precision_runs(chips, config_file, tmp_path):
    output = tmp_path / "bf16"
    launch(training_args(chips, config_file, output, 4), mixed_precision="bf16")
    result = summary(output)
    assert result["hardware"]["mixed_precision"] == "bf16"
    assert all(np.isfinite(result["train_loss_history"]))


def test_non_finite_losses_are_skipped_then_stop_the_run(config_file, tmp_path, capsys):
    """Chips of finite values that stay finite once normalised overflow inside the model (NaN chips are bad chips,
    skipped before the model). The runs are the script's main in this process: the test is not about processes."""
    from conftest import pretrain_in_process

    folder = tmp_path / "nan_chips"
    write_synthetic_chips(folder, 16, size=32, seed=2)
    for index in range(16):
        data = np.full((13, 32, 32), 1e37, dtype="float32")
        write_geotiff(folder / f"claytile_NAN_20200101_v02_{index:04d}.tif", data=data, date="2020-01-01")

    mixed = tmp_path / "mixed"
    assert pretrain_in_process(training_args(folder, config_file, mixed, 6, "--validation_fraction", "0")) == 0
    result = summary(mixed)
    assert result["global_step"] == 6 and result["nonfinite_steps_skipped"] > 0
    assert all(np.isfinite(result["train_loss_history"]))

    for path in folder.glob("claytile_*"):
        if "NAN" not in path.name:
            path.unlink()
    stopped = tmp_path / "stopped"
    capsys.readouterr()
    status = pretrain_in_process(
        training_args(
            folder, config_file, stopped, 20, "--max_consecutive_nonfinite", "3", "--validation_fraction", "0"
        )
    )
    assert status != 0
    assert "3 optimizer steps in a row had a non-finite loss" in capsys.readouterr().err


def test_processes_that_each_set_up_alone_are_refused(chips, config_file, tmp_path):
    """Without ACCELERATE_USE_CPU on a machine with no GPU, 2 launched processes would each train alone."""
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(29600 + os.getpid() % 300), SCRIPT]
    command += training_args(chips, config_file, tmp_path / "alone", 2)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "2 processes were launched, but Accelerate set up 1" in result.stderr


def test_a_window_whose_chips_are_all_bad_takes_no_optimizer_step(config_file, tmp_path):
    """Batches of one chip, one batch a window: the three windows of a chip with nodata pixels hold no chip to learn
    from, so they take no optimizer step (AdamW would still decay the weights) and count no step."""
    write_chips_with_nodata(tmp_path / "chips", 5, bad=3)
    output = tmp_path / "run"
    args = [
        "--train_dir", str(tmp_path / "chips"), "--output_dir", str(output), "--config_name", str(config_file),
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--num_train_epochs", "1",
        "--validation_fraction", "0", "--report_to", "none", "--logging_steps", "1",
    ]  # fmt: skip
    result = launch(args)
    done = summary(output)
    assert (done["chips_seen"], done["bad_chips_skipped"]) == (2, 3)
    assert (done["global_step"], done["windows_without_chips_dropped"]) == (2, 3)
    assert result.stderr.count("held no usable chip") == 3


def test_a_resumed_run_whose_chips_are_all_bad_stops_instead_of_looping(config_file, tmp_path, capsys):
    """Chips with nodata pixels, trained with --fill_value mean, then resumed without it: every chip is bad, no window
    takes a step, and the epoch after the resumed one ends the run with the reason (not an endless run whose steps
    never count)."""
    write_chips_with_nodata(tmp_path / "chips", 4, bad=4)
    output = tmp_path / "run"
    args = [
        "--train_dir", str(tmp_path / "chips"), "--output_dir", str(output), "--config_name", str(config_file),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--validation_fraction", "0",
        "--report_to", "none", "--checkpointing_steps", "1",
    ]  # fmt: skip
    assert pretrain_in_process([*args, "--max_train_steps", "1", "--fill_value", "mean"]) == 0
    capsys.readouterr()
    assert pretrain_in_process([*args, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]) == 1
    assert "error: no training chip could be used" in capsys.readouterr().err
