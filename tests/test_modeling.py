"""Behaviour of ClayModel and ClayForMaskedImageModeling beyond the fixture parity."""

import math

import pytest
import torch
from conftest import random_inputs, small_config
from transformers import AutoModel, AutoModelForMaskedImageModeling, AutoModelForPreTraining

from clay_hf import ClayConfig, ClayForMaskedImageModeling, ClayModel, patchify, unpatchify
from clay_hf.models.clay import modeling_clay


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
    from clay_hf.models.clay.modeling_clay import sincos_band_encoding

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


# ---------------------------------------------------------------------------------------------------------------------
# Inputs are checked (issue 17)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [ClayModel, ClayForMaskedImageModeling])
@pytest.mark.parametrize("typo", [{"mask_ration": 0.1}, {"output_hidden_state": True}, {"labels": None}])
def test_unknown_forward_arguments_raise_type_error(model_class, typo):
    config = small_config()
    with pytest.raises(TypeError, match=next(iter(typo))):
        model_class(config).eval()(**random_inputs(config), **typo)


def bool_mask(batch_size: int, num_tokens: int, num_masked: int, seed: int = 0) -> torch.Tensor:
    noise = torch.rand(batch_size, num_tokens, generator=torch.Generator().manual_seed(seed))
    return torch.zeros(batch_size, num_tokens, dtype=torch.bool).scatter(1, noise.argsort(1)[:, :num_masked], True)


def test_bool_masked_pos_masks_exactly_the_given_tokens():
    """bool_masked_pos (True = masked) gives the same outputs as noise that puts those tokens first, in order."""
    config = small_config()
    model = ClayForMaskedImageModeling(config).eval()
    inputs = random_inputs(config)
    num_tokens = config.num_groups * 16
    bool_masked_pos = bool_mask(2, num_tokens, 40)
    outputs = model(**inputs, bool_masked_pos=bool_masked_pos)
    torch.testing.assert_close(outputs.mask, bool_masked_pos.float())
    assert outputs.kept_indices.shape == (2, num_tokens - 40)
    assert (outputs.kept_indices.diff(dim=1) > 0).all()  # position order
    positions = torch.arange(num_tokens).expand(2, -1)
    noise = torch.where(bool_masked_pos, positions, positions + num_tokens).float()
    reference = model(**inputs, noise=noise, mask_ratio=40 / num_tokens)
    torch.testing.assert_close(outputs.logits, reference.logits)
    torch.testing.assert_close(outputs.loss, reference.loss)
    encoder = model.clay(**inputs, bool_masked_pos=bool_masked_pos)
    torch.testing.assert_close(encoder.last_hidden_state, outputs.encoder_last_hidden_state)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bool_masked_pos": torch.zeros(2, 5, dtype=torch.bool)}, r"must be \(B, G·L\) = \(B, 96\)"),
        ({"bool_masked_pos": torch.ones(2, 96, dtype=torch.bool)}, "masks all 96 tokens"),
        ({"bool_masked_pos": torch.eye(2, 96, dtype=torch.bool).flip(0) | torch.eye(2, 96, dtype=torch.bool)}, None),
        ({"bool_masked_pos": torch.tensor([[True] * 2 + [False] * 94, [True] + [False] * 95])}, "same number"),
        ({"bool_masked_pos": bool_mask(2, 96, 10), "mask_ratio": 0.5}, "not both"),
        ({"bool_masked_pos": bool_mask(2, 96, 10), "noise": torch.rand(2, 96)}, "not both"),
    ],
)
def test_bad_bool_masked_pos_is_a_clear_error(arguments, message):
    config = small_config()
    model = ClayModel(config).eval()
    if message is None:  # two tokens masked in each row: accepted
        assert model(**random_inputs(config), **arguments).mask.sum() == 4
        return
    with pytest.raises(ValueError, match=message):
        model(**random_inputs(config), **arguments)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("latlon", torch.zeros(3, 2), r"latlon must be \(B, 2\) = \(2, 2\) for 2 chips .* got shape \(3, 2\)"),
        ("latlon", torch.zeros(2, 3), r"latlon must be \(B, 2\) = \(2, 2\) .* got shape \(2, 3\)"),
        ("latlon", torch.zeros(2), r"latlon must be \(B, 2\) = \(2, 2\)"),
        ("timestep", torch.zeros(1, 3), r"timestep must be \(B, 3\) = \(2, 3\) .* got shape \(1, 3\)"),
        ("timestep", torch.zeros(2, 2), r"timestep must be \(B, 3\)"),
        ("latlon", torch.tensor([[12.49, 41.89], [12.5, 41.9]]), "latlon holds 12.49.*raw degrees.*encode_lonlat"),
        ("latlon", torch.tensor([[0.5, 0.1], [0.2, -179.0]]), "latlon holds -179.*raw degrees"),
        ("timestep", torch.tensor([[2023.0, 6, 1]] * 2), "timestep holds 2023.*raw dates.*encode_dates"),
    ],
)
def test_timestep_and_latlon_must_be_encodings_for_each_chip(name, value, message):
    config = small_config()
    inputs = {**random_inputs(config), name: value}
    with pytest.raises(ValueError, match=message):
        ClayModel(config).eval()(**inputs)
    with pytest.raises(ValueError, match=message):
        ClayForMaskedImageModeling(config).eval()(**inputs)


def test_encoded_inputs_at_the_edges_of_their_range_are_accepted():
    config = small_config()
    inputs = random_inputs(config)
    inputs["latlon"] = torch.tensor([[1.0, math.pi], [-1.0, -math.pi]])
    inputs["timestep"] = torch.tensor([[math.pi, -math.pi, 0.0]] * 2)
    assert torch.isfinite(ClayModel(config).eval()(**inputs).pooler_output).all()


@pytest.mark.parametrize("mask_ratio", [1.0, 1.5, -0.1])
def test_encoder_refuses_mask_ratios_that_keep_nothing_or_make_no_sense(mask_ratio):
    config = small_config()
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        ClayModel(config).eval()(**random_inputs(config), mask_ratio=mask_ratio)


@pytest.mark.parametrize("where", ["argument", "config"])
def test_reconstruction_without_masked_tokens_is_refused_not_nan(where):
    config = small_config(mask_ratio=0.0 if where == "config" else 0.75)
    model = ClayForMaskedImageModeling(config).eval()
    arguments = {"mask_ratio": 0.0} if where == "argument" else {}
    with pytest.raises(ValueError, match="no token is masked"):
        model(**random_inputs(config), **arguments)
    with pytest.raises(ValueError, match="no token is masked"):
        model(**random_inputs(config), bool_masked_pos=torch.zeros(2, 96, dtype=torch.bool))
    assert torch.isfinite(model(**random_inputs(config), mask_ratio=0.02).loss)  # int(0.02 · 96) = 1 masked


def test_input_embeddings_are_the_patch_embeddings():
    config = small_config()
    model = ClayForMaskedImageModeling(config)
    assert model.get_input_embeddings() is model.clay.embeddings.patch_embeddings
    assert model.clay.get_input_embeddings() is model.clay.embeddings.patch_embeddings


@pytest.mark.parametrize("model_class", [ClayModel, ClayForMaskedImageModeling])
def test_frozen_embeddings_with_reentrant_checkpointing_still_train_the_encoder(model_class):
    """The standard recipe (PEFT's preparation): frozen input embeddings, re-entrant activation checkpointing and
    `enable_input_require_grads`, so the checkpointed layers see an input that requires grad."""
    config = small_config()
    model = model_class(config).train()
    model.get_input_embeddings().requires_grad_(False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    outputs = model(**random_inputs(config), noise=torch.rand(2, config.num_groups * 16), mask_ratio=0.5)
    (outputs.pooler_output.sum() if model_class is ClayModel else outputs.loss).backward()
    encoder = model if model_class is ClayModel else model.clay
    for name, param in encoder.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(param.grad is None for param in model.get_input_embeddings().parameters())


@pytest.mark.parametrize(("height", "width"), [(32, 128), (96, 64), (128, 32), (40, 40)])
def test_logits_to_image_round_trips_non_square_chips(height, width):
    """Any multiple of the patch size; one side is enough, the other follows from the patch count."""
    config = small_config()  # 32×32 chips of 8×8 patches
    model = ClayForMaskedImageModeling(config)
    image = torch.randn(2, 13, height, width)
    logits = patchify(image, config.patch_size)  # (B, C, L, P·P), the layout of the model's logits
    torch.testing.assert_close(model.logits_to_image(logits, height, width), image, atol=0, rtol=0)
    torch.testing.assert_close(model.logits_to_image(logits, height=height), image, atol=0, rtol=0)
    torch.testing.assert_close(model.logits_to_image(logits, width=width), image, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"cannot tell the image size.*Pass height and/or width"):
        model.logits_to_image(logits)


def test_logits_to_image_of_a_model_output_and_its_errors():
    config = small_config()
    model = ClayForMaskedImageModeling(config).eval()
    inputs = random_inputs(config)
    inputs["pixel_values"] = torch.randn(2, 13, 32, 128)
    logits = model(**inputs).logits  # (2, 13, 64, 64)
    assert model.logits_to_image(logits, height=32).shape == (2, 13, 32, 128)
    square = model(**random_inputs(config)).logits
    assert model.logits_to_image(square).shape == (2, 13, 32, 32)  # the config's image_size
    with pytest.raises(ValueError, match="cannot make an image of height 24"):
        model.logits_to_image(logits, height=24)  # 3 rows do not divide 64 patches
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        model.logits_to_image(logits, width=30)
    with pytest.raises(ValueError, match="a 32×64 image has 32 patches of 8, the logits 64"):
        model.logits_to_image(logits, 32, 64)
    with pytest.raises(ValueError, match=r"logits must be \(B, C, L, P·P\) with P·P = 64"):
        model.logits_to_image(logits[..., :16])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_backward_writes_the_qkv_gradient_once(attn_implementation):
    """The three gradients of query, key and value are stacked straight into the qkv projection's layout
    (B, T, 3, heads, head_dim): no second copy of them to undo a permute (a profile of the training step showed one
    per layer)."""
    config = small_config()
    config._attn_implementation = attn_implementation
    attention = modeling_clay.ClayAttention(config, config.hidden_size, config.num_attention_heads, config.head_dim)
    hidden_states = torch.randn(2, 7, config.hidden_size, requires_grad=True)
    output, _ = attention(hidden_states)
    qkv_shape = [2, 7, 3, config.num_attention_heads, config.head_dim]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        output.sum().backward()
    copies = [event for event in profile.events() if event.name == "aten::copy_" and qkv_shape in event.input_shapes]
    assert copies == []
    assert hidden_states.grad is not None and attention.qkv.weight.grad is not None
