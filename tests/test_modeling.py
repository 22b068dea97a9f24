"""Behaviour of ClayModel and ClayForMaskedImageModeling beyond the fixture parity."""

import pytest
import torch
from conftest import random_inputs, small_config
from transformers import AutoModel, AutoModelForMaskedImageModeling, AutoModelForPreTraining

from clay_hf import ClayConfig, ClayForMaskedImageModeling, ClayModel, patchify, unpatchify


def test_released_shape_parameter_counts():
    assert ClayForMaskedImageModeling(ClayConfig()).num_parameters() == 127_702_272
    assert ClayModel(ClayConfig()).num_parameters() == 95_271_168


def test_encoder_does_not_mask_by_default():
    config = small_config()
    model = ClayModel(config).eval()
    outputs = model(**random_inputs(config))
    num_tokens = config.num_groups * (config.image_size // config.patch_size) ** 2
    assert outputs.last_hidden_state.shape == (2, num_tokens + 2, config.hidden_size)
    assert outputs.pooler_output.shape == (2, config.hidden_size)
    assert outputs.mask is None and outputs.kept_indices is None
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, :-2].mean(1))


def test_encoder_masks_with_given_noise_smallest_first():
    config = small_config()
    model = ClayModel(config).eval()
    num_tokens = config.num_groups * 16
    noise = torch.rand(2, num_tokens)
    outputs = model(**random_inputs(config), noise=noise, mask_ratio=0.5)
    assert outputs.last_hidden_state.shape == (2, num_tokens // 2 + 2, config.hidden_size)
    expected_masked = torch.zeros_like(noise).scatter(1, noise.argsort(1)[:, : num_tokens // 2], 1.0)
    torch.testing.assert_close(outputs.mask, expected_masked)
    assert outputs.mask.gather(1, outputs.kept_indices).eq(0).all()
    assert outputs.mask.gather(1, outputs.masked_indices).eq(1).all()


def test_kept_tokens_equal_the_unmasked_tokens_at_the_embedding_level():
    """Masking only selects tokens: the kept embeddings equal those of an unmasked pass at the same positions."""
    config = small_config()
    model = ClayModel(config).eval()
    inputs = random_inputs(config)
    full, _ = model.embeddings(inputs["pixel_values"], inputs["timestep"], inputs["latlon"])
    kept, masking = model.embeddings(**inputs, noise=torch.rand(2, config.num_groups * 16), mask_ratio=0.75)
    picked = full[:, :-2].gather(1, masking.kept_indices[..., None].expand(-1, -1, config.hidden_size))
    torch.testing.assert_close(kept[:, :-2], picked)
    torch.testing.assert_close(kept[:, -2:], full[:, -2:])


def test_training_mode_masks_randomly_and_eval_mode_deterministically():
    config = small_config()
    model = ClayForMaskedImageModeling(config)
    inputs = random_inputs(config)
    torch.manual_seed(0)
    first, second = model.train()(**inputs).mask, model(**inputs).mask
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(**inputs).mask, model(**inputs).mask)


def test_masked_image_modeling_output_shapes_and_return_dict_false():
    config = small_config()
    model = ClayForMaskedImageModeling(config).eval()
    inputs = random_inputs(config)
    outputs = model(**inputs)
    num_patches = (config.image_size // config.patch_size) ** 2
    assert outputs.logits.shape == (2, config.num_channels, num_patches, config.patch_size**2)
    assert outputs.mask.shape == (2, config.num_groups * num_patches)
    assert outputs.loss.ndim == 0
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.loss)
    torch.testing.assert_close(as_tuple[1], outputs.logits)
    encoder_tuple = model.clay(**inputs, return_dict=False)
    torch.testing.assert_close(encoder_tuple[0], model.clay(**inputs).last_hidden_state)


def test_hidden_states_and_attentions_are_returned():
    config = small_config()
    model = ClayModel(config).eval()
    outputs = model(**random_inputs(config), output_hidden_states=True, output_attentions=True)
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    assert len(outputs.attentions) == config.num_hidden_layers
    num_tokens = outputs.last_hidden_state.shape[1]
    assert outputs.attentions[0].shape == (2, config.num_attention_heads, num_tokens, num_tokens)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, num_tokens))
    torch.testing.assert_close(model.encoder.layernorm(outputs.hidden_states[-1]), outputs.last_hidden_state)


@pytest.mark.parametrize("size", [16, 48, 64])
def test_any_multiple_of_the_patch_size_runs(size):
    config = small_config()
    model = ClayForMaskedImageModeling(config).eval()
    outputs = model(**random_inputs(config, size=size))
    num_patches = (size // config.patch_size) ** 2
    assert outputs.logits.shape == (2, config.num_channels, num_patches, config.patch_size**2)
    assert model.logits_to_image(outputs.logits, size, size).shape == (2, config.num_channels, size, size)
    assert torch.isfinite(outputs.loss)


def test_position_encoding_is_built_for_the_input_grid():
    config = small_config()
    model = ClayModel(config).eval()
    a = model(**random_inputs(config, size=32)).last_hidden_state
    b = model(**random_inputs(config, size=48)).last_hidden_state
    c = model(**random_inputs(config, size=32)).last_hidden_state
    assert a.shape[1] != b.shape[1]
    torch.testing.assert_close(a, c)


def test_image_size_not_a_multiple_of_patch_size_is_rejected():
    config = small_config()
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        ClayModel(config)(**random_inputs(config, size=36))


def test_wrong_band_count_is_rejected():
    config = small_config()
    inputs = random_inputs(config)
    inputs["pixel_values"] = inputs["pixel_values"][:, :4]
    with pytest.raises(ValueError, match="has 4 bands; this model reads 13"):
        ClayModel(config)(**inputs)


def test_patchify_and_logits_to_image_invert_each_other():
    image = torch.randn(2, 13, 32, 48)
    patches = patchify(image, 8)
    assert patches.shape == (2, 13, 24, 64)
    torch.testing.assert_close(patches[0, 3, 7], image[0, 3, 8:16, 8:16].flatten())  # patch 7 = row 1, column 1 of 4×6
    torch.testing.assert_close(unpatchify(patches, 32, 48), image)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = small_config()
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(config).train()
    inputs = random_inputs(config)
    noise = torch.rand(2, config.num_groups * 16)

    def gradients():
        model.zero_grad()
        model(**inputs, noise=noise).loss.backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.clay.encoder.layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_partial_inputs_load_their_groups_by_name_from_a_full_checkpoint(tmp_path):
    full_config = small_config()
    full = ClayForMaskedImageModeling(full_config).eval()
    full.save_pretrained(tmp_path)
    partial_config = small_config(
        band_names=["blue", "green", "red", "nir"], band_groups=[["rgb", [2, 1, 0]], ["nir", [3]]]
    )
    partial = ClayForMaskedImageModeling.from_pretrained(tmp_path, config=partial_config).eval()

    assert list(partial.clay.embeddings.patch_embeddings.groups) == ["rgb", "nir"]
    for name in ("rgb", "nir"):
        torch.testing.assert_close(
            partial.clay.embeddings.patch_embeddings.groups[name].projection.weight,
            full.clay.embeddings.patch_embeddings.groups[name].projection.weight,
        )
        torch.testing.assert_close(partial.decoder.to_pixels[name].weight, full.decoder.to_pixels[name].weight)
    torch.testing.assert_close(
        partial.clay.encoder.layers[0].attention.qkv.weight, full.clay.encoder.layers[0].attention.qkv.weight
    )

    inputs = random_inputs(partial_config)
    outputs = partial(**inputs)
    assert outputs.logits.shape == (2, 4, 16, 64)
    assert outputs.mask.shape == (2, 2 * 16)
    encoder = AutoModel.from_pretrained(tmp_path, config=partial_config)
    assert encoder(**inputs).pooler_output.shape == (2, partial_config.hidden_size)


def test_partial_band_encoding_uses_the_position_in_the_subset():
    """nir is group 1 of the rgb+nir subset, so its tokens get the band encoding of group 1, not of group 2."""
    from clay_hf.modeling_clay import sincos_band_encoding

    config = small_config(band_names=["blue", "green", "red", "nir"], band_groups=[["rgb", [2, 1, 0]], ["nir", [3]]])
    encoding = ClayModel(config).embeddings.position_band_encoding(4, 4, torch.device("cpu"), torch.float32)
    band = sincos_band_encoding(2, config.hidden_size // 2)
    torch.testing.assert_close(encoding[16:, config.hidden_size // 2 :], band[1].expand(16, -1))


def test_reconstruction_model_needs_every_band_in_a_group():
    with pytest.raises(ValueError, match="cover each of the 13 bands"):
        ClayForMaskedImageModeling(small_config(band_groups=[["rgb", [2, 1, 0]]]))


def test_auto_classes_resolve(tmp_path):
    config = small_config()
    ClayForMaskedImageModeling(config).save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is ClayModel
    assert type(AutoModelForMaskedImageModeling.from_pretrained(tmp_path)) is ClayForMaskedImageModeling
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is ClayForMaskedImageModeling
    assert type(AutoModel.from_config(config)) is ClayModel


def test_from_pretrained_rebuilds_the_sincos_encoding(tmp_path):
    """transformers 5 builds on the meta device: the fixed encodings must come back as real numbers."""
    config = small_config()
    model = ClayModel(config).eval()
    inputs = random_inputs(config)
    model.save_pretrained(tmp_path)
    reloaded = ClayModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state, atol=0, rtol=0)
    assert [name for name, _ in reloaded.named_buffers()] == []


def test_noise_of_the_wrong_shape_is_rejected():
    config = small_config()
    with pytest.raises(ValueError, match="noise must have shape"):
        ClayModel(config)(**random_inputs(config), noise=torch.rand(2, 5))


def test_forward_compiles_without_graph_breaks():
    """`torch.compile(model, fullgraph=True)` traces the whole forward (the eager backend keeps this test fast)."""
    config = small_config()
    inputs = random_inputs(config)
    encoder = ClayModel(config).eval()
    compiled = torch.compile(encoder, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs).last_hidden_state, encoder(**inputs).last_hidden_state)
    model = ClayForMaskedImageModeling(config).eval()
    noise = torch.rand(2, config.num_groups * 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs, noise=noise).loss, model(**inputs, noise=noise).loss)
    assert ClayModel._can_compile_fullgraph


def test_training_step_compiles_without_graph_breaks():
    """With autograd on, the compiled forward and its backward give the eager gradients."""
    config = small_config()
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(config).train()
    inputs, noise = random_inputs(config), torch.rand(2, config.num_groups * 16)

    def gradients(module):
        model.zero_grad()
        module(**inputs, noise=noise).loss.backward()
        return {name: param.grad.clone() for name, param in model.named_parameters()}

    eager = gradients(model)
    compiled = gradients(torch.compile(model, fullgraph=True, backend="eager"))
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], msg=name)
