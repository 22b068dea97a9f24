"""What users come for: embeddings as GeoParquet, reconstruction PNGs, the metric, evaluation and a linear probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import pretrain_in_process, save_pretraining_model, small_config
from geotiffs import write_geotiff
from PIL import Image
from pyproj import Transformer
from shapely.geometry import box

from clay_hf import ClayForMaskedImageModeling, ClayImageProcessor, ClayModel
from clay_hf.chipping import write_synthetic_chips
from clay_hf.commands.linear_probe import main as linear_probe_main
from clay_hf.data import ChipLayout, collate_chips, load_geotiff_dataset, read_chip, resolve_sources
from clay_hf.evaluation.reconstruction import evaluate_reconstruction
from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder
from clay_hf.metrics import MASKED_RECONSTRUCTION_PATH

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small pretraining model with its processor, as a save_pretrained folder."""
    return save_pretraining_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chips")
    write_synthetic_chips(folder, 10, size=32, seed=11)  # UTM zones all over the world: many CRSs
    return folder


def run_script(name, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *map(str, args)], capture_output=True, text=True, check=True
    )


# --- embeddings --------------------------------------------------------------------------------------------------------


def test_geoparquet_schema_crs_geometry_and_mean_embeddings(model_dir, chips, tmp_path):
    output = tmp_path / "embeddings.parquet"
    run_script(
        "embed.py", "--model_name_or_path", model_dir, "--data_dir", chips, "--output", output, "--batch_size", "3"
    )
    table = pq.read_table(output)
    assert table.schema.field("source_url").type == "string" and str(table.schema.field("date").type) == "date32[day]"
    embeddings_type = table.schema.field("embeddings").type
    assert pa.types.is_fixed_size_list(embeddings_type) and embeddings_type.list_size == 32
    assert embeddings_type.value_type == pa.float32()
    metadata = json.loads(table.schema.metadata[b"clay:embeddings"])
    assert metadata.pop("model_revision").startswith("sha256:")  # the weights' checksum (a resume checks it)
    assert metadata == {"level": "mean", "shape": [32], "dtype": "float32", "model_name_or_path": str(model_dir)}

    frame = gpd.read_parquet(output)
    assert frame.crs.to_string() == "OGC:CRS84" and len(frame) == 10
    assert len({read_chip(url).epsg for url in frame.source_url}) > 1  # chips in several CRSs in one run

    model, processor = load_encoder(str(model_dir))
    for row in frame.itertuples():
        chip = read_chip(row.source_url)
        assert row.date == chip.date
        expected = box(*chip.bbox)
        to_lonlat = Transformer.from_crs(chip.epsg, "OGC:CRS84", always_xy=True)
        corners = np.array(to_lonlat.transform(*np.array(expected.exterior.coords).T)).T
        assert np.allclose(np.array(row.geometry.bounds), [*corners.min(0), *corners.max(0)], atol=1e-6)
        batch = collate_chips(list(load_geotiff_dataset([row.source_url], layout=ChipLayout.for_model(model.config))))
        with torch.no_grad():
            pooled = model(
                processor.normalize_tensor(batch["pixels"]), batch["timestep"], batch["latlon"]
            ).pooler_output
        np.testing.assert_allclose(np.asarray(row.embeddings), pooled[0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("level", "shape"), [("patch", [4, 4, 32]), ("group", [6, 4, 4, 32])])
def test_patch_and_group_levels(model_dir, chips, tmp_path, level, shape):
    model, processor = load_encoder(str(model_dir))
    run = embed_to_geoparquet(model, processor, chips, tmp_path / "e.parquet", level=level, progress=False)
    table = pq.read_table(tmp_path / "e.parquet")
    assert list(run.shape) == shape == json.loads(table.schema.metadata[b"clay:embeddings"])["shape"]
    vectors = np.stack(table.column("embeddings").to_numpy(zero_copy_only=False))
    assert vectors.shape == (10, int(np.prod(shape)))
    if level == "patch":  # the patch level is the group level averaged over groups
        group = embed_to_geoparquet(model, processor, chips, tmp_path / "g.parquet", level="group", progress=False)
        grouped = np.stack(pq.read_table(group.output).column("embeddings").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(vectors, grouped.reshape(10, 6, -1).mean(1), rtol=1e-5, atol=1e-6)


def test_interrupted_run_resumes_without_recomputing_or_duplicates(model_dir, chips, tmp_path, monkeypatch):
    import clay_hf.inference.embeddings as module

    model, processor = load_encoder(str(model_dir))
    output = tmp_path / "resume.parquet"
    calls = {"n": 0}
    original = module.embed_batch

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user stops the run after two batches
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "embed_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(model, processor, chips, output, batch_size=2, rows_per_part=2, progress=False)
    parts = sorted((tmp_path / "resume.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not output.exists()  # finished work is on disk

    monkeypatch.setattr(module, "embed_batch", original)
    embedded = []

    def counting(model, inputs, level):
        embedded.append(len(inputs["pixel_values"]))
        return original(model, inputs, level)

    monkeypatch.setattr(module, "embed_batch", counting)
    run = embed_to_geoparquet(
        model, processor, chips, output, batch_size=2, rows_per_part=2, resume=True, progress=False
    )
    assert run.skipped_done == 4 and run.embedded == 6 and sum(embedded) == 6
    urls = pq.read_table(output).column("source_url").to_pylist()
    assert sorted(urls) == resolve_sources(chips) and len(set(urls)) == len(urls)


def test_bad_chips_are_reported_and_skipped(model_dir, tmp_path):
    folder = tmp_path / "mixed"
    write_synthetic_chips(folder, 3, size=32)
    (folder / "zz_broken.tif").write_bytes(b"nope")
    write_geotiff(folder / "zz_four_bands.tif", bands=4)
    model, processor = load_encoder(str(model_dir))
    run = embed_to_geoparquet(model, processor, folder, tmp_path / "e.parquet", batch_size=8, progress=False)
    assert run.embedded == 3
    assert len(pq.read_table(tmp_path / "e.parquet")) == 3


def test_partial_inputs_end_to_end(tmp_path, chips):
    bands = ["blue", "green", "red", "nir"]
    config = small_config(band_names=bands, band_groups=[["rgb", [2, 1, 0]], ["nir", [3]]])
    folder = tmp_path / "rgbn"
    ClayModel(config).save_pretrained(folder)
    ClayImageProcessor(band_names=bands).save_pretrained(folder)
    output = tmp_path / "rgbn.parquet"
    run_script("embed.py", "--model_name_or_path", folder, "--data_dir", chips, "--output", output)
    assert len(pq.read_table(output)) == 10
    with pytest.raises(ValueError, match=r"lack \['blue', 'green'\], which the model reads"):
        embed_to_geoparquet(*load_encoder(str(folder)), chips, tmp_path / "x.parquet", bands=["red", "nir"])


# --- reconstructions, the metric, evaluation ---------------------------------------------------------------------------


def test_reconstruction_pngs(model_dir, chips, tmp_path):
    run_script(
        "reconstruct.py",
        "--model_name_or_path",
        model_dir,
        "--data_dir",
        chips,
        "--output_dir",
        tmp_path,
        "--num_chips",
        "2",
    )
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as image:
        assert image.size == (2200, 260)  # 4 images + 6 error maps: 10 panels of 2.2 × 2.6 inches at 100 dpi
        assert np.asarray(image.convert("L")).std() > 10  # not blank


def test_metric_equals_the_model_loss_on_the_same_mask(model_dir):
    model = ClayForMaskedImageModeling.from_pretrained(model_dir).eval()
    config = model.config
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 13, 32, 32, generator=generator)
    with torch.no_grad():
        outputs = model(pixels, torch.rand(3, 3), torch.rand(3, 2), noise=torch.rand(3, 96, generator=generator))
    metric = evaluate.load(MASKED_RECONSTRUCTION_PATH)
    for i in range(3):  # added chip by chip: the metric still matches the batch loss
        metric.add(predictions=outputs.logits[i].numpy(), references=pixels[i].numpy(), masks=outputs.mask[i].numpy())
    result = metric.compute(band_groups=config.band_groups)  # the patch size comes from the shapes
    assert result["masked_mse"] == pytest.approx(float(outputs.loss), rel=1e-5)
    for name, bands in config.band_groups:
        group_mask = outputs.mask.view(3, 6, 16)[:, config.group_names.index(name)]
        per_patch = ((outputs.logits[:, bands] - _patches(pixels, 8)[:, bands]) ** 2).mean(-1).mean(1)
        expected = float((per_patch * group_mask).sum() / group_mask.sum())
        assert result["masked_mse_per_group"][name] == pytest.approx(expected, rel=1e-5)


def _patches(pixels, patch):
    batch, channels, height, width = pixels.shape
    grid = pixels.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return grid.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, -1, patch * patch)


def test_evaluate_script_writes_eval_results(model_dir, chips, tmp_path):
    run_script(
        "evaluate.py", "--model_name_or_path", model_dir, "--data_dir", chips, "--output_dir", tmp_path,
        "--split", "all", "--masking", "v0",
    )  # fmt: skip
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["num_chips"] == 10 and (results["masking"], results["split"]) == ("v0", "all")
    assert list(results["masked_mse_per_group"]) == ["rgb", "rededge", "nir", "swir", "sar", "dem"]
    assert results["masked_mse_per_group"]["dem"] is None  # v0's masking never reaches the last group
    model = ClayForMaskedImageModeling.from_pretrained(model_dir).eval()
    processor = ClayImageProcessor.from_pretrained(model_dir)
    batch = collate_chips(list(load_geotiff_dataset(chips, layout=ChipLayout.for_model(model.config))))
    with torch.no_grad():
        loss = model(processor.normalize_tensor(batch["pixels"]), batch["timestep"], batch["latlon"]).loss
    assert results["masked_mse"] == pytest.approx(float(loss), rel=1e-5)
    seeded = [evaluate_reconstruction(model, processor, chips, seed=3, split="all")["masked_mse"] for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0] != pytest.approx(results["masked_mse"], rel=1e-6)


# --- linear probe --------------------------------------------------------------------------------------------------------


def test_linear_probe_beats_chance_on_a_pretrained_model(tmp_path, one_thread):
    classes = ["water", "vegetation", "bare", "urban"]
    for index, label in enumerate(classes):
        write_synthetic_chips(tmp_path / "chips" / label, 16, size=32, seed=100 + index, labels=[label])
    config = tmp_path / "config.json"
    small_config().to_json_file(config)
    model_dir = tmp_path / "pretrained"
    # Pretraining is the setup here, not what is tested: 50 steps of the script's main in this process, on one
    # thread (200 steps as a script, with a torch thread per core contending with whatever else ran on a shared CPU,
    # took from 30 s to minutes; the probe beats chance by far either way).
    status = pretrain_in_process(
        ["--train_dir", str(tmp_path / "chips"), "--output_dir", str(model_dir), "--config_name", str(config),
         "--max_train_steps", "50", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
         "--learning_rate", "2e-3", "--lr_scheduler", "cosine_with_warmup", "--num_warmup_steps", "10",
         "--report_to", "none"]
    )  # fmt: skip
    assert status == 0
    labels_csv = tmp_path / "labels.csv"
    rows = [f"{path},{path.parent.name}" for path in sorted((tmp_path / "chips").glob("*/*.tif"))]
    labels_csv.write_text("path,label\n" + "\n".join(rows) + "\n")

    # The script from class folders; its main in this process (on one thread, as the script) from the CSV.
    output = tmp_path / "probe.json"
    command = [sys.executable, str(REPO / "scripts" / "linear_probe.py"), "--model_name_or_path", str(model_dir),
               "--data_dir", str(tmp_path / "chips"), "--output", str(output)]  # fmt: skip
    subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = [json.loads(output.read_text())]
    assert linear_probe_main(["--model_name_or_path", str(model_dir), "--labels", str(labels_csv), "--output",
                              str(tmp_path / "probe_csv.json")]) == 0  # fmt: skip
    results.append(json.loads((tmp_path / "probe_csv.json").read_text()))
    assert results[0] == results[1]  # class folders and the CSV name the same labels
    result = results[0]
    assert result["num_classes"] == 4 and result["num_train"] + result["num_test"] == 64
    assert result["chance_accuracy"] <= 0.3
    assert result["accuracy"] >= result["chance_accuracy"] + 0.4
