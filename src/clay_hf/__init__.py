"""Clay v0, the geospatial foundation model, as a Hugging Face Transformers package.

Importing `clay_hf` registers the Clay classes with the Auto classes of transformers, and makes the package's
loggers follow transformers' verbosity.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .models.clay.configuration_clay import CLAY_V0_BAND_GROUPS, CLAY_V0_BAND_NAMES, CLAY_V0_PRESETS, ClayConfig
from .models.clay.convert_clay_original_checkpoint import CheckpointConversionError, convert_original_checkpoint
from .models.clay.image_processing_clay import (
    CLAY_V0_BAND_STATISTICS,
    ClayImageProcessor,
    encode_dates,
    encode_lonlat,
    load_image_processor,
)
from .models.clay.modeling_clay import (
    ClayForMaskedImageModeling,
    ClayForMaskedImageModelingOutput,
    ClayModel,
    ClayModelOutput,
    ClayPreTrainedModel,
    clay_masked_reconstruction_loss,
    patchify,
    unpatchify,
)
from .models.clay.modeling_clay_heads import ClayBackbone, ClayForImageClassification, ClayForSemanticSegmentation
from .models.clay.pipeline_clay import (
    CLAY_PIPELINES,
    ClayFeatureExtractionPipeline,
    ClayImageClassificationPipeline,
    ClayImageSegmentationPipeline,
)
from .models.clay.pipeline_clay import TASK as CLAY_PIPELINE_TASK
from .utils.logging import PackageLogger as PackageLogger  # first: the package logger precedes the modules' loggers

__version__ = "0.1.0"

AutoConfig.register(ClayConfig.model_type, ClayConfig, exist_ok=True)
AutoModel.register(ClayConfig, ClayModel, exist_ok=True)
AutoModelForMaskedImageModeling.register(ClayConfig, ClayForMaskedImageModeling, exist_ok=True)
AutoModelForPreTraining.register(ClayConfig, ClayForMaskedImageModeling, exist_ok=True)
AutoBackbone.register(ClayConfig, ClayBackbone, exist_ok=True)
AutoModelForSemanticSegmentation.register(ClayConfig, ClayForSemanticSegmentation, exist_ok=True)
AutoModelForImageClassification.register(ClayConfig, ClayForImageClassification, exist_ok=True)
AutoImageProcessor.register(ClayConfig, image_processor_classes={"pil": ClayImageProcessor}, exist_ok=True)
_AUTO_CLASSES = {
    "AutoModel": AutoModel,
    "AutoModelForSemanticSegmentation": AutoModelForSemanticSegmentation,
    "AutoModelForImageClassification": AutoModelForImageClassification,
}
for _task, (_pipeline_class, _auto_class, _) in CLAY_PIPELINES.items():
    if _task not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            _task, pipeline_class=_pipeline_class, pt_model=_AUTO_CLASSES[_auto_class], type="image"
        )

__all__ = [
    "CLAY_PIPELINE_TASK",
    "CLAY_V0_BAND_GROUPS",
    "CLAY_V0_BAND_NAMES",
    "CLAY_V0_BAND_STATISTICS",
    "CLAY_V0_PRESETS",
    "CheckpointConversionError",
    "ClayBackbone",
    "ClayConfig",
    "ClayFeatureExtractionPipeline",
    "ClayForImageClassification",
    "ClayForMaskedImageModeling",
    "ClayForMaskedImageModelingOutput",
    "ClayForSemanticSegmentation",
    "ClayImageClassificationPipeline",
    "ClayImageProcessor",
    "ClayImageSegmentationPipeline",
    "ClayModel",
    "ClayModelOutput",
    "ClayPreTrainedModel",
    "clay_masked_reconstruction_loss",
    "convert_original_checkpoint",
    "encode_dates",
    "encode_lonlat",
    "load_image_processor",
    "patchify",
    "unpatchify",
]
