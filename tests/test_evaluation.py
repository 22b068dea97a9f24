"""Honest evaluation: every band group reported, random masking with a fixed seed, the training run's split, exact
chip counts; and the smaller command-line promises (model paths, CSV labels, the metric's patch size)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator
from conftest import save_pretraining_model, small_config
from geotiffs import write_geotiff

from clay_hf import ClayForMaskedImageModeling, ClayModel
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.demo import training_artifacts
from clay_hf.commands.embed import main as embed_main
from clay_hf.commands.evaluate import main as evaluate_main
from clay_hf.data import ChipLayout, chip_dataloader, load_geotiff_dataset, resolve_sources, split_of
from clay_hf.evaluation.probe import labels_from_csv
from clay_hf.evaluation.reconstruction import chip_masking_noise, evaluate_reconstruction, load_pretraining_model
from clay_hf.metrics import MASKED_RECONSTRUCTION_PATH
from clay_hf.training.pretrain import evaluate as training_validation
from clay_hf.utils.model_source import ModelSourceError, from_pretrained_checked

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["rgb", "rededge", "nir", "swir", "sar", "dem"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_pretraining_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chips")
    write_synthetic_chips(folder, 20, size=32, seed=3)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_pretraining_model(str(model_dir))


def test_default_masking_is_random_and_measures_every_group(loaded, chips):
    results = evaluate_reconstruction(*loaded, chips, split="all")
    assert (results["masking"], results["masking_seed"]) == ("random", 0)
    assert list(results["masked_mse_per_group"]) == GROUPS
    assert all(value is not None for value in results["masked_mse_per_group"].values())  # dem too


def test_v0_masking_reports_the_unmeasured_groups_as_none(loaded, chips):
    results = evaluate_reconstruction(*loaded, chips, masking="v0", split="all")
    per_group = results["masked_mse_per_group"]
    assert list(per_group) == GROUPS and per_group["dem"] is None and per_group["rgb"] is not None


def test_random_masks_are_per_chip_whatever_the_batching(loaded, chips):
    by_eight = evaluate_reconstruction(*loaded, chips, batch_size=8, split="all")
    by_three = evaluate_reconstruction(*loaded, chips, batch_size=3, split="all")
    assert by_eight["masked_mse"] == pytest.approx(by_three["masked_mse"], rel=1e-6)
    other_seed = evaluate_reconstruction(*loaded, chips, seed=1, split="all")
    assert other_seed["masked_mse"] != pytest.approx(by_eight["masked_mse"], rel=1e-6)
    # the same file name gets the same noise wherever it is stored
    assert torch.equal(chip_masking_noise(["/a/x.tif"], 5), chip_masking_noise(["s3://b/x.tif?X-Amz-Signature=1"], 5))


@pytest.mark.parametrize("split", ["validation", "train", "all"])
def test_split_is_the_training_runs_hash_split(loaded, chips, split):
    paths = resolve_sources(chips)
    expected = len(paths) if split == "all" else sum(split_of(path) == split for path in paths)
    assert 0 < expected < len(paths) or split == "all"
    results = evaluate_reconstruction(*loaded, chips, split=split)
    assert (results["num_chips"], results["split"], results["validation_fraction"]) == (expected, split, 0.2)


def test_max_chips_evaluates_exactly_that_many(model_dir, chips, tmp_path, capsys):
    argv = ["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output_dir", str(tmp_path)]
    assert evaluate_main([*argv, "--max_chips", "3", "--batch_size", "8", "--split", "all"]) == 0
    assert '"num_chips": 3' in capsys.readouterr().out


def test_training_validation_uses_the_same_masks_as_evaluate(loaded, chips):
    """The training run's validation loss equals evaluate.py's on the same chips: same random masks."""
    model, processor = loaded
    accelerator = Accelerator(cpu=True)
    layout = ChipLayout.for_model(model.config)
    loader = chip_dataloader(load_geotiff_dataset(chips, layout=layout), 4)
    metrics = training_validation(model, loader, processor, accelerator, model.config)
    expected = evaluate_reconstruction(model, processor, chips, split="all")
    assert metrics["loss"] == pytest.approx(expected["masked_mse"], rel=1e-6)
    assert {name: metrics[name] for name in GROUPS} == pytest.approx(expected["masked_mse_per_group"], rel=1e-6)
    capped = training_validation(model, chip_dataloader(load_geotiff_dataset(chips, layout=layout), 4), processor, accelerator,
                                 model.config, max_chips=3)  # fmt: skip
    three = evaluate_reconstruction(model, processor, chips, split="all", max_chips=3)
    assert capped["loss"] == pytest.approx(three["masked_mse"], rel=1e-6)


def test_training_validation_drops_an_overflowing_chip_as_evaluate_does(loaded, chips, tmp_path):
    """One validation loop: a chip whose reconstruction overflows is dropped (and counted) in training's validation
    as in evaluate.py, so both report the same finite numbers over the same good chips."""
    model, processor = loaded
    data = np.stack([np.full((32, 32), 1000.0 + band, dtype=np.float32) for band in range(13)])
    data[0] = 3.0e38  # finite once normalised, but it overflows inside the model
    huge = str(write_geotiff(tmp_path / "huge.tif", data=data, size=(32, 32)))
    paths = [huge, *(str(path) for path in resolve_sources(chips))]
    layout = ChipLayout.for_model(model.config)
    loader = chip_dataloader(load_geotiff_dataset(paths, layout=layout), 4)
    metrics = training_validation(model, loader, processor, Accelerator(cpu=True), model.config)
    expected = evaluate_reconstruction(model, processor, paths, split="all")
    assert expected["bad_chips_skipped"] == 1 and math.isfinite(metrics["loss"])
    assert metrics["loss"] == pytest.approx(expected["masked_mse"], rel=1e-6)


# --- the metric ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_size", [4, 16])
def test_metric_reads_the_patch_size_and_matches_evaluate_keys(patch_size):
    config = small_config(patch_size=patch_size)
    model = ClayForMaskedImageModeling(config).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 13, 32, 32, generator=generator)
    with torch.no_grad():
        outputs = model(pixels, torch.zeros(2, 3), torch.zeros(2, 2))  # eval mode: v0 masking, dem unmasked
    metric = evaluate.load(MASKED_RECONSTRUCTION_PATH)
    result = metric.compute(predictions=outputs.logits.numpy(), references=pixels.numpy(), masks=outputs.mask.numpy())
    assert set(result) == {"masked_mse", "masked_mse_per_group"}  # the keys of eval_results.json
    assert result["masked_mse"] == pytest.approx(float(outputs.loss), rel=1e-5)
    assert list(result["masked_mse_per_group"]) == GROUPS and result["masked_mse_per_group"]["dem"] is None
    with pytest.raises(ValueError, match=f"patch_size=32, but the predictions hold patches of {patch_size}"):
        metric.compute(
            predictions=outputs.logits.numpy(), references=pixels.numpy(), masks=outputs.mask.numpy(), patch_size=32
        )
    with pytest.raises(ValueError, match=r"do not match references \(13, 16, 16\)"):
        metric.compute(
            predictions=outputs.logits.numpy(), references=pixels[..., :16, :16].numpy(), masks=outputs.mask.numpy()
        )


# --- model paths, labels, the demo's messages --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./runs/clay-smal", "/nonexistent/model", "runs/clay/smal"])
def test_a_mistyped_local_path_is_named_as_a_missing_folder(name):
    with pytest.raises(ModelSourceError, match=rf"^{name}: no such folder"):
        from_pretrained_checked(ClayForMaskedImageModeling, name)


def test_a_folder_that_is_not_a_model_says_so(tmp_path):
    with pytest.raises(ModelSourceError, match=r"a folder without config\.json"):
        from_pretrained_checked(ClayForMaskedImageModeling, tmp_path)


def test_offline_a_missing_path_that_looks_like_a_hub_id_says_both(chips, tmp_path):
    """The issue's case: offline, `runs/clay-smal` (also a valid Hub id) gave "couldn't connect to huggingface.co"."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model_name_or_path", "runs/clay-smal",
         "--data_dir", str(chips), "--output_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: runs/clay-smal: no such local folder, and not in the offline Hub cache (HF_HUB_OFFLINE=1)"
    ), lines


def test_csv_labels_are_relative_to_the_csv(tmp_path, monkeypatch):
    folder = tmp_path / "labelled"
    folder.mkdir()
    csv = folder / "labels.csv"
    csv.write_text("path,label\nchips/a.tif,water\n/abs/b.tif,urban\ns3://bucket/c.tif,bare\n")
    monkeypatch.chdir(tmp_path)
    assert labels_from_csv("labelled/labels.csv") == {
        str(Path("labelled") / "chips" / "a.tif"): "water",
        "/abs/b.tif": "urban",
        "s3://bucket/c.tif": "bare",
    }


def test_demo_names_checkpoints_only_when_written(tmp_path):
    assert not any(line.startswith("checkpoints:") for line in training_artifacts(tmp_path))
    (tmp_path / "checkpoints" / "checkpoint-100").mkdir(parents=True)
    assert f"checkpoints: {tmp_path / 'checkpoints'}" in training_artifacts(tmp_path)


def test_an_encoder_alone_is_refused_where_reconstructions_are_needed(chips, tmp_path, capsys):
    """A folder holding only the encoder would load with a random decoder; evaluate.py and embed.py's
    --reconstruction_error refuse it, naming what it lacks."""
    encoder_only = tmp_path / "encoder"
    ClayModel(small_config()).save_pretrained(encoder_only)
    with pytest.raises(ModelSourceError, match=r"not a pretraining model .*lacks decoder"):
        load_pretraining_model(str(encoder_only))
    command = ["--model_name_or_path", str(encoder_only), "--data_dir", str(chips), "--output", str(tmp_path / "e.pq")]
    assert embed_main([*command, "--reconstruction_error"]) == 1
    assert "not a pretraining model" in capsys.readouterr().err
    assert embed_main(command) == 0  # embeddings alone need only the encoder


def test_embed_script_stores_reconstruction_errors_of_a_pretraining_model(model_dir, chips, tmp_path):
    output = tmp_path / "e.parquet"
    assert embed_main(["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output", str(output),
                       "--reconstruction_error"]) == 0  # fmt: skip
    errors = pq.read_table(output).column("reconstruction_error").to_pylist()
    assert len(errors) == 20 and all(value is not None and value > 0 for value in errors)
