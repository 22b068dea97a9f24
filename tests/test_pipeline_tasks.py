"""The pipelines the cards promise: Clay segmentation and classification pipelines (raw chips with dates and places,
or GeoTIFF paths), registered by `import clay_hf`, shipped in staged repositories as `custom_pipelines`, and the
cards' pipeline snippets running as written where clay_hf cannot be imported."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import save_pretraining_model, small_config
from geotiffs import write_geotiff
from PIL import Image
from transformers import ViTConfig, ViTModel, pipeline

from clay_hf import (
    ClayForImageClassification,
    ClayForSemanticSegmentation,
    ClayImageClassificationPipeline,
    ClayImageProcessor,
    ClayImageSegmentationPipeline,
)
from clay_hf.data import read_chip
from clay_hf.hub.publish import stage_repository

DATES = ["2023-06-01", "2021-01-15"]
LONLAT = [(12.49, 41.89), (-70.6, -33.4)]
LABELS = {0: "land", 1: "water", 2: "cloud"}

pytestmark = pytest.mark.usefixtures("one_thread")


def chips(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10000, (batch, 13, 32, 32)).astype(np.uint16)


def save_head(folder: Path, model_class: type, **overrides) -> Path:
    torch.manual_seed(0)
    config = small_config(num_labels=3, id2label=LABELS, neck_hidden_size=16, decode_hidden_size=16, **overrides)
    model_class(config).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "segmentation": save_head(root / "segmentation", ClayForSemanticSegmentation),
        "classification": save_head(root / "classification", ClayForImageClassification),
        "pretrained": save_pretraining_model(root / "pretrained"),
        "regression": save_regressor(root / "regression"),
    }


def save_regressor(folder: Path) -> Path:
    torch.manual_seed(0)
    ClayForImageClassification(small_config(num_labels=1, problem_type="regression")).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    return folder


def logits_of(model_class: type, folder: Path, images, dates, lonlat) -> torch.Tensor:
    model = model_class.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**ClayImageProcessor()(images, dates=dates, lonlat=lonlat)).logits


def mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 255


def test_segmentation_pipeline_gives_one_mask_per_class_present(folders):
    segmenter = pipeline("clay-image-segmentation", model=folders["segmentation"])
    assert isinstance(segmenter, ClayImageSegmentationPipeline)
    label_map = logits_of(ClayForSemanticSegmentation, folders["segmentation"], chips(), DATES, LONLAT).argmax(1)
    batch = segmenter(chips(), dates=DATES, lonlat=LONLAT)
    single = segmenter(chips()[0], dates=DATES[0], lonlat=LONLAT[0])
    assert plain(single) == plain(batch[0])
    for masks, expected in zip(batch, label_map.numpy(), strict=True):
        assert [mask["label"] for mask in masks] == [LABELS[int(k)] for k in np.unique(expected)]
        for mask in masks:
            assert mask["score"] is None and mask["mask"].size == (32, 32)
            label = next(k for k, name in LABELS.items() if name == mask["label"])
            np.testing.assert_array_equal(mask_array(mask["mask"]), expected == label)


def test_classification_pipeline_gives_the_labels_best_first_with_probabilities(folders):
    classifier = pipeline("clay-image-classification", model=folders["classification"])
    assert isinstance(classifier, ClayImageClassificationPipeline)
    logits = logits_of(ClayForImageClassification, folders["classification"], chips(), DATES, LONLAT)
    results = classifier(
        [{"image": chip, "dates": d, "lonlat": p} for chip, d, p in zip(chips(), DATES, LONLAT, strict=True)]
    )
    for result, chip_logits in zip(results, logits, strict=True):
        probabilities = chip_logits.softmax(-1)
        order = probabilities.argsort(descending=True)
        assert [entry["label"] for entry in result] == [LABELS[int(k)] for k in order]
        torch.testing.assert_close(torch.tensor([entry["score"] for entry in result]), probabilities[order])
    top = classifier(chips()[0], dates=DATES[0], lonlat=LONLAT[0], top_k=1)
    assert len(top) == 1 and top[0]["label"] == results[0][0]["label"]
    with pytest.raises(TypeError, match="top_kk"):
        classifier(chips()[0], dates=DATES[0], lonlat=LONLAT[0], top_kk=1)


def test_a_geotiff_path_gives_what_its_pixels_date_and_place_give(folders, tmp_path):
    path = write_geotiff(tmp_path / "chip.tif", dtype="uint16", date="2021-06-15")
    chip = read_chip(path)
    assert str(chip.date) == "2021-06-15"
    classifier = pipeline("clay-image-classification", model=folders["classification"])
    explicit = classifier(chip.pixels, dates="2021-06-15", lonlat=(chip.lon, chip.lat))
    assert classifier(str(path)) == explicit and classifier([path, path]) == [explicit, explicit]
    extractor = pipeline("clay-feature-extraction", model=folders["pretrained"])
    expected = extractor(chip.pixels, dates="2021-06-15", lonlat=(chip.lon, chip.lat), return_tensors=True)
    torch.testing.assert_close(extractor(path, return_tensors=True), expected)


def test_a_geotiff_paths_missing_pixels_are_missing_not_values(folders, tmp_path):
    """A pixel the file marks missing (its nodata value, here one whose scale makes it -1000 in v0's unit) reaches
    the processor as missing: refused with the count, or filled as the processor says; never read as a value."""
    data = np.full((13, 32, 32), 1500, dtype=np.uint16)
    data[:, 0, 0] = 0
    path = write_geotiff(tmp_path / "chip.tif", dtype="uint16", nodata=0, data=data)
    with rasterio.open(path, "r+") as dataset:
        dataset.scales, dataset.offsets = (1e-4,) * 13, (-0.1,) * 13
    extractor = pipeline("clay-feature-extraction", model=folders["pretrained"])
    with pytest.raises(ValueError, match="images hold 13 missing pixels"):
        extractor(str(path))
    chip = read_chip(path)
    filled = chip.pixels.copy()
    processor = extractor.image_processor
    filled[:, 0, 0] = processor.fill_values("mean")
    processor.fill_value = "mean"
    expected = extractor(filled, dates=chip.date, lonlat=(chip.lon, chip.lat), return_tensors=True)
    torch.testing.assert_close(extractor(str(path), return_tensors=True), expected)


def test_a_geotiff_path_without_clay_hf_says_what_to_install_or_pass(folders, tmp_path, monkeypatch):
    path = write_geotiff(tmp_path / "chip.tif", dtype="uint16", date="2021-06-15")
    classifier = pipeline("clay-image-classification", model=folders["classification"])
    for name in ("clay_hf", "clay_hf.data"):  # not importable, as where clay_hf is not installed (remote code)
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"reading a GeoTIFF path needs clay_hf \(pip install clay_hf\); without it, "
                       r"pass the chip's pixels with dates= and lonlat="):  # fmt: skip
        classifier(str(path))


def test_post_process_semantic_segmentation_gives_label_maps_at_the_target_sizes():
    logits = torch.randn(2, 3, 8, 8)
    processor = ClayImageProcessor()
    maps = processor.post_process_semantic_segmentation(type("Outputs", (), {"logits": logits})())
    assert [tuple(m.shape) for m in maps] == [(8, 8), (8, 8)]
    torch.testing.assert_close(torch.stack(maps), logits.argmax(1))
    resized = processor.post_process_semantic_segmentation(logits, target_sizes=[(16, 16), (4, 4)])
    assert [tuple(m.shape) for m in resized] == [(16, 16), (4, 4)]
    expected = torch.nn.functional.interpolate(logits[:1], size=(16, 16), mode="bilinear").argmax(1)[0]
    torch.testing.assert_close(resized[0], expected)


# --- staged repositories: custom_pipelines and the cards' snippets without clay_hf ---------------------------------

HUB_TASKS = {
    "pretrained": ("made-with-clay/Clay", "image-feature-extraction", "ClayFeatureExtractionPipeline", "AutoModel"),
    "segmentation": ("made-with-clay/Clay-floods", "image-segmentation", "ClayImageSegmentationPipeline",
                     "AutoModelForSemanticSegmentation"),
    "classification": ("made-with-clay/Clay-landcover", "image-classification", "ClayImageClassificationPipeline",
                       "AutoModelForImageClassification"),
    "regression": ("made-with-clay/Clay-biomass", "image-classification", "ClayImageClassificationPipeline",
                   "AutoModelForImageClassification"),  # the Hub has no regression pipeline: classification's
}  # fmt: skip

SNIPPET_RESULT = """
import json
print(json.dumps({{"result": plain({name}), "pipeline": type({pipeline}).__name__,
                  "module": type({pipeline}).__module__, "clay_hf": sys.modules.get("clay_hf") is not None}}))
"""


def plain(value):
    """A pipeline's result as JSON values: masks as nested lists of booleans."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if type(value).__module__.startswith("PIL."):
        return (np.asarray(value) == 255).tolist()
    return value


def hub_cache(staged: Path, repo_id: str, cache: Path) -> Path:
    """The staged folder laid out as the Hub cache holds a downloaded repository (for HF_HUB_OFFLINE)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    for path in staged.iterdir():
        (repo / "snapshots" / commit / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


@pytest.mark.parametrize("kind", HUB_TASKS)
def test_the_cards_pipeline_snippet_runs_as_written_without_clay_hf(folders, kind, tmp_path):
    repo_id, hub_task, pipeline_class, auto_class = HUB_TASKS[kind]
    staged = stage_repository(folders[kind], tmp_path / "repo", repo_id)
    config = json.loads((staged.folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        hub_task: {"impl": f"pipeline_clay.{pipeline_class}", "pt": [auto_class], "type": "image"}
    }
    assert "pipeline_clay.py" in staged.files
    card = (staged.folder / "README.md").read_text()
    code = re.search(r"\*\*Pipeline\.\*\*.*?```python\n(.*?)```", card, re.DOTALL).group(1)
    assert f'pipeline("{hub_task}", model="{repo_id}", trust_remote_code=True)' in code
    name, variable = ("embedding", "extractor") if kind == "pretrained" else ("result", "predict")
    prelude = 'import sys\nsys.modules["clay_hf"] = None\nimport numpy as np\nnp.random.seed(0)\n'
    program = prelude + code + SNIPPET_RESULT.format(name=name, pipeline=variable)
    program = program.replace("import json\n", "import json\n" + inspect.getsource(plain), 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache(staged.folder, repo_id, tmp_path / "c")),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    remote = json.loads(run.stdout.strip().splitlines()[-1])
    assert remote["pipeline"] == pipeline_class and remote["module"].startswith("transformers_modules.")
    assert not remote["clay_hf"]
    # The snippet's chip through clay_hf's registered pipeline gives the same result.
    np.random.seed(0)
    chip = np.random.randint(0, 10000, (13, 32, 32))
    task = {"pretrained": "clay-feature-extraction", "segmentation": "clay-image-segmentation"}.get(
        kind, "clay-image-classification"
    )
    local = plain(pipeline(task, model=folders[kind])(chip, dates="2023-06-01", lonlat=(12.49, 41.89)))
    if kind == "pretrained":
        torch.testing.assert_close(torch.tensor(remote["result"]), torch.tensor(local))
    elif kind == "segmentation":
        assert remote["result"] == local
    else:
        assert [entry["label"] for entry in remote["result"]] == [entry["label"] for entry in local]
        torch.testing.assert_close(
            torch.tensor([entry["score"] for entry in remote["result"]]),
            torch.tensor([entry["score"] for entry in local]),
        )


def test_clay_hf_registers_the_pipelines_and_refuses_other_models(folders):
    from transformers.pipelines import PIPELINE_REGISTRY

    assert {"clay-feature-extraction", "clay-image-segmentation", "clay-image-classification"} <= set(
        PIPELINE_REGISTRY.get_supported_tasks()
    )
    vit = ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    with pytest.raises(ValueError, match="clay-image-segmentation runs Clay models; got a ViTConfig"):
        ClayImageSegmentationPipeline(model=vit)
