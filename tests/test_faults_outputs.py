"""Faults in the remaining writers (issue 25): conversion, ONNX export, search indexes and hits, reconstruction PNGs,
evaluation and probe results.

For each writer: a full disk is one `error:` line naming the output and the cause with nothing left behind, a second
writer is refused naming the live holder (and takes over a dead one's lock), and a rerun after an interruption (a
killed run's leftovers, or an interruption while writing) gives what an uninterrupted run gives.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import TINY_CKPT, save_pretraining_model
from test_faults_runs import _one_error_line
from test_search import write_embeddings

import clay_hf.commands.convert_checkpoint as convert_command
import clay_hf.export.onnx as onnx_export
import clay_hf.search.table as search_table
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.convert_checkpoint import main as convert_main
from clay_hf.commands.evaluate import main as evaluate_main
from clay_hf.commands.export_onnx import main as export_main
from clay_hf.commands.linear_probe import main as probe_main
from clay_hf.commands.reconstruct import main as reconstruct_main
from clay_hf.commands.search import main as search_main
from clay_hf.search import open_index, search
from clay_hf.utils.errors import OutputError
from clay_hf.utils.outputs import (
    CHECKSUMS_NAME,
    OutputLock,
    foreign_contents,
    lock_path,
    partial_path,
    verify_checksums,
)

HEADS = ["--num_attention_heads", "4", "--decoder_num_attention_heads", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_pretraining_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chips")
    write_synthetic_chips(folder, 3, size=32, seed=5)
    return folder


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) by its relative name, with its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def leave_dead_holders_lock(output: Path) -> None:
    """The lock of `output` as a killed run leaves it: naming a process of this host that has ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    record = {"host": socket.gethostname(), "pid": ended.pid, "process_start": None, "started": "earlier"}
    lock_path(output).parent.mkdir(parents=True, exist_ok=True)
    lock_path(output).write_text(json.dumps(record))


def assert_refused_while_held(output: Path, run, capsys) -> None:
    """`run()` on `output` while this live process holds its lock: exit 1, one line naming the holder."""
    with OutputLock(output):
        assert run() == 1
    assert f"{output} is being written by another run (pid {os.getpid()} on" in _one_error_line(capsys)


# --- conversion -----------------------------------------------------------------------------------------------------


def convert_args(output: Path) -> list[str]:
    return ["--checkpoint", str(TINY_CKPT), "--output_dir", str(output), *HEADS]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted conversion."""
    output = tmp_path_factory.mktemp("converted") / "model"
    assert convert_main(convert_args(output)) == 0
    return files(output)


def test_a_conversion_carries_checksums_that_publish_checks(converted, tmp_path):
    assert sorted(converted) == [CHECKSUMS_NAME, "clay_conversion.json", "config.json", "model.safetensors",
                                 "preprocessor_config.json"]  # fmt: skip
    output = tmp_path / "model"
    for name, data in converted.items():
        output.mkdir(exist_ok=True)
        (output / name).write_bytes(data)
    assert verify_checksums(output) == sorted(name for name in converted if name != CHECKSUMS_NAME)


def test_a_full_disk_while_converting_is_one_line_and_leaves_nothing(small_disk, capsys):
    disk = small_disk(512, real=True)  # safetensors writes in Rust: a real file system
    output = disk / "model"
    assert convert_main(convert_args(output)) == 1
    assert _one_error_line(capsys) == f"error: cannot write {output}: No space left on device"
    assert list(disk.iterdir()) == []


def test_a_second_conversion_into_a_folder_is_refused_naming_the_holder(tmp_path, capsys):
    output = tmp_path / "model"
    assert_refused_while_held(output, lambda: convert_main(convert_args(output)), capsys)
    assert not output.exists()


def test_a_conversion_interrupted_while_writing_keeps_the_previous_folder_and_reruns_whole(
    converted, tmp_path, monkeypatch
):
    output = tmp_path / "model"
    assert convert_main(convert_args(output)) == 0
    before = files(output)

    def killed(model, folder, record):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed halfway through the weights

    monkeypatch.setattr(convert_command, "save_converted", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_main(convert_args(output))
    assert files(output) == before and list(tmp_path.iterdir()) == [output]
    monkeypatch.undo()
    # What a kill -9 leaves: the staging folder and the lock of a run that has ended.
    partial_path(output).mkdir()
    (partial_path(output) / "model.safetensors").write_bytes(b"half")
    leave_dead_holders_lock(output)
    assert convert_main(convert_args(output)) == 0
    assert files(output) == converted and list(tmp_path.iterdir()) == [output]


def test_a_conversion_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    assert convert_main(convert_args(output)) == 1
    assert "holds notes.txt, which this conversion does not write" in _one_error_line(capsys)
    assert files(output) == {"notes.txt": b"keep me"}


def test_a_conversion_refuses_an_earlier_one_beside_other_files_naming_them(tmp_path, capsys):
    """Once, a folder holding an earlier conversion was replaced whole, with the checkpoint and notes beside it."""
    output = tmp_path / "model"
    assert convert_main(convert_args(output)) == 0
    (output / "clay.ckpt").write_bytes(TINY_CKPT.read_bytes())
    (output / "my_notes.txt").write_text("keep me")
    before = files(output)
    assert convert_main(convert_args(output)) == 1
    assert f"--output_dir {output} holds clay.ckpt, my_notes.txt, which this conversion does not write" in (
        _one_error_line(capsys)
    )
    assert files(output) == before


def test_a_conversion_refuses_a_checkpoint_inside_the_output_folder(tmp_path, capsys):
    output = tmp_path / "model"
    assert convert_main(convert_args(output)) == 0
    checkpoint = output / "model.safetensors"  # even named as one of the conversion's own files
    checkpoint.write_bytes(TINY_CKPT.read_bytes())
    before = files(output)
    assert convert_main(["--checkpoint", str(checkpoint), "--output_dir", str(output), *HEADS]) == 1
    assert f"--checkpoint {checkpoint} is inside --output_dir {output}" in _one_error_line(capsys)
    assert files(output) == before


def test_a_conversion_replaces_a_folder_holding_only_an_earlier_one(converted, tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    for name, data in converted.items():
        (output / name).write_bytes(b"an earlier conversion's " + data[:16])
    (output / "model-00001-of-00002.safetensors").write_bytes(b"an earlier, sharded one")
    (output / "model.safetensors.index.json").write_text("{}")
    assert convert_main(convert_args(output)) == 0
    assert files(output) == converted


def test_foreign_contents_names_what_replacing_a_folder_would_delete(tmp_path):
    folder = tmp_path / "out"
    assert foreign_contents(folder, own=("*.json",)) == []  # absent: nothing to delete
    folder.mkdir()
    for name in ("config.json", "notes.txt", "model-00001-of-00002.safetensors"):
        (folder / name).write_text("x")
    assert foreign_contents(folder, own=("*.json", "model-*-of-*.safetensors")) == ["notes.txt"]
    assert foreign_contents(folder) == ["config.json", "model-00001-of-00002.safetensors", "notes.txt"]
    (folder / ".mine").write_text("")
    assert foreign_contents(folder, marker=".mine") == []
    with pytest.raises(OutputError, match=r"cannot write .*notes\.txt: it is a file, not a folder"):
        foreign_contents(folder / "notes.txt")


# --- ONNX export ------------------------------------------------------------------------------------------------------


def export_args(model_dir: Path, output: Path) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--output", str(output)]


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> bytes:
    """The file of an uninterrupted export."""
    output = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    assert export_main(export_args(model_dir, output)) == 0
    return output.read_bytes()


def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(model_dir, small_disk, capsys):
    disk = small_disk(128, real=True)  # ONNX writes and checks in C++: a real file system
    output = disk / "encoder.onnx"
    assert export_main(export_args(model_dir, output)) == 1
    assert _one_error_line(capsys) == f"error: cannot write {output}: No space left on device"
    assert list(disk.iterdir()) == []


def test_a_second_export_to_a_file_is_refused_naming_the_holder(model_dir, tmp_path, capsys):
    output = tmp_path / "encoder.onnx"
    assert_refused_while_held(output, lambda: export_main(export_args(model_dir, output)), capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_export_that_does_not_read_back_is_refused_and_the_rerun_is_whole(
    model_dir, exported, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "encoder.onnx"
    save = onnx_export._save_program

    def truncated(program, path, name):
        save(program, path, name)
        path.write_bytes(path.read_bytes()[:-1000])  # what a write that failed silently leaves

    monkeypatch.setattr(onnx_export, "_save_program", truncated)
    assert export_main(export_args(model_dir, output)) == 1
    assert _one_error_line(capsys).startswith(f"error: cannot write {output}: it did not read back complete")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    partial_path(output).write_bytes(b"what a killed run left")
    leave_dead_holders_lock(output)
    assert export_main(export_args(model_dir, output)) == 0
    assert output.read_bytes() == exported and list(tmp_path.iterdir()) == [output]


def onnx_outputs(path: Path) -> tuple[np.ndarray, ...]:
    """What an exported encoder gives on fixed inputs (ONNX Runtime, with its external data if any)."""
    encoder = onnx_export.OnnxEncoder(path)
    outputs = encoder(**onnx_export.sample_inputs(encoder.config, batch_size=1))
    return outputs.last_hidden_state.numpy(), outputs.pooler_output.numpy()


def test_an_export_with_external_data_is_checked_whole_before_either_file_is_renamed(
    model_dir, exported, tmp_path, monkeypatch, capsys
):
    """The data file was once written under its final name before the graph's check: a failed check left the earlier
    graph beside new data, and the data file behind."""
    import onnx

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # the tiny model's weights go to encoder.onnx.data
    output, data = tmp_path / "encoder.onnx", tmp_path / "encoder.onnx.data"
    assert export_main(export_args(model_dir, output)) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    graph = onnx.load(str(output), load_external_data=False)
    assert {entry.value for tensor in graph.graph.initializer for entry in tensor.external_data
            if entry.key == "location"} == {"encoder.onnx.data"}  # fmt: skip
    (tmp_path / "small.onnx").write_bytes(exported)
    for external, whole in zip(onnx_outputs(output), onnx_outputs(tmp_path / "small.onnx"), strict=True):
        np.testing.assert_allclose(external, whole, atol=1e-6)
    (tmp_path / "small.onnx").unlink()
    before = files(tmp_path)

    save = onnx_export._save_program

    def cut_short(program, path, name):
        save(program, path, name)
        data_file = path.parent / f"{name}.data"
        data_file.write_bytes(data_file.read_bytes()[:-1000])  # what a write that failed silently leaves

    monkeypatch.setattr(onnx_export, "_save_program", cut_short)
    assert export_main(export_args(model_dir, output)) == 1
    err = _one_error_line(capsys)
    assert err.startswith(f"error: cannot write {output}: it did not read back complete") and "cut short" in err
    assert files(tmp_path) == before  # the earlier pair, whole; no new file, no partial
    monkeypatch.setattr(onnx_export, "_save_program", save)
    onnx_export.staging_folder(output).mkdir()  # what a kill leaves: the staging folder and a dead run's lock
    (onnx_export.staging_folder(output) / "encoder.onnx.data").write_bytes(b"half")
    leave_dead_holders_lock(output)
    data.unlink()
    assert export_main(export_args(model_dir, output)) == 0
    assert files(tmp_path) == before
    # A graph small enough to hold its weights replaces the pair whole: no earlier data file is left beside it.
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 2**40)
    assert export_main(export_args(model_dir, output)) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["encoder.onnx"]


# --- search: the index and the hits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    """300 random 16-d embeddings of 1°×1° chips (as tests/test_search.py's)."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    footprints = [shapely.box(x, y, x + 1, y + 1) for x in range(-10, 20) for y in range(40, 50)]
    dates = [dt.date(2020, 1, 1)] * 300
    return write_embeddings(tmp_path_factory.mktemp("embeddings") / "e.parquet", vectors, footprints, dates)


def index_args(embeddings: Path, index_dir: Path) -> list[str]:
    return ["index", "--embeddings", str(embeddings), "--index_dir", str(index_dir)]


def hits(index_dir: Path) -> list:
    return search(index_dir, like=["chip_0007.tif"], k=5).to_pylist()


@pytest.fixture(scope="module")
def indexed(embeddings, tmp_path_factory) -> list:
    """The hits of an uninterrupted index."""
    index_dir = tmp_path_factory.mktemp("index") / "index"
    assert search_main(index_args(embeddings, index_dir)) == 0
    return hits(index_dir)


def test_a_full_disk_while_indexing_is_one_line_and_leaves_nothing(embeddings, small_disk, capsys):
    disk = small_disk(24, real=True)  # LanceDB writes in Rust: a real file system
    index_dir = disk / "index"
    assert search_main(index_args(embeddings, index_dir)) == 1
    assert _one_error_line(capsys) == f"error: cannot write {index_dir}: No space left on device"
    assert list(disk.iterdir()) == []


def test_a_second_index_build_is_refused_naming_the_holder(embeddings, tmp_path, capsys):
    index_dir = tmp_path / "index"
    assert_refused_while_held(index_dir, lambda: search_main(index_args(embeddings, index_dir)), capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_rebuild_interrupted_after_the_table_keeps_the_previous_index_and_reruns_whole(
    embeddings, indexed, tmp_path, monkeypatch
):
    """A kill between the table and its metadata once lost the index (it was dropped, then made anew)."""
    index_dir = tmp_path / "index"
    assert search_main(index_args(embeddings, index_dir)) == 0
    monkeypatch.setattr(search_table, "_record", lambda table, info: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        search_main(index_args(embeddings, index_dir))
    assert hits(index_dir) == indexed and sorted(tmp_path.iterdir()) == [index_dir]
    monkeypatch.undo()
    partial_path(index_dir).mkdir()  # what a kill -9 leaves: a half-built folder and a dead run's lock
    (partial_path(index_dir) / "embeddings.lance").mkdir()
    leave_dead_holders_lock(index_dir)
    assert search_main(index_args(embeddings, index_dir)) == 0
    assert hits(index_dir) == indexed and sorted(tmp_path.iterdir()) == [index_dir]
    assert open_index(index_dir)[1].rows == 300


def test_an_index_build_never_replaces_a_folder_that_holds_other_things(embeddings, tmp_path, capsys):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    (index_dir / "notes.txt").write_text("keep me")
    assert search_main(index_args(embeddings, index_dir)) == 1
    assert "holds notes.txt, not only a search table" in _one_error_line(capsys)
    assert files(index_dir) == {"notes.txt": b"keep me"}


def query_args(index_dir: Path, output: Path) -> list[str]:
    return ["query", "--index_dir", str(index_dir), "--like", "chip_0007.tif", "--k", "5", "--output", str(output)]


def test_hits_on_a_full_disk_are_one_line_and_a_held_output_is_refused(embeddings, tmp_path, small_disk, capsys):
    work = tmp_path / "work"
    index_dir = work / "index"
    assert search_main(index_args(embeddings, index_dir)) == 0
    disk = small_disk(8, real=True)  # Arrow writes in C++: a real file system
    (disk / "filler").write_bytes(b"x" * 4096)  # a page left: the lock's
    output = disk / "hits.parquet"
    assert search_main(query_args(index_dir, output)) == 1
    err = _one_error_line(capsys)  # pyarrow words the cause its own way
    assert err.startswith(f"error: cannot write {output}: ") and err.endswith("No space left on device")
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]
    output = work / "hits.parquet"
    assert_refused_while_held(output, lambda: search_main(query_args(index_dir, output)), capsys)
    assert not output.exists()
    partial_path(output).write_bytes(b"what a killed run left")
    leave_dead_holders_lock(output)
    assert search_main(query_args(index_dir, output)) == 0
    assert sorted(path.name for path in work.iterdir()) == ["hits.parquet", "index"]


# --- reconstruction figures, evaluation and probe results ---------------------------------------------------------------


def reconstruct_args(model_dir: Path, chips: Path, output: Path) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output_dir", str(output),
            "--num_chips", "3"]  # fmt: skip


def test_reconstructions_on_a_full_disk_are_one_line_and_the_rerun_gives_the_same_pngs(
    model_dir, chips, tmp_path, small_disk, capsys
):
    whole = tmp_path / "whole"
    assert reconstruct_main(reconstruct_args(model_dir, chips, whole)) == 0
    uninterrupted = files(whole)
    assert len(uninterrupted) == 3
    disk = small_disk(96)
    filler = disk / "filler"
    filler.write_bytes(b"x" * (96 - 4 - len(uninterrupted) * 8) * 1024)  # room for about one PNG
    output = disk / "figures"
    assert reconstruct_main(reconstruct_args(model_dir, chips, output)) == 1
    err = _one_error_line(capsys)
    assert err.startswith(f"error: cannot write {output}/") and err.endswith(".png: No space left on device")
    assert not [path for path in output.iterdir() if path.name.endswith(".partial")]
    assert all(name in uninterrupted and data == uninterrupted[name] for name, data in files(output).items())
    filler.unlink()
    (output / ".leftover.png.partial").write_bytes(b"what a killed run left")
    assert reconstruct_main(reconstruct_args(model_dir, chips, output)) == 0
    assert files(output) == uninterrupted


def test_reconstructions_into_a_held_folder_are_refused_and_a_dead_holder_is_taken_over(
    model_dir, chips, tmp_path, capsys
):
    output = tmp_path / "figures"
    assert_refused_while_held(output, lambda: reconstruct_main(reconstruct_args(model_dir, chips, output)), capsys)
    assert list(tmp_path.iterdir()) == []
    leave_dead_holders_lock(output)
    assert reconstruct_main(reconstruct_args(model_dir, chips, output)) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figures"]


def test_evaluation_into_a_held_folder_is_refused_and_a_dead_holder_is_taken_over(model_dir, chips, tmp_path, capsys):
    output = tmp_path / "results"
    args = ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output_dir", str(output),
            "--split", "all"]  # fmt: skip
    assert_refused_while_held(output, lambda: evaluate_main(args), capsys)
    assert not output.exists()
    leave_dead_holders_lock(output)
    assert evaluate_main(args) == 0
    assert json.loads((output / "eval_results.json").read_text())["num_chips"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]


def test_a_probe_writing_a_held_results_file_is_refused_naming_the_holder(model_dir, tmp_path, capsys):
    for label in ("a", "b"):
        write_synthetic_chips(tmp_path / "classes" / label, 4, size=32, seed=ord(label))
    output = tmp_path / "probe.json"
    args = ["--model_name_or_path", str(model_dir), "--data_dir", str(tmp_path / "classes"), "--output", str(output),
            "--test_size", "0.5"]  # fmt: skip
    assert_refused_while_held(output, lambda: probe_main(args), capsys)
    assert not output.exists()
    leave_dead_holders_lock(output)
    assert probe_main(args) == 0
    assert json.loads(output.read_text())["num_test"] == 4 and not lock_path(output).exists()


def test_a_png_that_does_not_decode_is_never_kept(tmp_path):
    import matplotlib.pyplot as plt

    from clay_hf.evaluation.visualize import save_figure

    figure = plt.figure()
    figure.savefig = lambda path, **kwargs: Path(path).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(OutputError, match=r"figure\.png: it did not read back complete"):
        save_figure(figure, tmp_path / "figure.png")
    assert list(tmp_path.iterdir()) == []
