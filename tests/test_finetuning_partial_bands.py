"""Partial inputs by band name through the heads and the fine-tuning script (needs from_pretrained(path, bands=...))."""

import numpy as np
import rasterio
import torch
from conftest import random_inputs, small_config
from geotiffs import write_geotiff

from clay_hf import ClayBackbone, ClayForImageClassification, ClayForMaskedImageModeling, ClayForSemanticSegmentation
from clay_hf.commands.finetune import run as finetune_main

BANDS = ["blue", "green", "red", "nir"]


def test_heads_keep_the_band_groups_the_input_completes(tmp_path):
    torch.manual_seed(0)
    mim = ClayForMaskedImageModeling(small_config(num_hidden_layers=2))
    mim.save_pretrained(tmp_path)
    for model_class in (ClayForSemanticSegmentation, ClayForImageClassification, ClayBackbone):
        model = model_class.from_pretrained(tmp_path, bands=BANDS, num_labels=2)
        assert model.config.group_names == ["rgb", "nir"] and model.config.band_names == BANDS
        state = model.state_dict()
        prefix = "" if model_class is ClayBackbone else "clay."
        for key, value in mim.clay.state_dict().items():
            if "patch_embeddings.groups." in key and not any(f".{g}." in key for g in ("rgb", "nir")):
                assert prefix + key not in state
            else:
                assert torch.equal(state[prefix + key], value)
        inputs = random_inputs(model.config, size=32)
        assert inputs["pixel_values"].shape[1] == 4
        model(**inputs)


def test_finetuning_on_four_band_chips_keeps_rgb_and_nir(tmp_path):
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config(num_hidden_layers=2)).save_pretrained(tmp_path / "mim")
    for index in range(6):
        data = np.random.default_rng(index).uniform(100, 3000, (4, 32, 32)).astype(np.float32)
        image = write_geotiff(tmp_path / "data" / "images" / f"c{index}.tif", data=data)
        with rasterio.open(image, "r+") as dataset:
            dataset.descriptions = tuple(BANDS)
        labels = (data[3:] > 1500).astype(np.uint8)
        write_geotiff(tmp_path / "data" / "labels" / f"c{index}.tif", data=labels, dtype="uint8")
    results = finetune_main(
        [
            *("--task", "semantic-segmentation", "--model_name_or_path", str(tmp_path / "mim")),
            *("--train_dir", str(tmp_path / "data"), "--num_labels", "2", "--output_dir", str(tmp_path / "out")),
            *("--max_steps", "2", "--report_to", "none", "--save_strategy", "no", "--use_cpu"),
            *("--per_device_train_batch_size", "2", "--validation_fraction", "0.34"),
        ]
    )
    saved = ClayForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert saved.config.group_names == ["rgb", "nir"] and results["num_train_chips"] >= 1
