"""Fine-tuning end to end: labelled chip data, metrics, the Trainer script, predictions on the chips' grids."""

from __future__ import annotations

import json
from pathlib import Path

import evaluate
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from conftest import small_config
from geotiffs import write_geotiff
from transformers import AutoModelForSemanticSegmentation

from clay_hf import CLAY_V0_BAND_NAMES, ClayForMaskedImageModeling, ClayForSemanticSegmentation, ClayImageProcessor
from clay_hf.commands.finetune import main as finetune_cli
from clay_hf.commands.finetune import run as finetune_main
from clay_hf.commands.predict import run as predict_main
from clay_hf.data import ChipError, split_paths
from clay_hf.finetuning.data import (
    ChipLabelDataset,
    ChipReader,
    ClayDataCollator,
    SegmentationDataset,
    flip_rotate,
    labelled_chips,
    processor_with_statistics,
    segmentation_pairs,
)
from clay_hf.finetuning.predict import cosine_window, segment_scene, tile_latlon, tile_starts
from clay_hf.finetuning.scores import StreamingMetrics, confusion_matrix
from clay_hf.finetuning.synthetic import write_synthetic_classification, write_synthetic_segmentation
from clay_hf.metrics import (
    IMAGE_CLASSIFICATION_PATH,
    MASKED_RECONSTRUCTION_PATH,
    REGRESSION_PATH,
    SEMANTIC_SEGMENTATION_PATH,
)
from clay_hf.utils.outputs import OutputLock

V0_MEANS = ClayImageProcessor().image_mean


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mim_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mim")
    ClayForMaskedImageModeling(small_config(num_hidden_layers=2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def floods(tmp_path_factory):
    root = tmp_path_factory.mktemp("floods")
    write_synthetic_segmentation(root, 24, size=64, seed=1, nodata_corner=8)
    return root


def v0_reader(**kwargs) -> ChipReader:
    return ChipReader(CLAY_V0_BAND_NAMES, V0_MEANS, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def test_image_nodata_is_filled_and_unscored_and_label_nodata_is_ignored(tmp_path):
    image = np.full((13, 32, 32), 1000, dtype=np.float32)
    image[:, :4, :4] = -9999  # nodata in every band
    image[3, 10, 10] = np.nan  # one band missing makes the pixel missing
    labels = np.ones((1, 32, 32), dtype=np.uint8)
    labels[0, 20:, :] = 0
    labels[0, 30:, :] = 200  # the label raster's nodata
    write_geotiff(tmp_path / "images" / "a.tif", data=image, nodata=-9999)
    write_geotiff(tmp_path / "labels" / "a.tif", data=labels, dtype="uint8", nodata=200)
    dataset = SegmentationDataset(segmentation_pairs(tmp_path), v0_reader(), num_labels=2, ignore_index=255)
    record = dataset[0]
    assert (record["labels"][:4, :4] == 255).all() and record["labels"][10, 10] == 255
    assert (record["labels"][30:] == 255).all()
    assert (record["labels"][20:30] == 0).all() and record["labels"][15, 15] == 1
    np.testing.assert_allclose(record["pixels"][:, 0, 0], V0_MEANS, rtol=1e-6)  # filled with the band means
    assert np.isfinite(record["pixels"]).all()
    batch = ClayDataCollator(ClayImageProcessor(), CLAY_V0_BAND_NAMES)([record])
    assert torch.allclose(batch["pixel_values"][0, :, 0, 0], torch.zeros(13), atol=1e-6)  # normalised: 0
    assert set(batch) == {"pixel_values", "timestep", "latlon", "labels"}


def test_label_on_another_grid_is_skipped_with_its_name(tmp_path, caplog):
    write_geotiff(tmp_path / "images" / "good.tif")
    write_geotiff(tmp_path / "labels" / "good.tif", bands=1, dtype="uint8", data=np.zeros((1, 32, 32), np.uint8))
    write_geotiff(tmp_path / "images" / "shifted.tif")
    write_geotiff(
        tmp_path / "labels" / "shifted.tif", data=np.zeros((1, 32, 32), np.uint8), dtype="uint8", origin=(500_010, 5e6)
    )
    dataset = SegmentationDataset(segmentation_pairs(tmp_path), v0_reader(), num_labels=2)
    assert len(dataset) == 1 and len(dataset.bad) == 1
    assert "labels/shifted.tif: is not on the grid of its image" in str(dataset.bad[0])
    with pytest.raises(ChipError, match=r"holds class ids \[5\] outside 0…1"):
        write_geotiff(tmp_path / "labels" / "good.tif", data=np.full((1, 32, 32), 5, np.uint8), dtype="uint8")
        dataset[0]


def test_bands_by_name_are_reordered_to_the_model(tmp_path):
    data = np.stack([np.full((32, 32), index, np.float32) for index in range(4)])
    write_geotiff(tmp_path / "c.tif", data=data)
    reader = ChipReader(["red", "nir"], [0.0, 0.0], bands=["blue", "green", "red", "nir"])
    pixels, _, _, _ = reader.read(reader.header(str(tmp_path / "c.tif")))
    assert pixels[:, 0, 0].tolist() == [2.0, 3.0]
    with pytest.raises(ChipError, match=r"c.tif: has 4 bands and no band names in its band descriptions.*--bands"):
        v0_reader().header(str(tmp_path / "c.tif"))
    with pytest.raises(ChipError, match=r"lacks band\(s\) \['swir16'\] that the model reads"):
        ChipReader(["red", "swir16"], [0, 0], bands=["blue", "green", "red", "nir"]).header(str(tmp_path / "c.tif"))


def test_flips_and_rotations_move_image_and_label_together():
    image = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    labels = (image[0] > 0.5).astype(np.int64)
    torch.manual_seed(0)
    for _ in range(8):
        new_image, new_labels = flip_rotate([image, labels])
        assert (new_labels == (new_image[0] > 0.5)).all()


def test_csv_paths_are_relative_to_the_csv_and_class_folders_name_labels(tmp_path):
    write_geotiff(tmp_path / "chips" / "a.tif")
    (tmp_path / "labels.csv").write_text("path,label,value\nchips/a.tif,forest,3.5\n")
    assert labelled_chips(tmp_path / "labels.csv") == [(str(tmp_path / "chips" / "a.tif"), "forest")]
    assert labelled_chips(tmp_path / "labels.csv", regression=True) == [(str(tmp_path / "chips" / "a.tif"), 3.5)]
    assert labelled_chips(tmp_path) == [(str(tmp_path / "chips" / "a.tif"), "chips")]
    dataset = ChipLabelDataset(labelled_chips(tmp_path / "labels.csv"), v0_reader(), {"forest": 0})
    assert dataset[0]["labels"] == 0


def test_statistics_computed_from_chips_leave_nodata_out(tmp_path):
    data = np.stack([np.arange(64, dtype=np.float32).reshape(8, 8) + band for band in range(2)])
    data[:, 0, 0] = -1
    write_geotiff(tmp_path / "s.tif", data=data, size=(8, 8), nodata=-1)
    reader = ChipReader(["red", "new_band"], [0, 0], bands=["red", "new_band"])
    header = reader.header(str(tmp_path / "s.tif"))
    processor = processor_with_statistics(ClayImageProcessor(band_names=["red"]), reader, [header], ["new_band"])
    valid = data[1].ravel()[1:]
    assert processor.band_names == ["red", "new_band"]
    assert processor.image_mean[0] == ClayImageProcessor(band_names=["red"]).image_mean[0]
    np.testing.assert_allclose([processor.image_mean[1], processor.image_std[1]], [valid.mean(), valid.std()])


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_segmentation_metric_module_and_streaming_metrics_agree_with_hand_counts():
    predictions = [np.array([[0, 1], [1, 1]]), np.array([[0, 0], [2, 1]])]
    references = [np.array([[0, 1], [0, 255]]), np.array([[0, 1], [2, 1]])]
    # class 0: TP 2, FP 1 (pred 0, ref 1), FN 1 (ref 0, pred 1) → IoU 2/4; class 1: TP 2, FP 1, FN 1 → 2/4; class 2: 1/1
    scores = evaluate.load(SEMANTIC_SEGMENTATION_PATH).compute(
        predictions=predictions, references=references, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}
    )
    assert scores["iou_a"] == pytest.approx(0.5) and scores["iou_b"] == pytest.approx(0.5) and scores["iou_c"] == 1
    assert scores["mean_iou"] == pytest.approx(2 / 3)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    assert scores["f1_a"] == pytest.approx(2 / 3)
    streaming = StreamingMetrics("semantic-segmentation", 3, 255, {0: "a", 1: "b", 2: "c"})
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        eval_prediction = type("P", (), {"predictions": prediction[None], "label_ids": reference[None]})
        result = streaming(eval_prediction, compute_result=index == 1)
    assert result == pytest.approx(scores, nan_ok=True)


@pytest.mark.parametrize(
    "path", [SEMANTIC_SEGMENTATION_PATH, IMAGE_CLASSIFICATION_PATH, REGRESSION_PATH, MASKED_RECONSTRUCTION_PATH]
)
def test_each_metric_module_loads_its_own_class_with_its_texts(path):
    metric = evaluate.load(path)
    assert type(metric).__name__.lower() == Path(path).name.replace("_", "")  # the module's class, not the base
    assert metric.description.strip() and "Args:" in metric.inputs_description and "@" in metric.citation
    assert "Args:" in type(metric).__doc__


def test_classification_and_regression_metric_modules():
    scores = evaluate.load(IMAGE_CLASSIFICATION_PATH).compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    scores = evaluate.load(REGRESSION_PATH).compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 3.0, 5.0])
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["rmse"] == pytest.approx((2 / 3) ** 0.5)
    assert scores["r2"] == pytest.approx(1 - 2 / 8)
    assert confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1]), 2).tolist() == [[0, 1], [0, 1]]


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer script and predictions
# ---------------------------------------------------------------------------------------------------------------------


def run_finetune(mim_folder, data, output, *extra) -> dict:
    return finetune_main(
        [
            *("--model_name_or_path", str(mim_folder), "--train_dir", str(data), "--output_dir", str(output)),
            *("--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--report_to", "none"),
            *("--save_strategy", "no", "--use_cpu", "--logging_steps", "5", "--seed", "0", "--disable_tqdm", "true"),
            *extra,
        ]
    )


def majority_accuracy(dataset) -> float:
    labels = np.concatenate([dataset[i]["labels"].ravel() for i in range(len(dataset))])
    labels = labels[labels != 255]
    return float(np.bincount(labels).max() / len(labels))


def test_finetuned_segmentation_beats_the_majority_class_and_predicts_on_the_chips_grids(mim_folder, floods, tmp_path):
    output = tmp_path / "run"
    results = run_finetune(
        mim_folder, floods, output, "--task", "semantic-segmentation", "--id2label", "land,water",
        "--max_steps", "25", "--augment", "--decode_head_type", "fcn",
    )  # fmt: skip
    saved = json.loads((output / "eval_results.json").read_text())
    assert saved["metrics"]["pixel_accuracy"] == results["metrics"]["pixel_accuracy"]
    assert saved["base_model"] == str(mim_folder) and saved["labels"] == {"0": "land", "1": "water"}
    held_out = split_paths([pair[0] for pair in segmentation_pairs(floods)])["validation"]
    validation = SegmentationDataset([(path, path.replace("images", "labels")) for path in held_out], v0_reader(), 2)
    assert results["num_validation_chips"] == len(validation)
    assert results["metrics"]["pixel_accuracy"] > majority_accuracy(validation) + 0.05
    assert {"mean_iou", "iou_water", "f1_land", "mean_f1"} <= set(results["metrics"])

    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert model.config.id2label == {0: "land", 1: "water"}
    assert (output / "preprocessor_config.json").exists()

    predictions = tmp_path / "preds"
    summary = predict_main(
        ["--model_name_or_path", str(output), "--data_dir", str(floods / "images"), "--output_dir", str(predictions)]
    )
    assert len(summary["written"]) == 24
    for image in sorted((floods / "images").glob("*.tif"))[:3]:
        with rasterio.open(image) as source, rasterio.open(predictions / image.name) as predicted:
            assert (predicted.crs, predicted.transform, predicted.shape) == (source.crs, source.transform, source.shape)
            assert predicted.dtypes[0] == "uint8" and predicted.nodata == 255
            classes = predicted.read(1)
            assert (classes[:8, :8] == 255).all()  # where the chip had nodata
            assert set(np.unique(classes[8:])) <= {0, 1}


def test_a_second_finetuning_run_on_one_output_is_refused_naming_the_holder(mim_folder, floods, tmp_path, capsys):
    output = tmp_path / "run"
    argv = ["--task", "semantic-segmentation", "--num_labels", "2", "--max_steps", "1", "--model_name_or_path"]
    argv += [str(mim_folder), "--train_dir", str(floods), "--output_dir", str(output), "--use_cpu", "--report_to"]
    argv += ["none", "--save_strategy", "no", "--disable_tqdm", "true"]
    with OutputLock(output) as first:  # the first run: this live process holds the output
        assert finetune_cli(argv) == 1
        holder = first.holder()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {output} is being written by another run (pid {holder['pid']} on ")
    assert not (output / "eval_results.json").exists()


def test_frozen_encoder_is_unchanged_after_training(mim_folder, floods, tmp_path):
    run_finetune(
        mim_folder, floods, tmp_path, "--task", "semantic-segmentation", "--num_labels", "2", "--max_steps", "3",
        "--freeze_encoder",
    )  # fmt: skip
    mim = ClayForMaskedImageModeling.from_pretrained(mim_folder).clay.state_dict()
    tuned = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(tuned[f"clay.{key}"], value) for key, value in mim.items())


def test_classification_and_regression_runs_write_metrics_and_geoparquet(mim_folder, tmp_path):
    data = tmp_path / "chips"
    write_synthetic_classification(data, 6, size=32)
    run = tmp_path / "cls"
    results = run_finetune(mim_folder, data, run, "--task", "image-classification", "--max_steps", "3")
    assert results["labels"] == {0: "bare", 1: "water"} and {"accuracy", "macro_f1"} <= set(results["metrics"])
    summary = predict_main(["--model_name_or_path", str(run), "--data_dir", str(data), "--output_dir", str(tmp_path)])
    table = pq.read_table(summary["written"][0])
    assert table.num_rows == 12 and set(table.column("label").to_pylist()) <= {"bare", "water"}
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and len(geo["columns"]["geometry"]["bbox"]) == 4
    assert None not in table.column("geometry").to_pylist()
    np.testing.assert_allclose(np.array(table.column("probabilities").to_pylist()).sum(axis=1), 1, rtol=1e-5)

    rows = [f"{p.relative_to(data)},{index}.5" for index, p in enumerate(sorted(data.rglob("*.tif")))]
    (data / "values.csv").write_text("path,value\n" + "\n".join(rows) + "\n")
    results = run_finetune(
        mim_folder, data / "values.csv", tmp_path / "reg", "--task", "regression", "--max_steps", "2"
    )
    assert {"rmse", "mae", "r2"} <= set(results["metrics"])


def test_tiles_cover_the_scene_and_blend_to_the_single_tile_prediction(floods):
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 8) == [0]
    window = cosine_window(8, 8)
    assert (window > 0).all() and window[3:5, 3:5].min() > window[0, 0]

    torch.manual_seed(0)
    model = ClayForSemanticSegmentation(small_config(num_hidden_layers=2, decode_head_type="fcn")).eval()
    image = str(sorted((floods / "images").glob("*.tif"))[0])
    reader, processor = v0_reader(), ClayImageProcessor()
    header = reader.header(image)
    whole, missing = segment_scene(model, processor, reader, header, tile=64, overlap=0)
    tiled, _ = segment_scene(model, processor, reader, header, tile=32, overlap=16)
    assert whole.shape == tiled.shape == (2, 64, 64) and missing[:8, :8].all() and not missing[8:].any()
    torch.testing.assert_close(tiled.sum(0), torch.ones(64, 64))
    # at the top-left corner the first tile carries nearly all the weight: the blend is close to that tile alone
    corner = model(**ClayDataCollator(processor, CLAY_V0_BAND_NAMES)([_crop(reader, header, 32)])).logits[0]
    assert (tiled[:, :4, :4] - corner.softmax(0)[:, :4, :4]).abs().max() < 0.1


def _crop(reader, header, size) -> dict:
    with rasterio.open(header.path) as dataset:
        pixels, _ = reader.read_window(dataset, header, 0, 0, size, size)
    lon, lat = tile_latlon(header, 0, 0, size, size)
    return {"pixels": pixels, "labels": np.zeros((size, size), np.int64), "date": header.date, "lon": lon, "lat": lat}


def test_a_scene_larger_than_a_tile_is_predicted_on_its_grid(tmp_path, mim_folder):
    model = ClayForSemanticSegmentation.from_pretrained(mim_folder, num_labels=3, decode_head_type="fcn")
    model.save_pretrained(tmp_path / "model")
    data = np.random.default_rng(0).uniform(100, 3000, (13, 80, 120)).astype(np.uint16)
    data[:, -5:, -7:] = 0
    write_geotiff(tmp_path / "scene" / "big.tif", data=data, size=(80, 120), dtype="uint16", nodata=0, crs="EPSG:3857")
    summary = predict_main(
        [
            *("--model_name_or_path", str(tmp_path / "model"), "--data_dir", str(tmp_path / "scene")),
            *("--output_dir", str(tmp_path / "out"), "--tile_size", "32", "--overlap", "8"),
        ]
    )
    assert summary["bad_chips"] == []
    with rasterio.open(tmp_path / "scene" / "big.tif") as source, rasterio.open(tmp_path / "out" / "big.tif") as out:
        assert (out.crs, out.transform, out.shape, out.nodata) == (source.crs, source.transform, (80, 120), 255)
        classes = out.read(1)
    assert (classes[-5:, -7:] == 255).all() and set(np.unique(classes[:-5])) <= {0, 1, 2}


def test_given_date_applies_only_to_chips_without_one(tmp_path):
    write_geotiff(tmp_path / "dated.tif", date="2021-06-15")
    write_geotiff(tmp_path / "undated.tif", date=None)
    reader = v0_reader(date="2019-01-01")
    assert str(reader.header(str(tmp_path / "dated.tif")).date) == "2021-06-15"
    assert str(reader.header(str(tmp_path / "undated.tif")).date) == "2019-01-01"
    with pytest.raises(ChipError, match=r"undated.tif: has no date.*--date"):
        v0_reader().header(str(tmp_path / "undated.tif"))
