"""A transformers pipeline for Clay chip embeddings: raw band stacks, with their dates and places, in; embeddings out.

`transformers.pipeline("image-feature-extraction")` reads RGB pictures (PIL) and passes no date or place, which a
Clay chip needs; importing `clay_hf` registers this pipeline as the task `"clay-feature-extraction"`:

    extractor = pipeline("clay-feature-extraction", model="path/or/hub-id")
    embedding = extractor(chip, dates="2023-06-01", lonlat=(12.49, 41.89))  # (C, H, W) raw values → D floats
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Pipeline

from .configuration_clay import ClayConfig
from .image_processing_clay import ClayImageProcessor

TASK = "clay-feature-extraction"


class ClayFeatureExtractionPipeline(Pipeline):
    """Clay v0 embeddings of chips (raw values, channels first) with their acquisition dates and (lon, lat) centres.

    Inputs, per call:
        - a chip (C, H, W) or a batch (B, C, H, W), numpy or torch, with `dates=` and `lonlat=` (one each, or one
          per chip, as for [`ClayImageProcessor`]);
        - a dict `{"image": chip, "dates": ..., "lonlat": ...}`, or a list of them (one result each).
    Options: `pool=True` (default) gives the chip embedding (`pooler_output`, D floats); `pool=False` the tokens
    (`last_hidden_state`). `return_tensors=True` gives torch tensors instead of lists.
    """

    _load_processor = False
    _load_image_processor = None  # the folder's processor if saved, else the v0 processor for the model's bands
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if not isinstance(config, ClayConfig):
            raise ValueError(f"{TASK} runs Clay models; got a {type(config).__name__}.")
        if self.image_processor is None:
            self.image_processor = ClayImageProcessor(band_names=config.band_names)
        elif list(self.image_processor.band_names) != list(config.band_names):
            self.image_processor = self.image_processor.select_bands(config.band_names)

    def _sanitize_parameters(
        self,
        dates: Any = None,
        lonlat: Any = None,
        pool: bool | None = None,
        return_tensors: bool | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(f"{TASK} got unexpected arguments {sorted(kwargs)}.")
        preprocess = {key: value for key, value in (("dates", dates), ("lonlat", lonlat)) if value is not None}
        postprocess = {
            key: value for key, value in (("pool", pool), ("return_tensors", return_tensors)) if value is not None
        }
        return preprocess, {}, postprocess

    def preprocess(self, inputs: Any, dates: Any = None, lonlat: Any = None) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {"image", "dates", "lonlat"}
            if "image" not in inputs or unknown:
                raise ValueError(f"a {TASK} input dict holds 'image', 'dates' and 'lonlat'; got keys {sorted(inputs)}.")
            inputs, dates, lonlat = inputs["image"], inputs.get("dates", dates), inputs.get("lonlat", lonlat)
        single = getattr(inputs, "ndim", None) == 3
        model_inputs = dict(self.image_processor(inputs, dates=dates, lonlat=lonlat, return_tensors="pt"))
        return {**model_inputs, "single": single}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        single = model_inputs.pop("single")
        outputs = self.model(**model_inputs)
        return {
            "pooler_output": outputs.pooler_output,
            "last_hidden_state": outputs.last_hidden_state,
            "single": single,
        }

    def postprocess(self, model_outputs: dict[str, Any], pool: bool = True, return_tensors: bool = False) -> Any:
        outputs: torch.Tensor = model_outputs["pooler_output" if pool else "last_hidden_state"]  # (B, D) or (B, T, D)
        if model_outputs["single"]:
            outputs = outputs[0]
        return outputs if return_tensors else outputs.tolist()


__all__ = ["TASK", "ClayFeatureExtractionPipeline"]
