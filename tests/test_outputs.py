"""The one fault contract of every writer (clay_hf.utils.outputs): atomic files and folders, one line per fault,
one writer per output, checksums."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import pytest
from conftest import PATCHED_DISK_ENV

from clay_hf.data.chips import ChipError
from clay_hf.data.shards import ShardError
from clay_hf.utils.errors import ClayUserError, IntegrityError, OutputError, OutputLockedError
from clay_hf.utils.outputs import (
    CHECKSUMS_NAME,
    OutputLock,
    atomic_file,
    atomic_folder,
    lock_path,
    model_folder,
    partial_path,
    read_checksums,
    read_json,
    remove_partials,
    verify_checksums,
    write_checksums,
    write_json,
)


def test_atomic_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_file(target) as temporary:
        temporary.write_bytes(b"first half")
        assert not target.exists()
        assert temporary == partial_path(target)
    assert target.read_bytes() == b"first half"
    assert not partial_path(target).exists()


def test_a_failed_write_keeps_the_previous_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("{")
        raise RuntimeError("killed while writing")
    assert read_json(target) == {"version": 1}
    assert not partial_path(target).exists()


def test_a_full_disk_is_one_output_error_naming_the_path(tmp_path, monkeypatch):
    target = tmp_path / "out.json"

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pathlib.Path.write_bytes", full)
    with pytest.raises(OutputError) as caught:
        write_json(target, {"a": 1})
    assert isinstance(caught.value, ClayUserError)
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "error",
    [
        OutputError("/out/x.bin", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
        OutputError("/out/x.bin", "it did not read back"),
        ShardError("/out/a.clayshard", "is truncated"),
        ChipError("/in/a.tif", "has no date"),
        IntegrityError("/out/x is damaged"),
    ],
)
def test_user_errors_cross_a_process_boundary_as_themselves(error):
    """A pool worker's error reaches the parent by pickle: an `__init__` whose parameters are not `args` must not
    break it (a BrokenProcessPool in place of the one-line error)."""
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error) and str(restored) == str(error)
    assert {key: str(value) for key, value in vars(restored).items()} == {
        key: str(value) for key, value in vars(error).items()
    }


def test_a_vanished_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="No such file or directory"):
        write_json(tmp_path / "gone" / "out.json", {})


def test_verify_refuses_what_does_not_read_back(tmp_path):
    target = tmp_path / "map.tif"

    def verify(path):
        raise ValueError("TIFF header only")

    expected = r"map\.tif: it did not read back complete \(TIFF header only\)"
    with pytest.raises(OutputError, match=expected), atomic_file(target, verify=verify) as temporary:
        temporary.write_bytes(b"II*\x00")
    assert not target.exists() and not partial_path(target).exists()


def test_atomic_folder_replaces_the_old_folder_only_when_complete(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "weights").write_text("new, half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old"
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]


def test_remove_partials_clears_what_a_killed_run_left(tmp_path):
    partial_path(tmp_path / "a.tif").write_bytes(b"II*")
    (tmp_path / "b.tif").write_bytes(b"complete")
    assert remove_partials(tmp_path) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["b.tif"]


def test_read_json_names_a_truncated_file(tmp_path):
    target = tmp_path / "training_summary.json"
    target.write_text('{"learning_rate": ')
    with pytest.raises(IntegrityError, match=r"training_summary\.json is damaged"):
        read_json(target)


def test_checksums_find_a_flipped_bit_and_a_missing_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "optimizer.bin").write_bytes(b"state")
    write_checksums(tmp_path)
    assert verify_checksums(tmp_path) == ["model.safetensors", "sub/optimizer.bin"]
    # The listing is sha256sum's format.
    assert (tmp_path / CHECKSUMS_NAME).read_text().splitlines()[1].endswith("  sub/optimizer.bin")

    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[100] ^= 0x01
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors is damaged"):
        verify_checksums(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"model\.safetensors is missing"):
        verify_checksums(tmp_path)


def test_a_folder_without_checksums_is_refused_when_they_are_required(tmp_path):
    with pytest.raises(IntegrityError, match=r"has no checksums\.sha256"):
        verify_checksums(tmp_path)
    assert verify_checksums(tmp_path, required=False) == []


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path):
    output = tmp_path / "embeddings.parquet"
    with OutputLock(output):
        holder = json.loads(lock_path(output).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()} on .*embeddings\.parquet\.lock"):
            OutputLock(output).acquire()
    assert not lock_path(output).exists()
    with OutputLock(output):  # released: free again
        pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    output = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from clay_hf.utils.outputs import OutputLock; "
            "OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            str(output),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            OutputLock(output).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(output) as lock:  # its holder is gone: taken over
        assert lock.holder()["pid"] == os.getpid()


def test_a_holder_on_another_host_is_never_taken_over(tmp_path):
    output = tmp_path / "run"
    lock_path(output).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(OutputLockedError, match=r"if that run is gone .*remove"):
        OutputLock(output).acquire()


@pytest.mark.parametrize("patched", [False, True], ids=["tmpfs", "patched"])
def test_a_really_full_disk_is_one_output_error(small_disk, monkeypatch, patched):
    monkeypatch.setenv(PATCHED_DISK_ENV, "1" if patched else "0")
    disk = small_disk(64)
    (disk / "filler").write_bytes(b"x" * 60 * 1024)
    full = pytest.raises(OutputError, match=r"big\.bin: No space left on device")
    with full, atomic_file(disk / "big.bin") as temporary:
        temporary.write_bytes(b"y" * 64 * 1024)
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]
    (disk / "filler").unlink()  # space freed: the same write goes through
    with atomic_file(disk / "big.bin") as temporary:
        temporary.write_bytes(b"y" * 60 * 1024)
    assert (disk / "big.bin").read_bytes() == b"y" * 60 * 1024


def test_the_patched_small_disk_fills_up_through_every_python_write(small_disk, monkeypatch):
    """The fallback where tmpfs cannot be mounted: open, os.write, tarfile and shutil copies all hit its size."""
    monkeypatch.setenv(PATCHED_DISK_ENV, "1")
    disk = small_disk(16)
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize == 16 * 1024
    (disk / "a").write_text("x" * 8 * 1024)
    with pytest.raises(OSError, match="No space left on device"), open(disk / "b", "wb") as file:
        file.write(b"y" * 12 * 1024)
    descriptor = os.open(disk / "c", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError, match="No space left on device"):
        os.write(descriptor, b"z" * 12 * 1024)
    os.close(descriptor)
    (tmp := disk.parent / "big").write_bytes(b"w" * 12 * 1024)
    with pytest.raises(OSError, match="No space left on device"):
        shutil.copyfile(tmp, disk / "copy")
    with pytest.raises(OSError, match="No space left on device"), tarfile.open(disk / "t.tar", "w") as archive:
        archive.add(tmp, "big")
    small_disk.resize(disk, 64)
    shutil.copyfile(tmp, disk / "copy")
    assert (disk / "copy").read_bytes() == tmp.read_bytes()


def test_a_model_folder_shared_with_other_outputs_gets_its_record_last_and_checksums_over_all(tmp_path, monkeypatch):
    """Pretraining's run folder and fine-tuning's output hold checkpoints too: their model files move in one rename
    each, the weights first, then the checksums, then the record that says the folder is complete."""
    renamed: list[str] = []
    replace = os.replace

    def recording(source, target):
        if os.path.dirname(target) == str(tmp_path):  # a move into the model folder (not a write inside staging)
            renamed.append(os.path.basename(target))
        return replace(source, target)

    monkeypatch.setattr(os, "replace", recording)
    (tmp_path / "checkpoints").mkdir()
    with model_folder(tmp_path, "training_summary.json", shared=True) as staging:
        for name in ("training_summary.json", "config.json", "model.safetensors"):
            (staging / name).write_text(name)
    assert renamed == ["config.json", "model.safetensors", CHECKSUMS_NAME, "training_summary.json"]
    assert sorted(read_checksums(tmp_path)) == ["config.json", "model.safetensors", "training_summary.json"]
    assert verify_checksums(tmp_path) and (tmp_path / "checkpoints").is_dir()
