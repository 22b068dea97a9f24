"""transformers pipelines for Clay: raw band stacks with their dates and places (or GeoTIFF chips) in; embeddings,
segmentation masks or chip labels out.

transformers' own image pipelines read RGB pictures (PIL) and pass no date or place, which a Clay chip needs.
Importing `clay_hf` registers these pipelines as the tasks `"clay-feature-extraction"`, `"clay-image-segmentation"`
and `"clay-image-classification"`:

    extractor = pipeline("clay-feature-extraction", model="path/or/hub-id")
    embedding = extractor(chip, dates="2023-06-01", lonlat=(12.49, 41.89))  # (C, H, W) raw values → D floats
    segmenter = pipeline("clay-image-segmentation", model="path/or/hub-id")
    masks = segmenter("chip.tif")  # a GeoTIFF: its date and centre are read from the file

A staged Hub repository ships this file and names its classes in `custom_pipelines` under the Hub's task ids
(`image-feature-extraction`, `image-segmentation`, `image-classification`), so that
`pipeline(<task>, model=repo, trust_remote_code=True)` runs them without `clay_hf` (GeoTIFF paths need `clay_hf`).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .image_processing_clay import ClayImageProcessor

TASK = "clay-feature-extraction"
SEGMENTATION_TASK = "clay-image-segmentation"
CLASSIFICATION_TASK = "clay-image-classification"


def read_geotiff(path: str | PathLike) -> dict[str, Any]:
    """A GeoTIFF chip as a pipeline input: its pixels (C, H, W), date, centre (lon, lat) and band names, read by
    `clay_hf.data.read_chip` (date from the file's tag or v0 name, centre from its georeferencing)."""
    try:
        from clay_hf.data import read_chip
    except ImportError as error:
        raise ImportError(
            "reading a GeoTIFF path needs clay_hf (pip install clay_hf); without it, pass the chip's pixels with "
            "dates= and lonlat=."
        ) from error
    chip = read_chip(path)
    pixels = chip.pixels
    if chip.missing is not None:  # a missing pixel is not a value: NaN, which the processor refuses or fills
        pixels = pixels.astype(np.result_type(pixels.dtype, np.float32))
        pixels[chip.missing] = np.nan
    return {"image": pixels, "dates": chip.date, "lonlat": (chip.lon, chip.lat), "bands": chip.band_names}


class ClayPipeline(Pipeline):
    """The input side of every Clay pipeline. Inputs, per call:
    - a chip (C, H, W) or a batch (B, C, H, W) of raw values, numpy or torch, with `dates=` and `lonlat=` (one
      each, or one per chip, as for [`ClayImageProcessor`]), and optionally `bands=` (the channels' names);
    - a dict `{"image": chip, "dates": ..., "lonlat": ...}` (and optionally `"bands"`), or a list of them;
    - a GeoTIFF path (or a list of them): pixels, date and centre come from the file (needs `clay_hf`).
    """

    task_name: ClassVar[str]
    _load_processor = False
    _load_image_processor = None  # the folder's processor if saved, else the v0 processor for the model's bands
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if getattr(config, "model_type", None) != "clay":
            raise ValueError(f"{self.task_name} runs Clay models; got a {type(config).__name__}.")
        if self.image_processor is None:
            self.image_processor = ClayImageProcessor(band_names=config.band_names)
        elif list(self.image_processor.band_names) != list(config.band_names):
            self.image_processor = self.image_processor.select_bands(config.band_names)

    def _sanitize_parameters(
        self, dates: Any = None, lonlat: Any = None, bands: Any = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        postprocess = self._postprocess_parameters(**kwargs)
        preprocess = {
            key: value for key, value in (("dates", dates), ("lonlat", lonlat), ("bands", bands)) if value is not None
        }
        return preprocess, {}, postprocess

    def _postprocess_parameters(self, **kwargs: Any) -> dict[str, Any]:
        """The task's own options (None: not given); anything else is a TypeError."""
        if kwargs:
            raise TypeError(f"{self.task_name} got unexpected arguments {sorted(kwargs)}.")
        return {}

    def preprocess(self, inputs: Any, dates: Any = None, lonlat: Any = None, bands: Any = None) -> dict[str, Any]:
        if isinstance(inputs, (str, PathLike)):
            inputs = read_geotiff(inputs)
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {"image", "dates", "lonlat", "bands"}
            if "image" not in inputs or unknown:
                raise ValueError(
                    f"a {self.task_name} input dict holds 'image', 'dates' and 'lonlat' (and optionally 'bands'); "
                    f"got keys {sorted(inputs)}."
                )
            dates, lonlat = inputs.get("dates", dates), inputs.get("lonlat", lonlat)
            inputs, bands = inputs["image"], inputs.get("bands") or bands
        single = getattr(inputs, "ndim", None) == 3
        model_inputs = self.image_processor(inputs, dates=dates, lonlat=lonlat, bands=bands, return_tensors="pt")
        return {**model_inputs, "single": single}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        single = model_inputs.pop("single")
        return {**self._outputs(self.model(**model_inputs)), "single": single}

    def _outputs(self, outputs: Any) -> dict[str, Any]:
        return {"logits": outputs.logits}

    def _per_chip(self, results: list[Any], single: bool) -> Any:
        return results[0] if single else results


class ClayFeatureExtractionPipeline(ClayPipeline):
    """Clay v0 embeddings of chips. Options: `pool=True` (default) gives the chip embedding (`pooler_output`, D
    floats); `pool=False` the tokens (`last_hidden_state`). `return_tensors=True` gives torch tensors, not lists."""

    task_name = TASK

    def _postprocess_parameters(
        self, pool: bool | None = None, return_tensors: bool | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        super()._postprocess_parameters(**kwargs)
        return {key: value for key, value in (("pool", pool), ("return_tensors", return_tensors)) if value is not None}

    def _outputs(self, outputs: Any) -> dict[str, Any]:
        return {"pooler_output": outputs.pooler_output, "last_hidden_state": outputs.last_hidden_state}

    def postprocess(self, model_outputs: dict[str, Any], pool: bool = True, return_tensors: bool = False) -> Any:
        outputs: torch.Tensor = model_outputs["pooler_output" if pool else "last_hidden_state"]  # (B, D) or (B, T, D)
        if model_outputs["single"]:
            outputs = outputs[0]
        return outputs if return_tensors else outputs.tolist()


class ClayImageSegmentationPipeline(ClayPipeline):
    """Semantic segmentation of chips, in the output format of transformers' `image-segmentation` pipeline: per
    chip, one `{"score": None, "label": name, "mask": PIL image}` for each class present, the mask 255 where the
    class is predicted (the processor's `post_process_semantic_segmentation` argmax), 0 elsewhere."""

    task_name = SEGMENTATION_TASK

    def postprocess(self, model_outputs: dict[str, Any]) -> Any:
        label_maps = self.image_processor.post_process_semantic_segmentation(model_outputs["logits"])  # B × (H, W)
        names = self.model.config.id2label
        results = []
        for label_map in label_maps:
            label_map = label_map.cpu().numpy()  # (H, W)
            results.append([
                {"score": None, "label": names[int(label)], "mask": Image.fromarray((label_map == label) * np.uint8(255))}
                for label in np.unique(label_map)
            ])  # fmt: skip
        return self._per_chip(results, model_outputs["single"])


class ClayImageClassificationPipeline(ClayPipeline):
    """Chip classification, in the output format of transformers' `image-classification` pipeline: per chip, the
    `top_k` (default 5) `{"label": name, "score": probability}`, softmax for single-label models, sigmoid for
    multi-label ones; a regression model (one label) gives its value as the score."""

    task_name = CLASSIFICATION_TASK

    def _postprocess_parameters(self, top_k: int | None = None, **kwargs: Any) -> dict[str, Any]:
        super()._postprocess_parameters(**kwargs)
        return {} if top_k is None else {"top_k": top_k}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5) -> Any:
        config = self.model.config
        logits = model_outputs["logits"].float()  # (B, K)
        if config.problem_type == "regression" or config.num_labels == 1:
            scores = logits
        elif config.problem_type == "multi_label_classification":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1)
        results = []
        for chip_scores in scores:
            best = chip_scores.topk(min(top_k, len(chip_scores)))
            results.append([
                {"label": config.id2label[int(index)], "score": float(score)}
                for score, index in zip(best.values, best.indices, strict=True)
            ])  # fmt: skip
        return self._per_chip(results, model_outputs["single"])


#: task → (pipeline class, the Auto class of its models, the Hub task id it serves in a staged repository)
CLAY_PIPELINES = {
    TASK: (ClayFeatureExtractionPipeline, "AutoModel", "image-feature-extraction"),
    SEGMENTATION_TASK: (ClayImageSegmentationPipeline, "AutoModelForSemanticSegmentation", "image-segmentation"),
    CLASSIFICATION_TASK: (ClayImageClassificationPipeline, "AutoModelForImageClassification", "image-classification"),
}


__all__ = [
    "CLASSIFICATION_TASK",
    "CLAY_PIPELINES",
    "SEGMENTATION_TASK",
    "TASK",
    "ClayFeatureExtractionPipeline",
    "ClayImageClassificationPipeline",
    "ClayImageSegmentationPipeline",
    "ClayPipeline",
    "read_geotiff",
]
