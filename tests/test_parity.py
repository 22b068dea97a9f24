"""The port computes what the original v0 code computed: tests against its reference outputs."""

import pytest
import torch
from transformers import AutoModel

from clay_hf import ClayForMaskedImageModeling, ClayModel

ATTENTION = ["eager", "sdpa"]
ATOL = 1e-5


def run_encoder(model, expected):
    with torch.no_grad():
        return model(expected["pixels"], expected["timestep"], expected["latlon"]).last_hidden_state


def run_pretraining(model, expected):
    with torch.no_grad():
        return model(expected["pixels"], expected["timestep"], expected["latlon"], noise=expected["noise"])


def test_converted_model_has_fixture_parameter_count(tiny_model, fixture_meta):
    assert tiny_model.num_parameters() == fixture_meta["num_parameters"]


@pytest.mark.parametrize("attn_implementation", ATTENTION)
def test_encoder_output_matches_original(tiny_model, expected, attn_implementation):
    tiny_model.set_attn_implementation(attn_implementation)
    hidden = run_encoder(tiny_model.clay, expected)
    torch.testing.assert_close(hidden, expected["encoder_last_hidden_state"], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("attn_implementation", ATTENTION)
def test_mask_reconstruction_and_loss_match_original(tiny_model, expected, attn_implementation):
    tiny_model.set_attn_implementation(attn_implementation)
    outputs = run_pretraining(tiny_model, expected)
    torch.testing.assert_close(outputs.mask, expected["mask"], atol=0, rtol=0)
    torch.testing.assert_close(outputs.logits, expected["reconstruction"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(outputs.loss.reshape(1), expected["loss"], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("attn_implementation", ATTENTION)
def test_training_path_matches_original(tiny_model, expected, attn_implementation):
    """In training mode with autograd on, blocks take the path that recomputes norms and GELUs in backward: same
    outputs."""
    tiny_model.set_attn_implementation(attn_implementation)
    outputs = tiny_model.train()(expected["pixels"], expected["timestep"], expected["latlon"], noise=expected["noise"])
    assert outputs.loss.requires_grad
    torch.testing.assert_close(outputs.logits, expected["reconstruction"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(outputs.loss.reshape(1), expected["loss"], atol=ATOL, rtol=ATOL)


def test_pooler_output_is_the_v0_mean_embedding(tiny_model, expected):
    with torch.no_grad():
        pooled = tiny_model.clay(expected["pixels"], expected["timestep"], expected["latlon"]).pooler_output
    torch.testing.assert_close(pooled, expected["encoder_last_hidden_state"][:, :-2].mean(1), atol=ATOL, rtol=ATOL)


def test_eval_mode_masking_is_v0_validation(tiny_model, expected):
    """Without noise in eval mode nothing is shuffled: the first 75% of group-major tokens are masked."""
    outputs = tiny_model.eval()(expected["pixels"], expected["timestep"], expected["latlon"])
    num_tokens = expected["mask"].shape[1]
    num_masked = int(0.75 * num_tokens)
    assert outputs.mask[:, :num_masked].eq(1).all() and outputs.mask[:, num_masked:].eq(0).all()


@pytest.mark.parametrize("attn_implementation", ATTENTION)
def test_save_and_from_pretrained_keep_outputs(tiny_model, expected, tmp_path, attn_implementation):
    tiny_model.set_attn_implementation(attn_implementation)
    tiny_model.save_pretrained(tmp_path)
    reloaded = ClayForMaskedImageModeling.from_pretrained(tmp_path, attn_implementation=attn_implementation)
    original, again = run_pretraining(tiny_model, expected), run_pretraining(reloaded, expected)
    torch.testing.assert_close(again.logits, original.logits, atol=0, rtol=0)
    torch.testing.assert_close(again.loss, original.loss, atol=0, rtol=0)
    torch.testing.assert_close(again.logits, expected["reconstruction"], atol=ATOL, rtol=ATOL)

    encoder = AutoModel.from_pretrained(tmp_path, attn_implementation=attn_implementation)
    assert type(encoder) is ClayModel
    torch.testing.assert_close(
        run_encoder(encoder, expected), expected["encoder_last_hidden_state"], atol=ATOL, rtol=ATOL
    )
