"""Faults in RUN outputs (issue 25): two runs on one output, a kill, a full disk, a flipped bit or a truncated file.

Each case checks that nothing is trusted wrongly (a refusal names the file or the other run, in one `error:` line)
and that the rerun gives what an uninterrupted run gives. Embeddings run in process where a kill can be a raised
KeyboardInterrupt; pretraining runs as the real script (`accelerate launch`), killed with `os._exit` at a step.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import (
    finish_pretraining,
    pretrain_in_process,
    save_pretraining_model,
    small_config,
    start_pretraining,
)
from safetensors.torch import load_file
from test_fault_injection import REPO, _kill_when, _Stall
from test_pretrain import launch, summary

import clay_hf.inference.embeddings as embeddings
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.embed import main as embed_main
from clay_hf.commands.evaluate import main as evaluate_main
from clay_hf.commands.publish import main as publish_main
from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder
from clay_hf.inference.ranks import RankReport, wait_for_reports, write_report
from clay_hf.training import list_checkpoints, resolve_checkpoint
from clay_hf.training.checkpointing import CURRENT_RUN_NAME, checkpoint_run, verify_checkpoint
from clay_hf.utils.distributed import Watchdog, is_rank_failure
from clay_hf.utils.errors import IntegrityError, OutputError, RanksTimeoutError, ResumeError
from clay_hf.utils.outputs import (
    CHECKSUMS_NAME,
    OutputLock,
    atomic_files,
    lock_path,
    read_json,
    write_checksums,
    write_json,
)

SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_pretraining_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    return save_pretraining_model(tmp_path_factory.mktemp("other_model"), seed=1)


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chips")
    write_synthetic_chips(folder, 10, size=SIZE, seed=3)
    return folder


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_encoder(str(model_dir))


@pytest.fixture(scope="module")
def uninterrupted(encoder, chips, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each chip's embedding from one unbroken run."""
    output = tmp_path_factory.mktemp("unbroken") / "e.parquet"
    embed_to_geoparquet(*encoder, chips, output, batch_size=2, rows_per_part=2, progress=False)
    return _embeddings(output)


def _embeddings(output: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(output)
    urls = table.column("source_url").to_pylist()
    assert len(urls) == len(set(urls)), "a chip twice"
    return {Path(url).name: np.asarray(v) for url, v in zip(urls, table.column("embeddings").to_pylist(), strict=True)}


def _assert_same_rows(output: Path, expected: dict[str, np.ndarray]) -> None:
    got = _embeddings(output)
    assert sorted(got) == sorted(expected)
    for name, vector in expected.items():
        np.testing.assert_allclose(got[name], vector, rtol=1e-5, atol=1e-6, err_msg=name)


def _interrupted_embedding(encoder, source, output: Path, monkeypatch, after_batches: int = 3) -> Path:
    """A run killed (KeyboardInterrupt) in its `after_batches`-th batch: it leaves finished parts."""
    original, count = embeddings.embed_batch, {"n": 0}

    def interrupted(*args, **kwargs):
        count["n"] += 1
        if count["n"] == after_batches:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(embeddings, "embed_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(*encoder, source, output, batch_size=2, rows_per_part=2, progress=False)
    monkeypatch.setattr(embeddings, "embed_batch", original)
    parts = output.with_name(output.name + ".parts")
    assert sorted(path.name for path in parts.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert not lock_path(output).exists(), "the lock outlived its run"
    return parts


def _one_error_line(capsys) -> str:
    """The one `error: …` line a command printed (progress bars of model loading aside), with no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# --- item 1: one writer per output ------------------------------------------------------------------------------------


def test_a_second_embed_run_on_the_same_output_is_refused_and_the_first_resumes_whole(
    model_dir, chips, uninterrupted, tmp_path, capsys
):
    """Run A stalls on a chip (a FIFO at a seeded place); run B on the same --output is refused while A lives and
    touches nothing; A is killed (-9); its rerun with --resume takes the lock over and equals an unbroken run."""
    paths = sorted(str(path) for path in chips.glob("*.tif"))
    stall_at = random.Random(1).randint(4, len(paths) - 2)
    stall = _Stall(tmp_path / "stall.tif")
    listing = tmp_path / "chips.txt"
    listing.write_text("\n".join([*paths[:stall_at], str(stall.path), *paths[stall_at:]]))
    output = tmp_path / "e.parquet"
    args = ["--model_name_or_path", str(model_dir), "--output", str(output), "--batch_size", "2",
            "--rows_per_part", "2"]  # fmt: skip
    command = [sys.executable, str(REPO / "scripts" / "embed.py"), "--data_dir", str(listing), *args]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not stall.reader_waits():  # A holds the lock and waits on the FIFO, its earlier parts finished
        assert first.poll() is None and time.monotonic() < deadline, "run A ended before its stall"
        time.sleep(0.05)
    parts = output.with_name(output.name + ".parts")
    finished = sorted(parts.glob("part-*.parquet"))
    assert finished, "no finished part before the stall"
    before = {part.name: part.read_bytes() for part in finished}
    assert embed_main(["--data_dir", str(chips), *args]) == 1
    err = _one_error_line(capsys)
    assert f"{output} is being written by another run (pid {first.pid}" in err
    assert {part.name: part.read_bytes() for part in sorted(parts.glob("part-*.parquet"))} == before

    assert _kill_when(first, lambda: True)
    os.close(stall.fd)
    stall.path.unlink()  # the chip that never came: the rerun embeds the others
    listing.write_text("\n".join(paths))
    assert embed_main(["--data_dir", str(listing), *args, "--resume"]) == 0
    assert f"({stall_at // 2 * 2} already done" in capsys.readouterr().out
    _assert_same_rows(output, uninterrupted)
    assert not lock_path(output).exists() and not parts.exists()


def test_parts_removed_while_a_run_works_are_never_joined_into_a_short_file(
    encoder, chips, uninterrupted, tmp_path, monkeypatch
):
    """Another process removing finished parts (what a second, unlocked run did) is caught before the join."""
    output = tmp_path / "e.parquet"
    original = embeddings.wait_for_reports

    def meanwhile(parts_dir, *args, **kwargs):
        sorted(parts_dir.glob("part-*.parquet"))[0].unlink()
        return original(parts_dir, *args, **kwargs)

    monkeypatch.setattr(embeddings, "wait_for_reports", meanwhile)
    with pytest.raises(IntegrityError, match=r"holds 8 rows where this run expected 10"):
        embed_to_geoparquet(*encoder, chips, output, batch_size=2, rows_per_part=2, progress=False)
    assert not output.exists()
    monkeypatch.undo()
    embed_to_geoparquet(*encoder, chips, output, batch_size=2, rows_per_part=2, resume=True, progress=False)
    _assert_same_rows(output, uninterrupted)


# --- item 7: resume checks what it resumes ------------------------------------------------------------------------------


def test_resume_through_a_symlink_embeds_no_chip_twice(encoder, chips, uninterrupted, tmp_path, monkeypatch):
    output = tmp_path / "e.parquet"
    _interrupted_embedding(encoder, chips, output, monkeypatch)
    link = tmp_path / "linked"
    link.symlink_to(chips, target_is_directory=True)
    run = embed_to_geoparquet(*encoder, link, output, batch_size=2, rows_per_part=2, resume=True, progress=False)
    assert (run.skipped_done, run.embedded) == (4, 6)
    _assert_same_rows(output, uninterrupted)


def test_resume_with_another_model_is_refused_naming_both(
    encoder, chips, model_dir, other_model_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "e.parquet"
    _interrupted_embedding(encoder, chips, output, monkeypatch)
    status = embed_main(["--model_name_or_path", str(other_model_dir), "--data_dir", str(chips), "--output",
                         str(output), "--resume"])  # fmt: skip
    assert status == 1
    err = _one_error_line(capsys)
    assert f"embeddings of the model {model_dir.resolve()}; this run embeds with {other_model_dir.resolve()}" in err
    with pytest.raises(ResumeError):
        embed_to_geoparquet(*load_encoder(str(other_model_dir)), chips, output, resume=True, progress=False)


def test_resume_with_the_same_folder_holding_other_weights_is_refused(
    chips, model_dir, other_model_dir, tmp_path, monkeypatch, capsys
):
    """The same --model_name_or_path, but its weights replaced (a model saved again into the folder) since the
    parts were embedded: the parts' recorded weights checksum differs, so the rows of two models never mix."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    output = tmp_path / "e.parquet"
    _interrupted_embedding(load_encoder(str(model)), chips, output, monkeypatch)
    shutil.copy(other_model_dir / "model.safetensors", model / "model.safetensors")
    status = embed_main(["--model_name_or_path", str(model), "--data_dir", str(chips), "--output", str(output),
                         "--resume"])  # fmt: skip
    assert status == 1
    err = _one_error_line(capsys)
    assert f"embeddings of the model {model.resolve()} as it was then (sha256:" in err
    assert "its weights have changed since (sha256:" in err
    shutil.copy(model_dir / "model.safetensors", model / "model.safetensors")  # the same weights again: resumed
    assert embed_main(["--model_name_or_path", str(model), "--data_dir", str(chips), "--output", str(output),
                       "--resume"]) == 0  # fmt: skip


# --- item 8: damaged parts --------------------------------------------------------------------------------------------


def test_every_flipped_bit_and_a_truncation_of_a_part_is_refused_by_name(
    encoder, chips, uninterrupted, tmp_path, monkeypatch
):
    output = tmp_path / "e.parquet"
    parts = _interrupted_embedding(encoder, chips, output, monkeypatch)
    part = parts / "part-00001.parquet"
    intact = part.read_bytes()
    rng = random.Random(25)
    for position in [rng.randrange(len(intact)) for _ in range(12)] + [len(intact) - 1, 0]:
        damaged = bytearray(intact)
        damaged[position] ^= 1 << rng.randrange(8)
        part.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError, match=rf"{part} is damaged .*remove it and rerun with --resume"):
            embed_to_geoparquet(*encoder, chips, output, batch_size=2, resume=True, progress=False)
    part.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(IntegrityError, match=rf"{part} is damaged"):
        embed_to_geoparquet(*encoder, chips, output, batch_size=2, resume=True, progress=False)
    # A part that was complete but whose checksum a kill kept from being recorded is read whole, then trusted.
    part.write_bytes(intact)
    checksums = parts / CHECKSUMS_NAME
    checksums.write_text("".join(line + "\n" for line in checksums.read_text().splitlines() if part.name not in line))
    embed_to_geoparquet(*encoder, chips, output, batch_size=2, rows_per_part=2, resume=True, progress=False)
    _assert_same_rows(output, uninterrupted)


# --- item 10: a full disk -----------------------------------------------------------------------------------------------


def test_a_full_disk_while_embedding_is_one_line_and_the_resume_on_a_freed_disk_is_whole(
    model_dir, chips, uninterrupted, small_disk, capsys
):
    disk = small_disk(256)
    filler = disk / "filler"
    filler.write_bytes(b"x" * 244 * 1024)
    output = disk / "e.parquet"
    args = ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output", str(output),
            "--batch_size", "2", "--rows_per_part", "2"]  # fmt: skip
    assert embed_main(args) == 1
    err = _one_error_line(capsys)
    assert f"error: cannot write {output}.parts/" in err and err.endswith("No space left on device")
    parts = output.with_name(output.name + ".parts")
    assert not [path for path in parts.rglob(".*") if path.name.endswith(".partial")]
    assert not lock_path(output).exists()
    filler.unlink()
    assert embed_main([*args, "--resume"]) == 0
    _assert_same_rows(output, uninterrupted)


def test_a_full_disk_at_eval_results_is_one_line_and_the_rerun_is_whole(model_dir, chips, small_disk, tmp_path, capsys):
    disk = small_disk(64)
    (disk / "filler").write_bytes(b"x" * (64 * 1024 - 512))
    args = ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--split", "all", "--max_chips", "2"]
    assert evaluate_main([*args, "--output_dir", str(disk)]) == 1
    assert _one_error_line(capsys) == f"error: cannot write {disk / 'eval_results.json'}: No space left on device"
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]
    (disk / "filler").unlink()
    assert evaluate_main([*args, "--output_dir", str(disk)]) == 0
    assert evaluate_main([*args, "--output_dir", str(tmp_path)]) == 0
    assert _measured(read_json(disk / "eval_results.json")) == _measured(read_json(tmp_path / "eval_results.json"))


def _measured(results: dict) -> dict:
    """eval_results.json without the fields that differ between two runs of the same evaluation (time, paths)."""
    return {key: value for key, value in results.items() if "time" not in key and "second" not in key}


# --- item 9: no silent wait ---------------------------------------------------------------------------------------------


def test_a_rank_that_never_reports_is_named_at_the_default_verbosity_and_given_up_on(tmp_path, caplog):
    write_report(tmp_path, RankReport(0, 5, 0, 0.0, 1.0))
    with caplog.at_level(logging.WARNING), pytest.raises(RanksTimeoutError, match=r"rank\(s\) \[1\] after 1 s"):
        wait_for_reports(tmp_path, 2, poll_seconds=0.05, timeout_seconds=1.0, log_seconds=0.2)
    assert "waiting for rank(s) [1] to finish" in caplog.text
    # A rank that keeps showing signs of life (a slow one, not a dead one) is waited for.
    threading.Timer(0.5, write_report, (tmp_path, RankReport(1, 4, 0, 0.0, 2.0))).start()
    reports = wait_for_reports(
        tmp_path, 2, poll_seconds=0.05, timeout_seconds=0.2, last_activity=lambda rank: time.time()
    )
    assert [report.processed for report in reports] == [5, 4]


def _barrier_rank(index: int, port: int, results) -> None:
    """One of three gloo ranks: rank 2 never reaches the barrier; ranks 0 and 1 report what their barrier said."""
    import torch.distributed as dist

    from clay_hf.inference.ranks import Rank
    from clay_hf.utils.distributed import barrier_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=index, world_size=3)
    rank = Rank(index, 3, "cpu", barrier_group())  # every rank makes the barriers' group, as `current_rank` does
    if index == 2:
        time.sleep(4)
        return
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("clay_hf").addHandler(handler)
    try:
        rank.barrier("the start", timeout_seconds=2.0, log_seconds=0.5)
        results.put((index, "passed", said))
    except RanksTimeoutError as error:
        results.put((index, str(error), said))


def test_only_a_silent_or_gone_rank_is_taken_for_a_dead_machine():
    """A collective's timeout or closed connection is another rank's failure; this rank's out-of-memory or a bug is
    its own, and keeps its own error."""
    assert is_rank_failure(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv"))
    assert is_rank_failure(RuntimeError("Connection closed by peer [127.0.0.1]:25217"))
    assert not is_rank_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_rank_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"))


def test_a_watchdog_speaks_only_after_a_silence_and_counts_from_the_last_beat(caplog):
    with caplog.at_level(logging.WARNING, logger="clay_hf"):
        with Watchdog("nothing finished", log_seconds=0.4, first_seconds=0.4) as watchdog:
            for _ in watchdog.beating(range(8)):
                time.sleep(0.1)  # steady progress: never silent for 0.4 s
        assert "nothing finished" not in caplog.text
        with Watchdog("nothing finished", log_seconds=0.2, first_seconds=0.2):
            time.sleep(0.5)
    assert "nothing finished (0 s so far)" in caplog.text or "nothing finished (" in caplog.text


def test_a_rank_missing_at_a_barrier_is_named_at_the_default_verbosity_and_given_up_on():
    """Ranks meet at the start of an embedding run: one that never comes (a dead machine) is not waited for
    silently, nor forever; the main rank names it, the others name the main rank."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes = [context.Process(target=_barrier_rank, args=(index, port, results)) for index in range(3)]
    for process in processes:
        process.start()
    said = dict((index, (error, logged)) for index, error, logged in (results.get(timeout=120) for _ in range(2)))
    for process in processes:
        process.join(timeout=60)
    error, logged = said[0]
    assert error.startswith("gave up waiting for rank(s) [2] at the start after 2 s")
    assert any(line.startswith("rank 0 is waiting for the other ranks at the start") for line in logged)
    assert said[1][0].startswith("gave up waiting for rank(s) [0] at the start")


# --- publish --------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_stray_staging(tmp_path, monkeypatch) -> Path:
    """Temporary staging folders go to a folder of the test, to check that none is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_publish_refuses_a_truncated_model_or_summary_by_name_and_leaves_no_copy(
    model_dir, tmp_path, no_stray_staging, capsys
):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) - 100])
    assert publish_main(["--model_dir", str(folder), "--dry_run"]) == 1
    err = _one_error_line(capsys)
    assert f"{folder / 'model.safetensors'} is damaged or truncated" in err
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "training_summary.json").write_text('{"global_step": ')
    assert publish_main(["--model_dir", str(folder), "--dry_run"]) == 1
    assert f"{folder / 'training_summary.json'} is damaged (not complete JSON" in _one_error_line(capsys)
    assert list(no_stray_staging.iterdir()) == []


def test_a_full_disk_while_staging_is_one_line_and_leaves_nothing(model_dir, small_disk, tmp_path, capsys):
    disk = small_disk(128)
    staging = disk / "staging"
    assert publish_main(["--model_dir", str(model_dir), "--staging_dir", str(staging), "--dry_run"]) == 1
    assert _one_error_line(capsys) == f"error: cannot write {staging}: No space left on device"
    assert list(disk.iterdir()) == []
    # The same command on a disk with room gives what staging on any disk gives.
    roomy, elsewhere = small_disk(4096) / "staging", tmp_path / "staging"
    for folder in (roomy, elsewhere):
        assert publish_main(["--model_dir", str(model_dir), "--staging_dir", str(folder), "--dry_run"]) == 0
    assert _files(roomy) == _files(elsewhere)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- pretraining: runs, checkpoints, padding, a full disk ----------------------------------------------------------------


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> Path:
    """9 chips (over two ranks: 5 and 4, so one rank pads) and a tiny config."""
    root = tmp_path_factory.mktemp("training")
    write_synthetic_chips(root / "chips", 9, size=SIZE, seed=4)
    small_config().to_json_file(root / "config.json")
    return root


def pretrain_args(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--train_dir", str(root / "chips"), "--output_dir", str(output), "--config_name", str(root / "config.json"),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
        "--validation_fraction", "0", "--report_to", "none", "--logging_steps", "1", "--seed", "3", *extra,
    ]  # fmt: skip


def _assert_same_weights(expected: dict[str, torch.Tensor], folder: Path) -> None:
    got = load_file(folder / "model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_new_run_beside_another_runs_checkpoints_keeps_both_and_resumes_its_own(training, tmp_path, capsys):
    """Run A ends with checkpoints 2 and 4. Run B starts afresh in the same folder with the same settings, is killed
    after step 3 and resumed with `latest`: A's checkpoints are untouched (rotation and names), B resumes its own
    checkpoint and ends with A's weights; a damaged checkpoint of B is refused naming the file and the intact one.
    A and the refusal run in this process (the script's main); B's kill and resume are launched."""
    output = tmp_path / "run"
    common = ["--max_train_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    assert pretrain_in_process(pretrain_args(training, output, *common)) == 0
    run_a = [(path.name, checkpoint_run(path)) for path in list_checkpoints(output)]
    assert [name for name, _ in run_a] == ["checkpoint-3", "checkpoint-4"]
    a_files = {p: p.read_bytes() for c in list_checkpoints(output) for p in sorted(c.iterdir())}
    a_weights = load_file(output / "model.safetensors")

    killed = launch(pretrain_args(training, output, *common), env={"CLAY_HF_CRASH_AFTER_STEP": "3"}, check=False)
    assert killed.returncode != 0
    run_b = json.loads((output / "checkpoints" / CURRENT_RUN_NAME).read_text())["run_id"]
    assert run_b != run_a[0][1]
    names = [path.name for path in list_checkpoints(output)]
    assert names == ["checkpoint-2-" + run_b, "checkpoint-3", "checkpoint-3-" + run_b, "checkpoint-4"]
    assert {p: p.read_bytes() for p in a_files} == a_files  # A's checkpoints: not one byte changed

    newest = output / "checkpoints" / f"checkpoint-3-{run_b}"
    weights = newest / "model.safetensors"
    intact = weights.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0x10
    weights.write_bytes(bytes(damaged))
    capsys.readouterr()
    assert pretrain_in_process(pretrain_args(training, output, *common, "--resume_from_checkpoint", "latest")) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors and f"{weights} is damaged" in errors[0]
    assert f"The newest intact checkpoint is {output / 'checkpoints' / f'checkpoint-2-{run_b}'}" in errors[0]
    weights.write_bytes(intact)

    resumed = launch(pretrain_args(training, output, *common, "--resume_from_checkpoint", "latest"))
    assert f"resumed from {newest} at step 3" in resumed.stdout
    _assert_same_weights(a_weights, output)
    assert summary(output)["run_id"] == run_b
    assert {p: p.read_bytes() for p in a_files} == a_files


def test_a_resume_with_another_recipe_is_refused_naming_each_change(training, tmp_path, capsys):
    """The optimizer state and schedule of a checkpoint were made with its learning rate and batch size: a resume
    with others would train with the checkpoint's while the summary records the new ones. It is refused instead."""
    output = tmp_path / "run"
    common = ["--checkpointing_steps", "1"]
    assert pretrain_in_process(pretrain_args(training, output, *common, "--max_train_steps", "1")) == 0
    (output / "model.safetensors").unlink()
    capsys.readouterr()
    changed = ["--learning_rate", "5e-2", "--weight_decay", "0.5", "--max_train_steps", "2"]
    assert (
        pretrain_in_process(pretrain_args(training, output, *common, *changed, "--resume_from_checkpoint", "latest"))
        == 1
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot resume" in errors[0]
    assert "--learning_rate: 0.001 in the checkpoint, 0.05 now" in errors[0]
    assert "--weight_decay" in errors[0] and "--per_device_train_batch_size" not in errors[0]
    assert not (output / "model.safetensors").exists()
    # A checkpoint that records no recipe (an earlier clay_hf's; intact: its checksums match) is refused by name.
    checkpoint = list_checkpoints(output)[-1]
    intact = {name: (checkpoint / name).read_bytes() for name in ("train_state.json", CHECKSUMS_NAME)}
    state = json.loads(intact["train_state.json"])
    del state["recipe"]
    (checkpoint / "train_state.json").write_text(json.dumps(state))
    write_checksums(checkpoint)
    resume = ["--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    assert pretrain_in_process(pretrain_args(training, output, *common, *resume)) == 1
    assert f"cannot resume {checkpoint}: it records no training recipe" in capsys.readouterr().err
    for name, content in intact.items():
        (checkpoint / name).write_bytes(content)
    # More steps with the same recipe is a resume.
    resumed = ["--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    assert pretrain_in_process(pretrain_args(training, output, *common, *resumed)) == 0
    assert summary(output)["global_step"] == 2


def test_a_rank_that_stops_answering_in_pretraining_is_named_and_the_run_ends(training, tmp_path):
    """Rank 1 stalls after step 1 (a machine that stops answering): rank 0 says it is waiting at the default
    verbosity, gives up after --rank_timeout and ends the run with one error naming rank 1 (not torch's timeout
    traceback, not a wait of torch's default 30 minutes); the checkpoint of step 1 is kept."""
    output = tmp_path / "run"
    args = pretrain_args(
        training, output, "--max_train_steps", "4", "--checkpointing_steps", "1", "--rank_timeout", "8"
    )
    stalled = launch(args, processes=2, env={"CLAY_HF_STALL_AFTER_STEP": "1:1"}, check=False)
    assert stalled.returncode != 0
    assert "rank 0 has finished no micro-batch for a while" in stalled.stderr
    errors = [line for line in stalled.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: rank(s) [1] stopped answering at step 2 (a collective waited for them up to "
                      "--rank_timeout 8 s); their machines may be gone. Resume from the newest checkpoint with "
                      "--resume_from_checkpoint latest"]  # fmt: skip
    assert [path.name for path in list_checkpoints(output)] == ["checkpoint-1"]  # step 1's, whole


def test_each_damaged_checkpoint_file_is_refused_by_name(training, tmp_path, capsys):
    output = tmp_path / "run"
    assert (
        pretrain_in_process(pretrain_args(training, output, "--max_train_steps", "2", "--checkpointing_steps", "1"))
        == 0
    )
    older, newest = list_checkpoints(output)
    # Nothing in a checkpoint needs unpickling code to load: the scheduler has a weights-only file of its own.
    assert not list(newest.glob("custom_checkpoint_*")) and (newest / "scheduler_state.pt").is_file()
    for path in [newest / "optimizer.bin", *sorted(newest.glob("*.pt"))]:
        torch.load(path, weights_only=True)
    for name, damage in (
        ("model.safetensors", "flip"),
        ("scheduler_state.pt", "flip"),
        ("optimizer.bin", "flip"),
        ("random_states_0.pkl", "truncate"),
        ("data_state_rank0.pt", "truncate"),
        ("train_state.json", "truncate"),
    ):
        path = newest / name
        intact = path.read_bytes()
        changed = bytearray(intact)
        if damage == "flip":
            changed[len(changed) * 2 // 3] ^= 0x01
        else:
            del changed[len(changed) // 2 :]
        path.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError) as refused:
            verify_checkpoint(newest)
        assert f"{path} is damaged" in str(refused.value), name
        assert f"The newest intact checkpoint is {older}" in str(refused.value), name
        path.write_bytes(intact)
    verify_checkpoint(newest)
    args = pretrain_args(training, output, "--max_train_steps", "3", "--resume_from_checkpoint", str(newest))
    capsys.readouterr()
    assert pretrain_in_process(args) == 0
    assert f"resumed from {newest} at step 2" in capsys.readouterr().out
    assert summary(output)["global_step"] == 3
    # A checkpoint without its checksums is not trusted: it was not written completely.
    (newest / CHECKSUMS_NAME).unlink()
    with pytest.raises(IntegrityError, match=rf"{newest} has no checksums.sha256"):
        verify_checkpoint(newest)


def test_latest_of_a_run_without_checkpoints_is_refused_naming_both_runs(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / "train_state.json").write_text(json.dumps({"run_id": "aaaa"}))
    (folder / CURRENT_RUN_NAME).write_text(json.dumps({"run_id": "bbbb", "started": "today"}))
    with pytest.raises(ResumeError, match=r"no checkpoint of its current run bbbb .*checkpoint-4, is of run aaaa"):
        resolve_checkpoint(tmp_path, "latest")
    (folder / "checkpoint-5-bbbb").mkdir()
    (folder / ".checkpoint-6-bbbb.partial").mkdir()  # what a kill during a save leaves
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-5-bbbb"


def test_a_second_pretraining_run_on_one_output_is_refused(training, tmp_path):
    output = tmp_path / "run"
    with OutputLock(output):
        refused = launch(pretrain_args(training, output, "--max_train_steps", "1"), check=False)
    assert refused.returncode == 1
    assert f"error: {output} is being written by another run (pid {os.getpid()}" in refused.stderr
    assert not (output / "checkpoints").exists()


def test_two_process_resume_from_a_checkpoint_where_a_rank_pads_equals_the_unbroken_run(training, tmp_path):
    """9 chips over 2 ranks: 3 and 2 batches an epoch. The checkpoint after step 2 is taken when rank 1 has no batch
    left: it pads step 3 with its last batch, which the checkpoint must hold."""
    common = ["--num_train_epochs", "2", "--checkpointing_steps", "2"]
    unbroken = tmp_path / "unbroken"  # launched beside the run that is killed, on a port of its own
    reference = start_pretraining(pretrain_args(training, unbroken, *common), processes=2)
    broken = tmp_path / "broken"
    killed = launch(pretrain_args(training, broken, *common), processes=2, env={"CLAY_HF_CRASH_AFTER_STEP": "2"},
                    check=False)  # fmt: skip
    assert killed.returncode != 0
    finish_pretraining(reference)
    resumed = launch(pretrain_args(training, broken, *common, "--resume_from_checkpoint", "latest"), processes=2)
    assert "no chip to pad with" not in resumed.stderr
    expected, got = summary(unbroken), summary(broken)
    assert (got["global_step"], got["chips_seen"]) == (expected["global_step"], expected["chips_seen"]) == (6, 18)
    _assert_same_weights(load_file(unbroken / "model.safetensors"), broken)


def test_a_full_disk_at_the_final_save_keeps_the_previous_model_and_summary_whole(small_disk):
    """The run's own folder gets its files one rename each, only once all are written (`save_pretrained_folder`,
    shared=True): a full disk leaves the previous model and summary as they were, never a 0-byte summary."""
    disk = small_disk(128)
    write_json(disk / "training_summary.json", {"global_step": 1})
    (disk / "model.safetensors").write_bytes(b"previous")
    full = pytest.raises(OutputError, match=rf"cannot write {disk}: No space left on device")
    with full, atomic_files(disk, last=["training_summary.json"]) as staging:
        (staging / "model.safetensors").write_bytes(b"w" * 200 * 1024)
        write_json(staging / "training_summary.json", {"global_step": 2})
    assert read_json(disk / "training_summary.json") == {"global_step": 1}
    assert (disk / "model.safetensors").read_bytes() == b"previous"
    assert sorted(path.name for path in disk.iterdir()) == ["model.safetensors", "training_summary.json"]


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_rerun_is_whole(training, small_disk, tmp_path):
    """A launched run writes on a real small file system (the patched one is this process's); once the disk has
    room, the same command trains to the weights of an uninterrupted run."""
    disk = small_disk(512, real=True)
    output = disk / "run"
    args = ["--max_train_steps", "2", "--checkpointing_steps", "1"]
    result = launch(pretrain_args(training, output, *args), check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot write {output / 'checkpoints' / 'checkpoint-1'}: No space left on device"], (
        result.stderr[-3000:]
    )
    assert "OSError" not in result.stderr and "RuntimeError" not in result.stderr
    assert not [path for path in disk.rglob("*") if path.name.endswith(".partial")]
    assert not lock_path(output).exists() and not (output / "training_summary.json").exists()
    small_disk.resize(disk, 64 * 1024)
    launch(pretrain_args(training, output, *args))
    assert pretrain_in_process(pretrain_args(training, tmp_path / "unbroken", *args)) == 0
    _assert_same_weights(load_file(tmp_path / "unbroken" / "model.safetensors"), output)
    assert [path.name for path in list_checkpoints(output)] == ["checkpoint-1", "checkpoint-2"]


# --- kill -9 just before an output is renamed into place ---------------------------------------------------------------


def _killed_before_rename(command: list[str], output: Path, fifo: Path) -> None:
    """Run `command` until it is about to rename `output` into place (it then waits on `fifo`:
    `utils.outputs.fault_point`), and kill -9 it there."""
    stall = _Stall(fifo)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "CLAY_HF_STALL_BEFORE_RENAME": str(output), "CLAY_HF_STALL_FIFO": str(fifo)}  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _kill_when(process, stall.reader_waits), f"ended before the kill: {process.stderr.read()[-3000:]}"


def test_embed_killed_as_it_renames_the_joined_file_resumes_to_the_uninterrupted_rows(
    model_dir, chips, uninterrupted, tmp_path
):
    output = tmp_path / "e.parquet"
    args = ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output", str(output),
            "--batch_size", "2", "--rows_per_part", "2"]  # fmt: skip
    _killed_before_rename([sys.executable, str(REPO / "scripts" / "embed.py"), *args], output, tmp_path / "fifo")
    assert not output.exists()  # the joined file is whole or absent
    assert embed_main([*args, "--resume"]) == 0
    _assert_same_rows(output, uninterrupted)


def test_pretraining_killed_at_its_final_save_resumes_to_the_uninterrupted_model_and_summary(training, tmp_path):
    """Killed between the model's rename and the summary's (the summary comes last: a folder without it is not a
    finished run), the run resumes from its last checkpoint to the uninterrupted weights and summary."""
    args = ["--max_train_steps", "3", "--checkpointing_steps", "1"]
    unbroken = tmp_path / "unbroken"
    assert pretrain_in_process(pretrain_args(training, unbroken, *args)) == 0
    broken = tmp_path / "broken"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_machines", "1",
               "--num_processes", "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "scripts" / "pretrain.py"), *pretrain_args(training, broken, *args)]  # fmt: skip
    _killed_before_rename(command, broken / "training_summary.json", tmp_path / "fifo")
    assert (broken / "model.safetensors").exists() and not (broken / "training_summary.json").exists()
    launch(pretrain_args(training, broken, *args, "--resume_from_checkpoint", "latest"))
    expected, resumed = summary(unbroken), summary(broken)
    for key in ("global_step", "chips_seen", "epochs_completed", "final_train_loss", "hyperparameters"):
        assert resumed[key] == expected[key], key
    _assert_same_weights(load_file(unbroken / "model.safetensors"), broken)
    assert not [path for path in broken.rglob("*") if path.name.endswith(".partial")]


def test_publish_killed_as_it_renames_the_staged_repository_reruns_to_the_uninterrupted_one(model_dir, tmp_path):
    staging = tmp_path / "staging"
    args = ["--model_dir", str(model_dir), "--staging_dir", str(staging), "--dry_run"]
    _killed_before_rename([sys.executable, str(REPO / "scripts" / "publish.py"), *args], staging, tmp_path / "fifo")
    assert not staging.exists()
    assert publish_main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    assert publish_main(["--model_dir", str(model_dir), "--staging_dir", str(elsewhere), "--dry_run"]) == 0
    assert _files(staging) == _files(elsewhere)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]
