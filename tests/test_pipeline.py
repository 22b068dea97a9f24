"""`pipeline("clay-feature-extraction")`: Clay chip embeddings with dates and places (issue 17.8)."""

import numpy as np
import pytest
import torch
from transformers import pipeline

from clay_hf import ClayConfig, ClayFeatureExtractionPipeline, ClayForMaskedImageModeling, ClayImageProcessor, ClayModel

DATES = ["2023-06-01", "2021-01-15"]
LONLAT = [(12.49, 41.89), (-70.6, -33.4)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clay-tiny")
    torch.manual_seed(0)
    ClayForMaskedImageModeling(ClayConfig.from_preset("tiny", image_size=32, patch_size=8)).save_pretrained(path)
    ClayImageProcessor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def extractor(model_dir):
    return pipeline("clay-feature-extraction", model=model_dir)


def chips(batch=2):
    return np.random.default_rng(0).integers(0, 10000, (batch, 13, 32, 32)).astype(np.uint16)


def reference_embeddings(model_dir, images, dates, lonlat):
    model = ClayModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**ClayImageProcessor()(images, dates=dates, lonlat=lonlat)).pooler_output


def test_a_chip_with_its_date_and_place_gives_its_embedding(model_dir, extractor):
    assert isinstance(extractor, ClayFeatureExtractionPipeline) and isinstance(extractor.model, ClayModel)
    embedding = extractor(chips()[0], dates=DATES[0], lonlat=LONLAT[0])
    expected = reference_embeddings(model_dir, chips()[:1], DATES[:1], LONLAT[:1])[0]
    assert isinstance(embedding, list) and len(embedding) == 256
    torch.testing.assert_close(torch.tensor(embedding), expected)


def test_batches_dicts_tokens_and_tensors(model_dir, extractor):
    expected = reference_embeddings(model_dir, chips(), DATES, LONLAT)
    batch = extractor(torch.from_numpy(chips().astype(np.int32)), dates=DATES, lonlat=LONLAT, return_tensors=True)
    torch.testing.assert_close(batch, expected)
    per_chip = extractor(
        [
            {"image": chip, "dates": date, "lonlat": place}
            for chip, date, place in zip(chips(), DATES, LONLAT, strict=True)
        ]
    )
    torch.testing.assert_close(torch.tensor(per_chip), expected)
    tokens = extractor(chips()[0], dates=DATES[0], lonlat=LONLAT[0], pool=False, return_tensors=True)
    assert tokens.shape == (6 * 16 + 2, 256)


def test_the_task_name_or_the_class_with_the_image_feature_extraction_task(model_dir):
    extractor = pipeline("image-feature-extraction", model=model_dir, pipeline_class=ClayFeatureExtractionPipeline)
    assert len(extractor(chips()[0], dates=DATES[0], lonlat=LONLAT[0])) == 256


def test_a_folder_without_a_processor_gets_the_v0_processor_for_the_models_bands(tmp_path):
    ClayForMaskedImageModeling(ClayConfig.from_preset("tiny", image_size=32, patch_size=8)).save_pretrained(tmp_path)
    extractor = pipeline("clay-feature-extraction", model=tmp_path)
    assert extractor.image_processor.band_names == extractor.model.config.band_names
    assert len(extractor(chips()[0], dates=DATES[0], lonlat=LONLAT[0])) == 256


def test_missing_places_and_unknown_arguments_are_clear_errors(extractor):
    with pytest.raises(ValueError, match="dates and lonlat are required"):
        extractor(chips()[0], dates=DATES[0])
    with pytest.raises(TypeError, match=r"unexpected arguments \['date'\]"):
        extractor(chips()[0], date=DATES[0], lonlat=LONLAT[0])
    with pytest.raises(ValueError, match="holds 'image', 'dates' and 'lonlat'"):
        extractor({"pixels": chips()[0], "dates": DATES[0], "lonlat": LONLAT[0]})
