"""A normal (non-editable) install works: the wheel carries the model card, the licence and the metric, and every
console script runs from it, outside the checkout. Built and installed offline (no build isolation, no index)."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_pretraining_model

from clay_hf.chipping import write_synthetic_chips

REPO = Path(__file__).resolve().parents[1]

HELP_ALL = """
import contextlib, io, importlib, json, sys
import clay_hf, clay_hf.hub.publish, clay_hf.metrics
target = sys.argv[1]
results = {"clay_hf": clay_hf.__file__, "card": str(clay_hf.hub.publish.CARD_DIR / "template.md"),
           "licence": str(clay_hf.hub.publish.CARD_DIR / "LICENSE.md"),
           "metric": clay_hf.metrics.MASKED_RECONSTRUCTION_PATH + "/masked_reconstruction.py", "help": {}}
for name, target_ref in json.loads(sys.argv[2]).items():
    module, function = target_ref.split(":")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            getattr(importlib.import_module(module), function)(["--help"])
            status = "returned"
        except SystemExit as exit:
            status = exit.code
    results["help"][name] = [status, out.getvalue()[:200]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the project's files, installed with `pip --target` into a folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("clay_hf-*.whl")
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    return target


def environment(target: Path) -> dict[str, str]:
    """Only the installed copy on the path: the checkout's src is not importable (and the cwd is elsewhere)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}


def console_scripts(target: Path) -> dict[str, str]:
    (entry_points,) = target.glob("clay_hf-*.dist-info/entry_points.txt")
    parser = configparser.ConfigParser()
    parser.read(entry_points)
    return dict(parser["console_scripts"])


def run(target: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=environment(target), cwd=cwd)


def test_every_console_script_runs_from_the_wheel(installed, tmp_path):
    scripts = console_scripts(installed)
    assert {"clay-publish", "clay-embed", "clay-evaluate", "clay-convert-checkpoint", "clay-demo"} <= set(scripts)
    for name in scripts:
        assert (installed / "bin" / name).is_file(), name
    done = run(installed, tmp_path, sys.executable, "-c", HELP_ALL, str(installed), json.dumps(scripts))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["clay_hf"]).is_relative_to(installed), result["clay_hf"]  # the wheel, not the checkout
    for key in ("card", "licence", "metric"):
        assert Path(result[key]).is_relative_to(installed) and Path(result[key]).is_file(), result[key]
    for name, (status, text) in result["help"].items():
        assert status == 0 and text.startswith("usage:"), (name, status, text)


def test_wheel_publishes_a_dry_run_and_embeds_chips(installed, tmp_path):
    model = tmp_path / "model"
    save_pretraining_model(model)
    staging = tmp_path / "staging"
    published = run(installed, tmp_path, str(installed / "bin" / "clay-publish"), "--model_dir", str(model),
                    "--repo_id", "made-with-clay/Clay", "--staging_dir", str(staging), "--dry_run")  # fmt: skip
    assert published.returncode == 0, published.stderr[-3000:]
    assert (staging / "LICENSE.md").read_text() == (REPO / "src/clay_hf/hub/templates/LICENSE.md").read_text()
    card = (staging / "README.md").read_text()
    assert "clay-embed --model_name_or_path made-with-clay/Clay" in card and "python scripts/" not in card

    write_synthetic_chips(tmp_path / "chips", 2, size=32, seed=1)
    output = tmp_path / "embeddings.parquet"
    embedded = run(installed, tmp_path, str(installed / "bin" / "clay-embed"), "--model_name_or_path", str(model),
                   "--data_dir", str(tmp_path / "chips"), "--output", str(output), "--device", "cpu")  # fmt: skip
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert "2 chips embedded" in embedded.stdout and output.is_file()
