"""ClayBackbone, ClayForSemanticSegmentation and ClayForImageClassification: shapes, losses, loading, freezing."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import random_inputs, small_config
from transformers import (
    AutoBackbone,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    Trainer,
    TrainingArguments,
)

from clay_hf import (
    ClayBackbone,
    ClayConfig,
    ClayForImageClassification,
    ClayForMaskedImageModeling,
    ClayForSemanticSegmentation,
    ClayModel,
)
from clay_hf.models.clay.modeling_clay_heads import semantic_segmentation_loss

HEAD_SIZES = dict(neck_hidden_size=16, decode_hidden_size=16)


def head_config(**overrides) -> ClayConfig:
    return small_config(num_hidden_layers=4, **{**HEAD_SIZES, **overrides})


@pytest.fixture(scope="module")
def mim_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(head_config())
    folder = tmp_path_factory.mktemp("mim")
    model.save_pretrained(folder)
    return folder, model


def encoder_state(model) -> dict[str, torch.Tensor]:
    return {key.removeprefix("clay."): value for key, value in model.state_dict().items() if key.startswith("clay.")}


# ---------------------------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------------------------


def test_default_out_indices_are_clays_layers_for_small_and_spread_otherwise():
    assert ClayConfig().out_indices == [3, 5, 7, 11]
    assert ClayConfig().out_features == ["stage4", "stage6", "stage8", "stage12"]
    assert ClayConfig.from_preset("medium").out_indices == [5, 11, 17, 23]
    assert ClayConfig.from_preset("tiny").out_indices == [0, 1, 2, 3]


@pytest.mark.parametrize("fusion", ["mean", "concat"])
def test_backbone_feature_maps_are_the_group_patch_tokens_of_the_chosen_layers(fusion):
    config = head_config(out_indices=[1, 3], feature_fusion=fusion)
    torch.manual_seed(0)
    backbone = ClayBackbone(config).eval()
    inputs = random_inputs(config, size=48)
    maps = backbone(**inputs).feature_maps
    groups, dim = config.num_groups, config.hidden_size
    channels = dim if fusion == "mean" else groups * dim
    assert [tuple(m.shape) for m in maps] == [(2, channels, 6, 6)] * 2
    assert backbone.channels == [channels, channels]
    hidden = ClayModel.forward(backbone, **inputs, output_hidden_states=True).hidden_states
    tokens = hidden[4][:, :-2].reshape(2, groups, 6, 6, dim)  # stage4 = output of block index 3
    expected = tokens.mean(1).permute(0, 3, 1, 2) if fusion == "mean" else tokens.permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(maps[1], expected.reshape(2, channels, 6, 6))


def test_auto_classes_resolve(mim_folder):
    folder, _ = mim_folder
    config = head_config()
    assert type(AutoBackbone.from_config(config)) is ClayBackbone
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is ClayForSemanticSegmentation
    assert type(AutoModelForImageClassification.from_config(config)) is ClayForImageClassification
    assert type(AutoModelForSemanticSegmentation.from_pretrained(folder)) is ClayForSemanticSegmentation
    assert type(AutoModelForImageClassification.from_pretrained(folder)) is ClayForImageClassification


# ---------------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------------


def test_segmentation_loss_scores_only_pixels_other_than_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, :4] = 255
    loss = semantic_segmentation_loss(logits, labels, ignore_index=255)
    scored = labels != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[scored], labels[scored])
    torch.testing.assert_close(loss, expected)
    changed = logits.clone()
    changed[:, :, :4] = 100.0  # logits where labels are ignored do not matter
    torch.testing.assert_close(semantic_segmentation_loss(changed, labels, ignore_index=255), loss)
    assert semantic_segmentation_loss(logits, torch.full_like(labels, 255)) == 0
    assert semantic_segmentation_loss(logits, labels, dice_loss_weight=1.0) > loss


def test_segmentation_loss_names_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"values \[7\] outside the classes 0…2"):
        semantic_segmentation_loss(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 7))


@pytest.mark.parametrize("head", ["upernet", "fcn"])
def test_segmentation_model_logits_at_input_size_and_loss_ignores_index(head):
    config = head_config(decode_head_type=head, num_labels=3, ignore_index=9)
    torch.manual_seed(0)
    model = ClayForSemanticSegmentation(config)
    inputs = random_inputs(config, size=32)
    inputs["pixel_values"] = torch.randn(2, 13, 32, 48)
    labels = torch.randint(0, 3, (2, 32, 48))
    labels[0] = 9
    outputs = model(**inputs, labels=labels)
    assert outputs.logits.shape == (2, 3, 32, 48)
    expected = semantic_segmentation_loss(outputs.logits, labels, ignore_index=9)
    torch.testing.assert_close(outputs.loss, expected)
    outputs.loss.backward()
    assert model.decode_head.classifier.weight.grad is not None


def test_segmentation_trains_with_one_chip_per_batch():
    model = ClayForSemanticSegmentation(head_config()).train()  # GroupNorm, not BatchNorm, in neck and head
    outputs = model(
        **random_inputs(model.config, batch_size=1, size=32), labels=torch.zeros(1, 32, 32, dtype=torch.long)
    )
    assert torch.isfinite(outputs.loss)


def test_classification_losses_by_problem_type():
    torch.manual_seed(0)
    inputs = random_inputs(head_config(), size=32)
    model = ClayForImageClassification(head_config(num_labels=3))
    outputs = model(**inputs, labels=torch.tensor([0, 2]))
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, torch.tensor([0, 2])))
    pooled = model.clay(**inputs).pooler_output
    torch.testing.assert_close(outputs.logits, model.classifier(pooled))

    regression = ClayForImageClassification(head_config(num_labels=1, problem_type="regression"))
    outputs = regression(**inputs, labels=torch.tensor([1.5, -0.5]))
    torch.testing.assert_close(outputs.loss, ((outputs.logits[:, 0] - torch.tensor([1.5, -0.5])) ** 2).mean())

    multi = ClayForImageClassification(head_config(num_labels=3, problem_type="multi_label_classification"))
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    outputs = multi(**inputs, labels=targets)
    torch.testing.assert_close(
        outputs.loss, torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, targets)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Loading, saving, freezing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [ClayForSemanticSegmentation, ClayForImageClassification, ClayBackbone])
def test_pretrained_mim_folder_loads_encoder_bit_identical_and_reports_one_line(mim_folder, model_class, caplog):
    folder, mim = mim_folder
    with caplog.at_level(logging.INFO):
        model = model_class.from_pretrained(folder, num_labels=4)
    state = model.state_dict() if model_class is ClayBackbone else encoder_state(model)
    expected = mim.clay.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    ours = [r for r in caplog.records if r.name == "clay_hf.models.clay.modeling_clay_heads"]
    assert len(ours) == 1
    assert "not used from the checkpoint: decoder" in ours[0].getMessage()
    if model_class is not ClayBackbone:
        assert "initialised new:" in ours[0].getMessage() and "clay" not in ours[0].getMessage().split("new:")[1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("transformers")]


def test_encoder_only_folder_loads_into_the_heads(mim_folder, tmp_path):
    _, mim = mim_folder
    mim.clay.save_pretrained(tmp_path)
    model = ClayForSemanticSegmentation.from_pretrained(tmp_path, num_labels=2)
    state, expected = encoder_state(model), mim.clay.state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


@pytest.mark.parametrize(
    ("model_class", "overrides"),
    [
        (ClayForSemanticSegmentation, {}),
        (ClayForSemanticSegmentation, {"decode_head_type": "fcn", "feature_fusion": "concat"}),
        (ClayForImageClassification, {"num_labels": 5}),
    ],
)
def test_save_load_round_trip(model_class, overrides, tmp_path):
    torch.manual_seed(0)
    model = model_class(head_config(**overrides)).eval()
    inputs = random_inputs(model.config, size=32)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.config.decode_head_type == model.config.decode_head_type
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_frozen_encoder_stays_unchanged_while_the_head_learns():
    torch.manual_seed(0)
    model = ClayForSemanticSegmentation(head_config()).train()
    model.freeze_encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = random_inputs(model.config, size=32)
    for _ in range(2):
        model(**inputs, labels=torch.ones(2, 32, 32, dtype=torch.long)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("clay."))
    assert not torch.equal(after["decode_head.classifier.weight"], before["decode_head.classifier.weight"])


def test_accumulated_half_batches_make_the_update_of_one_full_batch(tmp_path):
    """The head losses are batch means: `Trainer` must divide them by the accumulation steps, so one step of 2 × 2
    accumulated chips moves the weights as one step of 4 chips does."""
    config = head_config(num_labels=2)
    torch.manual_seed(0)
    initial = ClayForImageClassification(config)
    inputs = random_inputs(config, batch_size=4)
    examples = [{**{key: value[index] for key, value in inputs.items()}, "labels": index % 2} for index in range(4)]

    def one_step(batch_size: int, accumulation: int) -> torch.Tensor:
        model = copy.deepcopy(initial)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"b{batch_size}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
            lr_scheduler_type="constant", max_grad_norm=0.0, report_to="none", save_strategy="no",
            logging_strategy="no", use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=examples).train()
        return model.classifier.weight.detach()

    moved = one_step(4, 1) - initial.classifier.weight.detach()
    assert moved.abs().max() > 1e-4
    torch.testing.assert_close(one_step(2, 2) - initial.classifier.weight.detach(), moved, rtol=1e-4, atol=1e-6)
