"""Loading and calling Clay as transformers users expect: mismatched sizes fail at once with transformers' error or
are named when ignored, unknown arguments raise, `num_channels` is accepted, and transformers' verbosity governs
the package's log messages."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from conftest import pretrain_in_process, random_inputs, small_config

from clay_hf import (
    ClayBackbone,
    ClayConfig,
    ClayForImageClassification,
    ClayForMaskedImageModeling,
    ClayForSemanticSegmentation,
    ClayModel,
)
from clay_hf.chipping import write_synthetic_chips
from clay_hf.inference.embeddings import _progress
from clay_hf.training.arguments import ModelArguments
from clay_hf.training.pretrain import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Records(logging.Handler):
    """Collects (logger name, level, message) of what reaches it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


@pytest.fixture()
def log_records():
    """What transformers' loggers and ours emit, at any level the loggers let through."""
    handler = Records()
    loggers = [logging.getLogger("transformers"), logging.getLogger("clay_hf")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture()
def segmenter_dir(tmp_path) -> Path:
    """A saved 2-class segmentation model."""
    torch.manual_seed(0)
    config = small_config(num_labels=2, neck_hidden_size=16, decode_hidden_size=16)
    ClayForSemanticSegmentation(config).save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture()
def within_seconds():
    """Fails the test (TimeoutError) when it runs longer than 60 s: a hang must not hang the suite."""

    def expire(signum, frame):
        raise TimeoutError("still running after 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- mismatched sizes --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("within_seconds")
def test_a_head_with_other_sizes_fails_at_once_with_transformers_error_and_its_report(segmenter_dir, log_records):
    with pytest.raises(RuntimeError, match="You set `ignore_mismatched_sizes` to `False`"):
        ClayForSemanticSegmentation.from_pretrained(segmenter_dir, num_labels=5)
    reports = [message for _, _, message in log_records if "LOAD REPORT" in message]
    assert len(reports) == 1 and "decode_head.classifier.weight" in reports[0] and "MISMATCH" in reports[0]


def test_ignored_mismatched_sizes_are_named_at_warning_level(segmenter_dir, log_records):
    model = ClayForSemanticSegmentation.from_pretrained(segmenter_dir, num_labels=5, ignore_mismatched_sizes=True)
    assert model.decode_head.classifier.out_channels == 5
    ours = [
        (level, message) for name, level, message in log_records if name == "clay_hf.models.clay.modeling_clay_heads"
    ]
    assert len(ours) == 1
    level, message = ours[0]
    assert level == logging.WARNING
    assert "decode_head.classifier.weight (2, 16, 1, 1) → (5, 16, 1, 1)" in message
    assert "decode_head.classifier.bias (2,) → (5,)" in message
    total = len(model.state_dict())
    assert f"{total - 2} tensors loaded" in message  # the two re-initialised tensors are not counted as loaded


# --- unknown arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_class", "argument"),
    [
        (ClayForImageClassification, "lables"),
        (ClayForSemanticSegmentation, "lables"),
        (ClayForImageClassification, "mask_ratio"),
        (ClayBackbone, "bool_masked_pos"),
        (ClayBackbone, "mask_ratio"),
        (ClayModel, "lables"),
    ],
)
def test_an_unknown_argument_is_a_type_error_naming_it(model_class, argument):
    config = small_config(num_labels=2, neck_hidden_size=16, decode_hidden_size=16)
    model = model_class(config).eval()
    with pytest.raises(TypeError, match=argument):
        model(**random_inputs(config), **{argument: torch.zeros(2, dtype=torch.long)})


# --- num_channels ------------------------------------------------------------------------------------------------


def test_num_channels_is_accepted_as_in_transformers_vision_configs(tmp_path):
    assert ClayConfig(num_channels=13).num_channels == 13
    config = small_config()
    config.save_pretrained(tmp_path)
    saved = (tmp_path / "config.json").read_text().replace('"band_groups"', '"num_channels": 13,\n  "band_groups"', 1)
    (tmp_path / "config.json").write_text(saved)
    assert ClayConfig.from_pretrained(tmp_path).num_channels == 13
    with pytest.raises(ValueError, match="num_channels=4, but this config has 13 bands"):
        ClayConfig(num_channels=4)


# --- transformers' verbosity -------------------------------------------------------------------------------------


@pytest.fixture()
def verbosity():
    """A package logger without a level of its own (a command run in-process earlier, such as pretraining's `main`,
    sets one, as a script does); transformers' verbosity restored after the test."""
    package = logging.getLogger("clay_hf")
    before, own = transformers.logging.get_verbosity(), package.level
    package.setLevel(logging.NOTSET)
    yield transformers.logging
    transformers.logging.set_verbosity(before)
    package.setLevel(own)


def test_set_verbosity_error_silences_load_reports_and_band_warnings(segmenter_dir, tmp_path, log_records, verbosity):
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config()).save_pretrained(tmp_path / "mim")

    def load_both():
        ClayForSemanticSegmentation.from_pretrained(segmenter_dir, num_labels=5, ignore_mismatched_sizes=True)
        ClayModel.from_pretrained(tmp_path / "mim", bands=["red", "green", "blue"])
        return [(name, message) for name, level, message in log_records if name.startswith("clay_hf")]

    shown = load_both()  # at transformers' default verbosity, both warn
    assert any("re-initialised" in message for _, message in shown)
    assert any("dropped the groups" in message for _, message in shown)
    log_records.clear()
    verbosity.set_verbosity_error()
    assert load_both() == []
    verbosity.set_verbosity_info()
    assert logging.getLogger("clay_hf.models.clay.modeling_clay").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def no_logging_configured():
    """A Python session that configured no logging: the root logger without handlers (pytest's set aside)."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    for handler in handlers:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.addHandler(handler)


def test_records_reach_stderr_as_transformers_own_at_its_verbosity(segmenter_dir, tmp_path, verbosity, capfd):
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config()).save_pretrained(tmp_path / "mim")
    capfd.readouterr()
    with no_logging_configured():
        verbosity.set_verbosity_info()
        ClayForSemanticSegmentation.from_pretrained(segmenter_dir)
        err = capfd.readouterr().err
        assert err.count(f"[clay_hf] ClayForSemanticSegmentation from {segmenter_dir}: ") == 1, err  # INFO summary
        verbosity.set_verbosity_warning()
        ClayModel.from_pretrained(tmp_path / "mim", bands=["red", "green", "blue"])
        assert capfd.readouterr().err.count("dropped the groups") == 1  # shown once
        verbosity.set_verbosity_error()
        ClayModel.from_pretrained(tmp_path / "mim", bands=["red", "green", "blue"])
        assert "dropped the groups" not in capfd.readouterr().err


def test_transformers_verbosity_env_silences_band_warnings(tmp_path):
    torch.manual_seed(0)
    ClayForMaskedImageModeling(small_config()).save_pretrained(tmp_path / "mim")
    program = (
        f"import clay_hf\nclay_hf.ClayModel.from_pretrained({str(tmp_path / 'mim')!r}, bands=['red', 'green', 'blue'])"
    )
    runs = {  # a fresh process each (transformers reads the variable once), both started at once
        verbosity: subprocess.Popen(
            [sys.executable, "-c", program],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": verbosity},
        )
        for verbosity in ("warning", "error")
    }
    for verbosity, shown in (("warning", True), ("error", False)):
        _, stderr = runs[verbosity].communicate(timeout=300)
        assert runs[verbosity].returncode == 0, stderr[-2000:]
        assert ("dropped the groups" in stderr) is shown, stderr[-2000:]


def test_progress_bars_follow_transformers_switch(capsys, verbosity):
    batches = [{"source_url": ["a", "b"], "bad_chips": 0}] * 3
    verbosity.disable_progress_bar()
    try:
        assert list(_progress(iter(batches), total=6, enabled=True)) == batches
        assert capsys.readouterr().err == ""
    finally:
        verbosity.enable_progress_bar()
    list(_progress(iter(batches), total=6, enabled=True))
    assert "embedding" in capsys.readouterr().err


def test_the_pretraining_progress_bar_follows_transformers_switch(tmp_path, capsys, verbosity):
    write_synthetic_chips(tmp_path / "chips", 2, size=32, seed=1)
    small_config().to_json_file(tmp_path / "config.json")

    def pretrain_one_step(output: str) -> str:
        args = ["--train_dir", str(tmp_path / "chips"), "--validation_dir", str(tmp_path / "chips"), "--output_dir"]
        args += [str(tmp_path / output), "--config_name", str(tmp_path / "config.json"), "--max_train_steps", "1"]
        assert pretrain_in_process([*args, "--per_device_train_batch_size", "2", "--report_to", "none"]) == 0
        return capsys.readouterr().err

    verbosity.disable_progress_bar()
    try:
        assert "pretraining" not in pretrain_one_step("quiet")
    finally:
        verbosity.enable_progress_bar()
    assert "pretraining: 100%" in pretrain_one_step("shown")


# --- gradient checkpointing --------------------------------------------------------------------------------------


def test_pretraining_enables_gradient_checkpointing_without_a_deprecation_warning():
    args = ModelArguments(gradient_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(args, small_config())
    assert model.clay.encoder.layers[0].gradient_checkpointing
