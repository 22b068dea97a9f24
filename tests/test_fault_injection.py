"""Fault injection: every kind of bad chip, at every place in the stream, through every reader.

Each run must complete, process every good chip exactly once, count the bad ones exactly and write only finite
numbers. Kill tests (`kill -9` at seeded points, then resume) check that no chip is lost or duplicated and that
training reaches the same weights.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from conftest import pretrain_in_process, small_config
from geotiffs import write_geotiff
from safetensors.torch import load_file
from test_pretrain import launch, summary

from clay_hf import ClayForMaskedImageModeling, ClayImageProcessor
from clay_hf.chipping import write_synthetic_chips
from clay_hf.data import ChipError, ChipLayout, chip_dataloader, load_geotiff_dataset, read_chip
from clay_hf.evaluation.probe import mean_embeddings
from clay_hf.evaluation.reconstruction import evaluate_reconstruction, load_pretraining_model
from clay_hf.evaluation.visualize import save_reconstructions
from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder
from clay_hf.training import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
LAYOUT = ChipLayout(size=(SIZE, SIZE))


def _good_data(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 3000, (13, SIZE, SIZE)).astype("float32")


def _with(value: float, band: int = 0) -> np.ndarray:
    data = _good_data()
    data[band, 3, 4] = value
    return data


def _truncated(path: Path) -> None:
    write_geotiff(path, size=(SIZE, SIZE))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


NODATA_MESSAGE = rf"0\.00751% nodata \(1 of {13 * SIZE * SIZE} values are NaN, ±inf or the file's nodata"

#: kind → (writer of a bad file at a path, what the error says)
BAD_KINDS = {
    "truncated": (_truncated, "cannot be read"),
    "not_a_tiff": (lambda p: p.write_bytes(b"this is not a GeoTIFF\n" * 20), "cannot be read"),
    "wrong_band_count": (lambda p: write_geotiff(p, bands=5, size=(SIZE, SIZE)), "has 5 bands"),
    "wrong_size": (lambda p: write_geotiff(p, size=(SIZE, SIZE + 16)), f"is {SIZE}×{SIZE + 16} pixels"),
    "no_crs": (lambda p: write_geotiff(p, crs=None, size=(SIZE, SIZE)), "has no CRS"),
    "no_date": (lambda p: write_geotiff(p, date=None, size=(SIZE, SIZE)), "has no date"),
    "nan": (lambda p: write_geotiff(p, data=_with(np.nan), size=(SIZE, SIZE)), NODATA_MESSAGE),
    "inf": (lambda p: write_geotiff(p, data=_with(-np.inf), size=(SIZE, SIZE)), NODATA_MESSAGE),
    "nodata": (lambda p: write_geotiff(p, data=_with(-9999.0), nodata=-9999, size=(SIZE, SIZE)), NODATA_MESSAGE),
    "unexpected_dtype": (lambda p: write_geotiff(p, dtype="complex64", size=(SIZE, SIZE)), "dtype complex64"),
    "empty": (lambda p: p.write_bytes(b""), "cannot be read"),
}
POSITIONS = ("first", "middle", "last", "sole_in_shard")
NUM_GOOD = 6


@pytest.fixture(scope="module")
def good_chips(tmp_path_factory) -> list[str]:
    return [str(p) for p in write_synthetic_chips(tmp_path_factory.mktemp("good"), NUM_GOOD, size=SIZE, seed=4)]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    for kind, (write, _) in BAD_KINDS.items():
        write(folder / f"{kind}.tif")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config(image_size=SIZE)).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    return folder


def _place(good: list[str], bad: str, position: str) -> tuple[list[str], int]:
    """(the paths with `bad` at `position`, a shard count that puts it there)."""
    if position == "first":
        return [bad, *good], 2
    if position == "last":
        return [*good, bad], 2
    middle = len(good) // 2
    return [*good[:middle], bad, *good[middle:]], (2 if position == "middle" else len(good) + 1)


# --- the reader: every kind at every place ---------------------------------------------------------------------------


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_reader_skips_names_and_counts_each_bad_chip(kind, position, good_chips, bad_dir):
    bad = str(bad_dir / f"{kind}.tif")
    with pytest.raises(ChipError, match=BAD_KINDS[kind][1]) as info:
        read_chip(bad, layout=LAYOUT)
    assert bad in str(info.value)
    paths, shards = _place(good_chips, bad, position)
    loader = chip_dataloader(load_geotiff_dataset(paths, num_shards=shards, layout=LAYOUT), batch_size=2)
    batches = list(loader)
    seen = [url for batch in batches for url in batch["source_url"]]
    assert sorted(seen) == sorted(good_chips)  # every good chip once
    assert sum(batch["bad_chips"] for batch in batches) == 1
    assert [url for batch in batches for url in batch["bad_chip_sources"]] == [bad]
    assert all(torch.isfinite(batch["pixels"]).all() for batch in batches)


def test_worker_tails_count_their_bad_chips(good_chips, bad_dir):
    """Two DataLoader workers, each ending its stream on bad chips."""
    bad = sorted(str(p) for p in bad_dir.glob("*.tif"))
    dataset = load_geotiff_dataset([*good_chips, *bad], num_shards=4, layout=LAYOUT)
    batches = list(chip_dataloader(dataset, batch_size=4, num_workers=2))
    assert sorted(url for b in batches for url in b["source_url"]) == sorted(good_chips)
    assert sum(b["bad_chips"] for b in batches) == len(bad)


# --- embed, evaluate, reconstruct, probe --------------------------------------------------------------------------


def _with_bad_everywhere(good: list[str], bad: list[str]) -> list[str]:
    """Bad chips first, in the middle and last of the stream."""
    middle = len(good) // 2
    return [bad[0], *good[:middle], *bad[1:-1], *good[middle:], bad[-1]]


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_encoder(str(model_dir))


def test_embed_skips_names_and_counts_every_kind_first_middle_and_last(good_chips, encoder, tmp_path, caplog):
    """Every kind of bad chip three times: leading the stream, between good chips and trailing it."""
    copies = {place: [] for place in ("first", "middle", "last")}
    for kind, (write, _) in sorted(BAD_KINDS.items()):
        for place, paths in copies.items():
            write(tmp_path / f"{place}_{kind}.tif")
            paths.append(str(tmp_path / f"{place}_{kind}.tif"))
    middle = NUM_GOOD // 2
    paths = [*copies["first"], *good_chips[:middle], *copies["middle"], *good_chips[middle:], *copies["last"]]
    output = tmp_path / "e.parquet"
    run = embed_to_geoparquet(*encoder, paths, output, batch_size=2, rows_per_part=3, progress=False)
    assert (run.embedded, run.bad_chips) == (NUM_GOOD, 3 * len(BAD_KINDS))
    for bad in (path for place in copies.values() for path in place):
        assert f"skipped {bad}: " in caplog.text
    table = pq.read_table(output)
    assert sorted(table.column("source_url").to_pylist()) == sorted(good_chips)
    assert np.isfinite(np.stack(table.column("embeddings").to_numpy(zero_copy_only=False))).all()
    assert table.column("nodata_fraction").to_pylist() == [0.0] * NUM_GOOD


def test_values_that_overflow_when_normalised_never_reach_the_output(good_chips, encoder, tmp_path, caplog):
    """A finite file value that normalises to inf (vv's std is 0.118) is caught on the device, not written."""
    data = _good_data()
    data[10] = 3.0e38
    overflow = str(write_geotiff(tmp_path / "overflow.tif", data=data, size=(SIZE, SIZE)))
    run = embed_to_geoparquet(*encoder, [overflow, *good_chips], tmp_path / "e.parquet", progress=False)
    assert (run.embedded, run.bad_chips) == (NUM_GOOD, 1)
    assert "overflow.tif: non-finite values after normalisation" in caplog.text
    assert overflow not in pq.read_table(tmp_path / "e.parquet").column("source_url").to_pylist()


def test_embed_fills_nodata_when_asked_and_records_the_fraction(good_chips, encoder, tmp_path):
    filled = [str(tmp_path / f"{kind}.tif") for kind in ("nan", "inf", "nodata")]
    for kind, path in zip(("nan", "inf", "nodata"), filled, strict=True):
        BAD_KINDS[kind][0](Path(path))
    output = tmp_path / "filled.parquet"
    run = embed_to_geoparquet(*encoder, [*filled, *good_chips], output, batch_size=4, progress=False, fill_value="mean")
    assert (run.embedded, run.bad_chips) == (NUM_GOOD + 3, 0)
    table = pq.read_table(output).to_pylist()
    fractions = {row["source_url"]: row["nodata_fraction"] for row in table}
    for path in filled:
        assert fractions[path] == pytest.approx(1 / (13 * SIZE * SIZE))
    assert all(fractions[path] == 0.0 for path in good_chips)
    assert all(np.isfinite(row["embeddings"]).all() for row in table)
    # "mean" fills with the band mean: the filled chip embeds as the clean chip with that pixel at the mean.
    model, processor = encoder
    clean = _good_data()
    clean[0, 3, 4] = processor.image_mean[0]
    reference = embed_to_geoparquet(
        model,
        processor,
        [str(write_geotiff(tmp_path / "clean.tif", data=clean, size=(SIZE, SIZE)))],
        tmp_path / "clean.parquet",
        progress=False,
    )
    assert reference.embedded == 1
    expected = pq.read_table(tmp_path / "clean.parquet").column("embeddings").to_pylist()[0]
    embedded = dict(zip(fractions, (row["embeddings"] for row in table), strict=True))
    np.testing.assert_allclose(embedded[filled[0]], expected, rtol=1e-5, atol=1e-6)


def test_evaluate_reconstruct_and_probe_skip_and_count_bad_chips(good_chips, bad_dir, model_dir, tmp_path):
    bad = sorted(str(p) for p in bad_dir.glob("*.tif"))
    paths = _with_bad_everywhere(good_chips, bad)
    model, processor = load_pretraining_model(str(model_dir))
    huge = _good_data()
    huge[0] = 3.0e38  # finite once normalised (blue's std is 2027), but it overflows inside the model
    with_huge = [*paths[:2], str(write_geotiff(tmp_path / "huge.tif", data=huge, size=(SIZE, SIZE))), *paths[2:]]
    results = evaluate_reconstruction(model, processor, with_huge, batch_size=3, seed=0, split="all")
    assert (results["num_chips"], results["bad_chips_skipped"]) == (NUM_GOOD, len(bad) + 1)
    assert np.isfinite(results["masked_mse"]) and all(np.isfinite(list(results["masked_mse_per_group"].values())))

    written = save_reconstructions(model, processor, with_huge, tmp_path / "pngs", num_chips=3)  # bad chips lead
    assert [p.stem for p in written] == [Path(p).stem for p in good_chips[:3]]

    encoder, encoder_processor = load_encoder(str(model_dir))
    vectors = mean_embeddings(encoder, encoder_processor, with_huge, batch_size=4)
    assert sorted(vectors) == sorted(good_chips) and all(np.isfinite(v).all() for v in vectors.values())
    assert results == json.loads(json.dumps(results, allow_nan=False))  # eval_results.json holds no NaN or inf


# --- bands by name ---------------------------------------------------------------------------------------------------


def test_chips_bands_are_picked_by_name_whatever_their_order(tmp_path):
    """A partial model (blue, green, red, nir) reads 13-band v0 chips, 4-band chips in another order named by their
    band descriptions or by --bands, and refuses, naming the band, a chip that lacks one."""
    config = small_config(
        image_size=SIZE, band_names=["blue", "green", "red", "nir"], band_groups=[["rgb", [2, 1, 0]], ["nir", [3]]]
    )
    layout = ChipLayout.for_model(config)
    v0 = write_geotiff(tmp_path / "v0.tif", data=_good_data(1), size=(SIZE, SIZE))
    expected = _good_data(1)[[0, 1, 2, 6]]
    np.testing.assert_array_equal(read_chip(v0, layout=layout).pixels, expected)

    order = ["nir", "red", "green", "blue"]
    data = np.stack([expected[["blue", "green", "red", "nir"].index(band)] for band in order])
    described = write_geotiff(tmp_path / "described.tif", data=data, size=(SIZE, SIZE))
    with rasterio.open(described, "r+") as dataset:
        dataset.descriptions = tuple(order)
    np.testing.assert_array_equal(read_chip(described, layout=layout).pixels, expected)
    plain = write_geotiff(tmp_path / "plain.tif", data=data, size=(SIZE, SIZE))
    named = ChipLayout.for_model(config, chip_bands=order)
    np.testing.assert_array_equal(read_chip(plain, layout=named).pixels, expected)

    lacking = write_geotiff(tmp_path / "lacking.tif", data=data[:3], size=(SIZE, SIZE))
    with pytest.raises(ChipError, match=r"lacking\.tif: lacks band\(s\) \['blue'\] that the model reads"):
        read_chip(lacking, layout=ChipLayout(bands=layout.bands, size=layout.size, chip_bands=("nir", "red", "green")))
    with pytest.raises(ValueError, match=r"lack \['blue'\], which the model reads"):
        ChipLayout.for_model(config, chip_bands=["nir", "red", "green"])


# --- training: two processes over bad chips ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.json"
    small_config(image_size=SIZE).to_json_file(path)
    return path


def _training_args(data, config_file, output, *extra):
    return [
        "--train_dir", str(data), "--output_dir", str(output), "--config_name", str(config_file),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
        "--num_train_epochs", "1", "--validation_fraction", "0", "--report_to", "none", "--logging_steps", "1",
        "--seed", "3", "--dataloader_num_workers", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def training_chips(tmp_path_factory, bad_dir) -> tuple[Path, int, int]:
    """12 good chips and 4 bad (first, last, and two more), 8 records per rank: each rank's epoch is read whole."""
    folder = tmp_path_factory.mktemp("training")
    write_synthetic_chips(folder, 12, size=SIZE, seed=8)
    for name, kind in (("a_", "truncated"), ("claytile_5", "nan"), ("claytile_3", "nodata"), ("z_", "wrong_size")):
        (folder / f"{name}{kind}.tif").write_bytes((bad_dir / f"{kind}.tif").read_bytes())
    return folder, 12, 4


def test_two_process_training_drops_bad_chips_and_counts_them_exactly(training_chips, config_file, tmp_path):
    folder, good, bad = training_chips
    output = tmp_path / "run"
    launch(_training_args(folder, config_file, output, "--log_seen_chips"), processes=2)
    result = summary(output)
    assert result["bad_chips_skipped"] == bad and result["chips_seen"] == good
    assert result["nonfinite_steps_skipped"] == 0 and all(np.isfinite(result["train_loss_history"]))
    seen = [line.split("\t")[1] for rank in range(2) for line in (output / f"seen_chips_rank{rank}.txt").open()]
    assert sorted(s.strip() for s in seen) == sorted(str(p) for p in folder.glob("claytile_*_v02_*.tif"))


# --- kill -9 and resume --------------------------------------------------------------------------------------------


def _kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL the process group once `ready()` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    process.wait()
    return False


class _Stall:
    """A FIFO no one writes, standing in for a chip: a reader that opens it waits there (a seeded, deterministic
    place to kill a run), until the FIFO is replaced by a real chip for the resumed run."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.fd = path, None

    def reader_waits(self) -> bool:
        """True once a process has the FIFO open for reading; our write end then stays open, so the reader stays
        blocked in its read (a write-only open without blocking fails with ENXIO while no reader has it)."""
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    def replace_with_chip(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.path.unlink()
        write_geotiff(self.path, data=_good_data(3), size=(SIZE, SIZE))


@pytest.mark.parametrize("seed", [0])
def test_embed_killed_at_a_seeded_point_resumes_without_loss_or_duplicates(
    seed, good_chips, bad_dir, model_dir, tmp_path
):
    """embed.py is killed while it waits on a chip at a seeded place (a FIFO that no one writes), then resumed."""
    bad = [str(bad_dir / f"{kind}.tif") for kind in ("nodata", "truncated", "wrong_band_count")]
    more = [str(p) for p in write_synthetic_chips(tmp_path / "more", 8, size=SIZE, seed=9)]
    good = [*good_chips, *more]
    stall_at = random.Random(seed).randint(4, len(good) - 2)  # good chips before the stall: ≥ 1 finished part
    stall = _Stall(tmp_path / "claytile_STALL_20200101_v02_0000.tif")
    listing = tmp_path / "chips.txt"
    listing.write_text("\n".join(_with_bad_everywhere([*good[:stall_at], str(stall.path), *good[stall_at:]], bad)))
    output = tmp_path / "e.parquet"
    command = [sys.executable, str(REPO / "scripts" / "embed.py"), "--model_name_or_path", str(model_dir),
               "--data_dir", str(listing), "--output", str(output), "--batch_size", "2", "--rows_per_part", "2"]  # fmt: skip
    parts = output.with_name(output.name + ".parts")
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _kill_when(process, stall.reader_waits), "the run ended before the kill"
    stall.replace_with_chip()
    assert list(parts.glob("part-*.parquet")), "no finished part before the stall"
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, check=True)
    urls = pq.read_table(output).column("source_url").to_pylist()
    good = [line for line in listing.read_text().splitlines() if line not in bad]
    assert sorted(urls) == sorted(good) and len(set(urls)) == len(urls)
    # The summary's counts are exact, and each chip with nodata is reported with its share.
    counts = re.search(r"(\d+) chips embedded \((\d+) already done, (\d+) bad chips skipped\)", result.stdout)
    embedded, done, skipped = map(int, counts.groups())
    assert (embedded + done, skipped) == (len(good), len(bad)) and done > 0
    assert f"skipped {bad[0]}: 0.00751% nodata" in result.stderr


def test_training_killed_at_a_seeded_point_resumes_to_the_same_weights_and_counts(
    training_chips, config_file, tmp_path
):
    folder, _, bad = training_chips
    common = ["--checkpointing_steps", "2", "--shuffle_buffer_size", "1"]
    unbroken = tmp_path / "unbroken"  # the reference: the script's main in this process (one thread, as launched)
    assert pretrain_in_process(_training_args(folder, config_file, unbroken, *common)) == 0
    kill_at = 2 * random.Random(5).randint(1, 3)  # a seeded checkpoint of the 8 steps
    broken = tmp_path / "broken"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "1",
               "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "scripts" / "pretrain.py"),
               *_training_args(folder, config_file, broken, *common)]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = broken / "checkpoints" / f"checkpoint-{kill_at}"
    assert _kill_when(process, checkpoint.is_dir), "the run ended before the kill"
    launch(_training_args(folder, config_file, broken, *common, "--resume_from_checkpoint", "latest"))
    assert list_checkpoints(broken)
    expected, resumed = summary(unbroken), summary(broken)
    for key in ("global_step", "chips_seen", "bad_chips_skipped"):
        assert resumed[key] == expected[key], key
    assert expected["bad_chips_skipped"] == bad
    weights, resumed_weights = load_file(unbroken / "model.safetensors"), load_file(broken / "model.safetensors")
    for key in weights:
        torch.testing.assert_close(resumed_weights[key], weights[key], rtol=1e-6, atol=1e-7, msg=key)


def test_layout_comes_from_the_model_not_the_first_file(good_chips, bad_dir, encoder, tmp_path):
    """The first file read (5 bands, sorting first) decides nothing: the 13-band chips are embedded."""
    first = str(bad_dir / "wrong_band_count.tif")
    run = embed_to_geoparquet(*encoder, [first, *good_chips], tmp_path / "e.parquet", progress=False)
    assert (run.embedded, run.bad_chips) == (NUM_GOOD, 1)
    json.loads(pq.read_schema(tmp_path / "e.parquet").metadata[b"clay:embeddings"])


def test_packing_skips_bad_chips_and_resumes_after_kill_9_without_loss_or_duplicates(good_chips, bad_dir, tmp_path):
    """The packer is killed while it waits on a chip at a seeded place (a FIFO that no one writes), then resumed."""
    from clay_hf.data.webdataset import sample_key

    more = [str(p) for p in write_synthetic_chips(tmp_path / "more", 6, size=SIZE, seed=6)]
    bad = sorted(str(p) for p in bad_dir.glob("*.tif"))
    good = [*good_chips, *more]
    stall_at = random.Random(7).randint(2, len(good) - 2)  # good chips packed (one per shard) before the stall
    stall = _Stall(tmp_path / "claytile_STALL_20200101_v02_0000.tif")
    ordered = [*bad[:4], *good[:stall_at], str(stall.path), *bad[4:], *good[stall_at:]]
    listing = tmp_path / "chips.txt"
    listing.write_text("\n".join(ordered))
    shards_dir = tmp_path / "shards"
    command = [sys.executable, str(REPO / "scripts" / "pack_webdataset.py"), str(listing),
               "--output_dir", str(shards_dir), "--chips_per_shard", "1"]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _kill_when(process, lambda: len(list(shards_dir.glob("chips-*.tar"))) >= stall_at)
    assert len(list(shards_dir.glob("chips-*.tar"))) == stall_at
    stall.replace_with_chip()
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, check=True)
    # The packer knows no model: bands, size and dtype are the reader's to judge; the rest it skips.
    model_dependent = [p for p in bad if Path(p).stem in ("wrong_band_count", "wrong_size", "unexpected_dtype")]
    assert f"skipped {len(bad) - len(model_dependent)} bad chips" in result.stdout
    keys = []
    for shard in sorted(shards_dir.glob("chips-*.tar")):
        with tarfile.open(shard) as archive:
            keys += [name[: -len(".tif")] for name in archive.getnames() if name.endswith(".tif")]
    assert sorted(keys) == sorted(sample_key(p) for p in [*good, str(stall.path), *model_dependent])
    assert not [path for path in shards_dir.iterdir() if path.name.endswith(".partial")]  # the contract's names


def test_evaluation_and_training_fill_nodata_only_when_asked(good_chips, bad_dir, model_dir):
    from clay_hf.training import DataArguments
    from clay_hf.training.pretrain import training_layout

    gaps = [str(bad_dir / f"{kind}.tif") for kind in ("nan", "inf", "nodata")]
    model, processor = load_pretraining_model(str(model_dir))
    skipped = evaluate_reconstruction(model, processor, [*gaps, *good_chips], batch_size=4, seed=0, split="all")
    filled = evaluate_reconstruction(
        model, processor, [*gaps, *good_chips], batch_size=4, seed=0, split="all", fill_value="mean"
    )
    assert (skipped["num_chips"], skipped["bad_chips_skipped"]) == (NUM_GOOD, 3)
    assert (filled["num_chips"], filled["bad_chips_skipped"]) == (NUM_GOOD + 3, 0)
    assert np.isfinite(filled["masked_mse"])

    args = DataArguments(train_dir="x", fill_value="mean")
    layout = training_layout(model.config, processor.select_bands(model.config.band_names), args)
    assert layout.fill_values == tuple(processor.image_mean) and layout.size == (SIZE, SIZE)
    chip = read_chip(gaps[2], layout=layout)
    assert chip.pixels[0, 3, 4] == pytest.approx(processor.image_mean[0]) and chip.nodata_fraction > 0
    default = DataArguments(train_dir="x")
    with pytest.raises(ChipError, match="nodata"):
        read_chip(gaps[2], layout=training_layout(model.config, processor, default))
