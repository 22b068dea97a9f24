"""Faults of the data writers (issue #25): a full disk, a kill or a second run never leaves a result that is
trusted wrongly — make_chips, pack_shards, pack_webdataset and predict; and the Clay shard header checksum."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from conftest import PATCHED_DISK_ENV, small_config
from geotiffs import sample_scene_or_skip, write_geotiff, write_scene_stack
from test_fault_injection import _kill_when, _Stall

from clay_hf import ClayForImageClassification, ClayForMaskedImageModeling, ClayForSemanticSegmentation
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.make_chips import main as make_chips_main
from clay_hf.commands.pack_shards import main as pack_shards_main
from clay_hf.commands.pack_webdataset import main as pack_webdataset_main
from clay_hf.commands.predict import main as predict_cli
from clay_hf.data import read_chip
from clay_hf.data.shards import iter_shard, pack_shards, read_index
from clay_hf.data.webdataset import load_chip_webdataset
from clay_hf.utils.errors import IntegrityError
from clay_hf.utils.outputs import OutputLock

REPO = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name → bytes), hidden ones included."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def chip_pixels(folder: Path) -> dict[str, bytes]:
    """Each chip's name → its pixels and tags, as read back (files may differ in bytes GDAL does not fix)."""
    out = {}
    for path in sorted(folder.glob("*.tif")):
        with rasterio.open(path) as dataset:
            out[path.name] = dataset.read().tobytes() + repr(sorted(dataset.tags().items())).encode()
    return out


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    """A 4-band crop of the real Sentinel-2 sample scene: 6 chips of 64 pixels."""
    scene = sample_scene_or_skip()
    return write_scene_stack(scene, tmp_path_factory.mktemp("scene") / "scene.tif", window=(600, 600, 128, 192))


# --- make_chips (item 3) ----------------------------------------------------------------------------------------------


def run_killed(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python (it kills itself with SIGKILL at its chosen moment)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("kill_at", [1, 4])
def test_make_chips_killed_while_writing_a_chip_reruns_to_the_uninterrupted_result(scene_file, tmp_path, kill_at):
    args = [str(scene_file), "--chip_size", "64", "--date", "2016-05-01"]
    assert make_chips_main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    killed = run_killed(f"""
        import os, rasterio.io
        from clay_hf.commands.make_chips import main as make_chips_main
        real, calls = rasterio.io.DatasetWriter.write, [0]
        def write(self, *args, **kwargs):
            real(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == {kill_at}:
                os.kill(os.getpid(), 9)  # the chip's pixels are written, the file is not closed
        rasterio.io.DatasetWriter.write = write
        make_chips_main({[*args, "--output_dir", str(tmp_path / "out")]!r})
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for chip in (tmp_path / "out").glob("*.tif"):  # what carries a chip's name is a whole chip
        assert read_chip(chip).pixels is not None
    assert make_chips_main([*args, "--output_dir", str(tmp_path / "out")]) == 0
    assert chip_pixels(tmp_path / "out") == chip_pixels(tmp_path / "whole")
    assert sorted(tree(tmp_path / "out")) == sorted(tree(tmp_path / "whole"))  # no partial file left


def test_make_chips_on_a_full_disk_blames_the_output_and_reruns_to_the_uninterrupted_result(
    scene_file, tmp_path, small_disk, capsys
):
    args = [str(scene_file), "--chip_size", "64"]
    assert make_chips_main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    disk = small_disk(96, real=True)  # GDAL writes the chips
    assert make_chips_main([*args, "--output_dir", str(disk / "chips")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: cannot write ") and "claytile_scene_20160511_v02_" in error
    assert "No space left on device" in error and "cannot be read" not in error
    for chip in (disk / "chips").glob("*"):
        assert chip.suffix == ".tif" and read_chip(chip).pixels is not None  # complete chips only
    small_disk.resize(disk, 4096)
    assert make_chips_main([*args, "--output_dir", str(disk / "chips")]) == 0
    assert chip_pixels(disk / "chips") == chip_pixels(tmp_path / "whole")
    assert sorted(tree(disk / "chips")) == sorted(tree(tmp_path / "whole"))


# --- pack_shards (items 6 and 10, the header checksum) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> list[str]:
    return [str(path) for path in write_synthetic_chips(tmp_path_factory.mktemp("chips"), 10, size=16, seed=3)]


def shard_names(folder: Path) -> list[list[str]]:
    return [read_index(path).names for path in sorted(folder.glob("*.clayshard"))]


def test_pack_shards_rerun_after_a_kill_with_another_chip_or_size_gives_the_uninterrupted_result(chips, tmp_path):
    out = tmp_path / "out"
    pack_shards(chips, out, chips_per_shard=4)
    (out / "chips-000002.clayshard").unlink()  # killed before the last shard
    first = write_synthetic_chips(tmp_path / "first", 1, size=16, seed=9)[0]
    added = first.rename(first.with_name("claytile_00AAA_20170101_v02_0000.tif"))  # sorts before every other
    more = sorted([*chips, str(added)])
    report = pack_shards(more, out, chips_per_shard=4)
    fresh = pack_shards(more, tmp_path / "fresh", chips_per_shard=4)
    assert report.chips == fresh.chips == 11
    assert shard_names(out) == shard_names(tmp_path / "fresh")
    assert tree(out) == tree(tmp_path / "fresh")
    report = pack_shards(more, out, chips_per_shard=3)  # another size: every shard is packed again
    fresh = pack_shards(more, tmp_path / "fresh3", chips_per_shard=3)
    assert report.chips == 11 and tree(out) == tree(tmp_path / "fresh3")
    report = pack_shards(more, out, chips_per_shard=8)  # fewer shards: the stale ones go
    assert report.chips == 11 and [len(names) for names in shard_names(out)] == [8, 3]


def test_a_flipped_date_in_a_record_header_is_refused_by_name(chips, tmp_path):
    report = pack_shards(chips[:2], tmp_path / "shards")
    shard = report.shards[0]
    data = bytearray(shard.read_bytes())
    index = read_index(shard)
    at = data.index(b'"date":"', index.offsets[1]) + len('"date":"2')
    data[at] = ord("9") if data[at] != ord("9") else ord("8")  # 2xxx → 29xx: still a valid date
    shard.write_bytes(bytes(data))
    records = list(iter_shard(shard))
    assert records[0].pixels is not None
    assert isinstance(records[1], ValueError)
    assert f"{shard} record 1" in str(records[1]) and "header does not match its CRC-32" in str(records[1])


def partials(folder: Path) -> list[str]:
    """The temporary files of the fault contract (`.NAME.partial`) under `folder`."""
    return sorted(path.name for path in folder.rglob(".*") if path.name.endswith(".partial"))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("patched", [False, True], ids=["tmpfs", "patched"])
def test_pack_shards_on_a_full_disk_is_one_line_leaves_no_partial_and_reruns_to_a_fresh_run(
    chips, tmp_path, small_disk, capsys, monkeypatch, num_workers, patched
):
    monkeypatch.setenv(PATCHED_DISK_ENV, "1" if patched else "0")
    args = [str(Path(chips[0]).parent), "--chips_per_shard", "2", "--num_workers", str(num_workers)]
    assert pack_shards_main([*args, "--output_dir", str(tmp_path / "fresh")]) == 0
    disk = small_disk(80)  # room for two of the five shards
    output = disk / "shards"
    capsys.readouterr()
    assert pack_shards_main([*args, "--output_dir", str(output)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: cannot write {output}/chips-0000") and errors[0].endswith(
        ".clayshard: No space left on device"
    )
    assert partials(disk) == [] and 0 < len(list(output.iterdir())) < 5
    small_disk.resize(disk, 4096)
    assert pack_shards_main([*args, "--output_dir", str(output)]) == 0
    assert tree(output) == tree(tmp_path / "fresh")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_pack_shards_pool_workers_end_when_the_parent_is_killed(chips, tmp_path):
    code = f"""
        import time
        from clay_hf.data import shards
        real = shards.read_chip
        def slow(*args, **kwargs):
            time.sleep(0.5)
            return real(*args, **kwargs)
        shards.read_chip = slow
        shards.pack_shards({chips!r}, {str(tmp_path / "out")!r}, chips_per_shard=1, num_workers=2)
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _children(parent.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, "the pool did not start"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "pool workers outlived their killed parent"
    finally:
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


# --- one writer per output --------------------------------------------------------------------------------------------


def test_a_second_writer_of_an_output_is_refused_while_the_first_lives(chips, tmp_path, capsys):
    out = tmp_path / "out"
    with OutputLock(out):  # this live process holds it
        assert make_chips_main(["--synthetic", "2", "--chip_size", "16", "--output_dir", str(out)]) == 1
        assert pack_shards_main([str(Path(chips[0]).parent), "--output_dir", str(out)]) == 1
        assert pack_webdataset_main([str(Path(chips[0]).parent), "--output_dir", str(out)]) == 1
        assert (
            predict_cli(["--model_name_or_path", str(tmp_path), "--data_dir", chips[0], "--output_dir", str(out)]) == 1
        )
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all("is being written by another run" in line for line in errors), errors
    assert make_chips_main(["--synthetic", "2", "--chip_size", "16", "--output_dir", str(out)]) == 0  # released


# --- WebDataset tars --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patched", [False, True], ids=["tmpfs", "patched"])
def test_pack_webdataset_on_a_full_disk_leaves_only_whole_tars_and_reruns_to_the_same_result(
    chips, tmp_path, small_disk, capsys, monkeypatch, patched
):
    monkeypatch.setenv(PATCHED_DISK_ENV, "1" if patched else "0")
    source = str(Path(chips[0]).parent)
    assert pack_webdataset_main([source, "--output_dir", str(tmp_path / "whole"), "--chips_per_shard", "2"]) == 0
    disk = small_disk(48)
    assert pack_webdataset_main([source, "--output_dir", str(disk / "tars"), "--chips_per_shard", "2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    for tar in (disk / "tars").iterdir():
        with tarfile.open(tar) as archive:  # whole tars only, no partial ones
            assert len(archive.getnames()) == 4
    small_disk.resize(disk, 4096)
    assert pack_webdataset_main([source, "--output_dir", str(disk / "tars"), "--chips_per_shard", "2"]) == 0
    assert tree(disk / "tars") == tree(tmp_path / "whole")


def damage_tar(tar: Path, how: str) -> None:
    """Cut a tar in half, or flip a bit of a member header's name (the header then fails its checksum)."""
    data = bytearray(tar.read_bytes())
    if how == "truncated":
        tar.write_bytes(bytes(data[: len(data) // 2]))
        return
    with tarfile.open(tar) as archive:
        member = archive.getmembers()[0 if how == "flipped first header" else 2]
    data[member.offset] ^= 1
    tar.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped header", "flipped first header"])
def test_a_damaged_tar_is_refused_by_name_and_a_resume_packs_its_chips_again(chips, tmp_path, how):
    args = [str(Path(chips[0]).parent), "--chips_per_shard", "4"]
    assert pack_webdataset_main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "out"
    assert pack_webdataset_main([*args, "--output_dir", str(out)]) == 0
    damage_tar(out / "chips-000001.tar", how)
    with pytest.raises(IntegrityError, match=rf"{out / 'chips-000001.tar'} is a damaged or truncated tar shard"):
        load_chip_webdataset(out)
    assert pack_webdataset_main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert tree(out) == tree(tmp_path / "whole")


# --- predict (item 2, atomic tables) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mim")
    ClayForMaskedImageModeling(small_config(num_hidden_layers=1)).save_pretrained(folder)
    model = ClayForSemanticSegmentation.from_pretrained(folder, num_labels=3, decode_head_type="fcn")
    model.save_pretrained(folder / "segmenter")
    ClayForImageClassification.from_pretrained(folder, num_labels=2).save_pretrained(folder / "classifier")
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """12 small scenes, two of them named scene.tif in two folders."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    for index in range(10):
        write_geotiff(root / f"s{index:02d}.tif", size=(32, 32), data=rng.uniform(100, 3000, (13, 32, 32)).astype("float32"))  # fmt: skip
    for folder in ("a", "b"):
        write_geotiff(root / folder / "scene.tif", size=(32, 32), seed=ord(folder))
    return root


def class_maps(folder: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(folder.rglob("*.tif")):
        with rasterio.open(path) as dataset:
            out[str(path.relative_to(folder))] = dataset.read().tobytes()
    return out


def test_predict_mirrors_the_inputs_paths_and_resumes_by_them(segmenter, scenes, tmp_path):
    args = ["--model_name_or_path", str(segmenter / "segmenter"), "--data_dir", str(scenes), "--tile_size", "32"]
    assert predict_cli([*args, "--output_dir", str(tmp_path / "out")]) == 0
    maps = class_maps(tmp_path / "out")
    assert "a/scene.tif" in maps and "b/scene.tif" in maps and len(maps) == 12
    (tmp_path / "out" / "b" / "scene.tif").unlink()
    assert predict_cli([*args, "--output_dir", str(tmp_path / "out"), "--resume"]) == 0
    assert class_maps(tmp_path / "out") == maps


def test_predict_on_a_full_disk_exits_1_and_resume_redoes_what_is_not_whole(
    segmenter, scenes, tmp_path, small_disk, capsys
):
    args = ["--model_name_or_path", str(segmenter / "segmenter"), "--data_dir", str(scenes), "--tile_size", "32"]
    assert predict_cli([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    disk = small_disk(24, real=True)  # GDAL writes the maps
    assert predict_cli([*args, "--output_dir", str(disk / "maps")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    for path in (disk / "maps").rglob("*"):
        if path.is_file():  # only maps under their names, each whole
            assert path.suffix == ".tif" and not path.name.startswith(".")
            with rasterio.open(path) as dataset:
                dataset.read()
    small_disk.resize(disk, 4096)
    written = sorted((disk / "maps").rglob("*.tif"))
    written[0].write_bytes(written[0].read_bytes()[:200])  # a map truncated by an earlier fault
    assert predict_cli([*args, "--output_dir", str(disk / "maps"), "--resume"]) == 0
    assert class_maps(disk / "maps") == class_maps(tmp_path / "whole")


def same_table(first: Path, second: Path) -> bool:
    """Whether two prediction tables hold the same rows, columns and metadata (the whole table, not a count)."""
    return pq.read_table(first).equals(pq.read_table(second), check_metadata=True)


def test_the_prediction_table_is_never_left_partial_on_a_full_disk(segmenter, scenes, tmp_path, small_disk, capsys):
    args = ["--model_name_or_path", str(segmenter / "classifier"), "--data_dir", str(scenes)]
    assert predict_cli([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    disk = small_disk(8, real=True)  # Arrow writes the table
    (disk / "filler").write_bytes(b"\0" * 4096)
    assert predict_cli([*args, "--output_dir", str(disk / "table")]) == 1
    assert "predictions.parquet" in capsys.readouterr().err
    assert not (disk / "table" / "predictions.parquet").exists()
    small_disk.resize(disk, 4096)
    assert predict_cli([*args, "--output_dir", str(disk / "table")]) == 0
    assert pq.read_table(disk / "table" / "predictions.parquet").num_rows == 12
    assert same_table(disk / "table" / "predictions.parquet", tmp_path / "whole" / "predictions.parquet")


@pytest.mark.parametrize("head", ["segmenter", "classifier"])
def test_predict_killed_at_a_seeded_input_resumes_to_the_uninterrupted_result(segmenter, scenes, tmp_path, head):
    """predict.py is killed while it waits on an input at a seeded place (a FIFO that no one writes), after some
    class maps are written (or before the table is), then run again with --resume."""
    inputs = tmp_path / "in"
    shutil.copytree(scenes, inputs)
    stall_after = random.Random(11).randint(2, 8)  # the a/, b/ maps and s00 … sNN before the stall
    stall = _Stall(inputs / f"s{stall_after:02d}x.tif")
    args = ["--model_name_or_path", str(segmenter / head), "--data_dir", str(inputs), "--tile_size", "32"]
    command = [sys.executable, str(REPO / "scripts" / "predict.py"), *args, "--output_dir", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _kill_when(process, stall.reader_waits), "the run ended before the kill"
    if head == "segmenter":
        assert len(class_maps(tmp_path / "out")) == stall_after + 3  # maps written before the kill
    stall.replace_with_chip()
    assert predict_cli([*args, "--output_dir", str(tmp_path / "out"), "--resume"]) == 0
    assert predict_cli([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    assert tree(tmp_path / "out").keys() == tree(tmp_path / "whole").keys()  # no partial or extra file
    if head == "segmenter":
        assert (
            class_maps(tmp_path / "out") == class_maps(tmp_path / "whole") and len(class_maps(tmp_path / "out")) == 13
        )
    else:
        assert same_table(tmp_path / "out" / "predictions.parquet", tmp_path / "whole" / "predictions.parquet")
