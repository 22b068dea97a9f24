"""Every console script keeps the one error contract: a missing input is one `error: …` line naming it, status 1."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

from clay_hf.commands._common import CommandParser
from clay_hf.models.clay.image_processing_clay import parse_fill_value

REPO = Path(__file__).resolve().parents[1]
MISSING = "no-such-input"

#: Each console script with arguments whose input (or output place) does not exist (every missing path holds
#: MISSING, whichever the command checks first); every other argument is valid.
MISSING_INPUT_ARGUMENTS = {
    "clay-convert-checkpoint": ["--checkpoint", f"{MISSING}/clay.ckpt", "--output_dir", "{tmp}/converted"],
    "clay-make-chips": [f"{MISSING}/scene.tif", "--output_dir", "{tmp}/chips"],
    "clay-pack-webdataset": [MISSING, "--output_dir", "{tmp}/tars"],
    "clay-pack-shards": [MISSING, "--output_dir", "{tmp}/shards"],
    "clay-pretrain": ["--train_dir", MISSING, "--output_dir", "{tmp}/run", "--config_name", "tiny"],
    "clay-embed": ["--model_name_or_path", f"{MISSING}/", "--data_dir", "{tmp}", "--output", "{tmp}/e.parquet"],
    "clay-reconstruct": ["--model_name_or_path", f"{MISSING}/", "--data_dir", "{tmp}", "--output_dir", "{tmp}/r"],
    "clay-evaluate": ["--model_name_or_path", f"{MISSING}/", "--data_dir", "{tmp}", "--output_dir", "{tmp}/ev"],
    "clay-linear-probe": ["--model_name_or_path", f"{MISSING}/", "--data_dir", f"{MISSING}/chips"],
    "clay-publish": ["--model_dir", MISSING, "--dry_run"],
    # The demo's input is the built-in sample data: its output place is what a user can get wrong.
    "clay-demo": ["--output_dir", "/proc/clay-demo-output"],
    "clay-search": ["query", "--index_dir", MISSING, "--point", "0", "0", "--output", "{tmp}/hits.parquet"],
    "clay-export-onnx": ["--model_name_or_path", f"{MISSING}/", "--output", "{tmp}/encoder.onnx"],
    "clay-finetune": [
        "--task",
        "semantic-segmentation",
        "--model_name_or_path",
        f"{MISSING}/",
        "--train_dir",
        f"{MISSING}/chips",
        "--num_labels",
        "2",
        "--output_dir",
        "{tmp}/finetuned",
    ],
    "clay-predict": ["--model_name_or_path", f"{MISSING}/", "--data_dir", "{tmp}", "--output_dir", "{tmp}/maps"],
}

#: Runs each entry point in one process (one import of torch for all), capturing its stderr and status.
DRIVER = """
import contextlib, importlib, io, json, sys
results = {}
for name, (target, argv) in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = getattr(importlib.import_module(module), function)(argv)
        except SystemExit as exit:
            status = exit.code
        except BaseException as error:
            status = f"raised {type(error).__name__}: {error}"
    results[name] = {"status": status, "stderr": stderr.getvalue()}
print(json.dumps(results))
"""


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_has_a_missing_input_case():
    assert set(console_scripts()) == set(MISSING_INPUT_ARGUMENTS)


def test_a_missing_input_is_one_error_line_and_status_1(tmp_path):
    cases = {
        name: (target, [argument.replace("{tmp}", str(tmp_path)) for argument in MISSING_INPUT_ARGUMENTS[name]])
        for name, target in console_scripts().items()
    }
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.splitlines()[-1])
    failures = {}
    for name, result in results.items():
        errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
        named = "clay-demo-output" if name == "clay-demo" else MISSING
        if result["status"] != 1 or len(errors) != 1 or "Traceback" in result["stderr"] or named not in errors[0]:
            failures[name] = result
    assert not failures, json.dumps(failures, indent=1)


# --- the parser of the commands' argument dataclasses --------------------------------------------------------------------


@dataclass(kw_only=True)
class _Example:
    source: str = field(metadata={"positional": True, "help": "the input"})
    output_dir: str = field(metadata={"help": "where it goes"})
    point: list[float] | None = field(default=None, metadata={"nargs": 2, "metavar": ("LON", "LAT")})
    band: list[str] = field(default_factory=list, metadata={"action": "append"})
    fill_value: float | str | None = field(default=None, metadata={"type": parse_fill_value})
    verbose: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    resume: bool = False
    overwrite: bool = field(default=False, metadata={"action": "store_true"})


def test_command_parser_keeps_positionals_value_counts_repeats_types_and_yes_no_words(capsys):
    parser = CommandParser(_Example, description="an example")
    (args,) = parser.parse(["in.tif", "--output_dir", "out", "--point", "1", "2", "--band", "B02", "--band", "B03",
                            "--fill_value", "mean", "--verbose", "false", "--resume"])  # fmt: skip
    assert (args.source, args.output_dir, args.point, args.band) == ("in.tif", "out", [1.0, 2.0], ["B02", "B03"])
    assert (args.fill_value, args.verbose, args.resume) == ("mean", False, True)
    (defaults,) = parser.parse(["in.tif", "--output-dir", "out"])
    assert not defaults.overwrite
    (switched,) = parser.parse(["--overwrite", "in.tif", "--output_dir", "out"])  # a switch takes no value
    assert switched.overwrite and switched.source == "in.tif"
    assert (defaults.point, defaults.band, defaults.fill_value, defaults.verbose) == (None, [], None, None)
    for wrong in (["in.tif"], ["in.tif", "--output_dir", "o", "--point", "1"], ["in.tif", "--output_dir", "o", "-x"]):
        with pytest.raises(SystemExit) as exit_status:
            parser.parse(wrong)
        assert exit_status.value.code == 2, wrong
    assert "where it goes" in parser.format_help() and "(default:" not in parser.format_help()
    capsys.readouterr()
