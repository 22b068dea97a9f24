"""The tutorials (docs/tutorials/*.ipynb) run from top to bottom on the real sample scene and end in a picture.

Each notebook is executed by nbclient in a fresh kernel through docs/hooks/notebooks.py, the code the docs build
uses, and the executed copy is kept in build/notebooks, where the docs build that follows in `make test` finds it
(so each tutorial runs once). The tutorials are skipped when the sample Sentinel-2 scene cannot be fetched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
import yaml

from clay_hf.chipping import SampleDataUnavailable, sentinel2_sample_scene

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.ipynb"))


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_notebooks_hook", REPO / "docs" / "hooks" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scene():
    try:
        return sentinel2_sample_scene()
    except SampleDataUnavailable as error:
        pytest.skip(f"the sample Sentinel-2 scene is not available: {error}")


def test_the_four_tutorials_are_there_and_in_the_site():
    assert [path.stem for path in TUTORIALS] == [
        "embedding_map",
        "reconstructions",
        "segmentation",
        "similarity_search",
    ]

    def pages(nav) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        entries = nav if isinstance(nav, list) else list(nav.values())
        return [page for entry in entries for page in pages(entry)]

    listed = pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    assert {f"tutorials/{path.name}" for path in TUTORIALS} <= set(listed)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_sources_hold_no_outputs(path):
    """The committed notebooks are sources: outputs come from executing them, never from a stale run."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


#: Executes one tutorial through the hook, in a process of its own: its kernel's output stays in that process's
#: pipes (a kernel started beside the tests would write to whichever test's capture, or the terminal, is current).
EXECUTE = """
import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("docs_notebooks_hook", sys.argv[1])
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)
hook.executed_notebook(pathlib.Path(sys.argv[2]), force=True)
"""


def execute(path: Path) -> subprocess.CompletedProcess:
    hook = REPO / "docs" / "hooks" / "notebooks.py"
    return subprocess.run([sys.executable, "-c", EXECUTE, str(hook), str(path)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def executions(scene, request):
    """The tutorials this session tests, executed side by side (a kernel is mostly one busy process: on two cores
    two run at once), one per core at most; each test waits for its own tutorial and gets its own error."""
    selected = {
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_tutorial_runs_and_ends_in_a_picture"
    }
    with ThreadPoolExecutor(max_workers=max(1, min(len(selected), os.cpu_count() or 1))) as pool:
        yield {path: pool.submit(execute, path) for path in TUTORIALS if path in selected}


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_and_ends_in_a_picture(path, executions):
    run = executions[path].result()
    assert run.returncode == 0, f"{path.name} failed:\n{run.stderr[-5000:]}"
    executed = nbformat.read(load_hook().EXECUTED / path.name, as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "every cell ran"
    last_outputs = code[-1].outputs
    assert any("image/png" in output.get("data", {}) for output in last_outputs), f"{path.name} ends in no picture"
    # the page shows what the kernel printed: no Python warning may appear there
    printed = "".join(output.get("text", "") for cell in code for output in cell.outputs)
    warnings = re.findall(r"^.*\b\w*Warning: .*$", printed, flags=re.MULTILINE)
    assert not warnings, f"{path.name} prints warnings: {warnings}"


def test_an_unexecuted_tutorial_says_so(tmp_path, monkeypatch):
    """Offline (no sample scene) the site shows each tutorial's code under a note that says why it has no output."""
    hook = load_hook()
    monkeypatch.setattr(hook, "EXECUTED", tmp_path)
    copy = nbformat.read(hook.unexecuted_notebook(TUTORIALS[0], "the sample scene could not be fetched"), as_version=4)
    assert copy.cells[1].cell_type == "markdown" and "Not executed in this build" in copy.cells[1].source
    assert "the sample scene could not be fetched" in copy.cells[1].source
    assert len(copy.cells) == len(nbformat.read(TUTORIALS[0], as_version=4).cells) + 1


def test_an_executed_copy_is_reused_only_while_the_notebook_is_unchanged(tmp_path, monkeypatch):
    hook = load_hook()
    monkeypatch.setattr(hook, "EXECUTED", tmp_path)
    ran = []
    monkeypatch.setattr(hook, "execute_notebook", lambda path, output: ran.append(path) or output.write_text(
        json.dumps({"metadata": {hook.KEY: hook.notebook_key(path)}})))  # fmt: skip
    source = tmp_path / "source" / "tutorial.ipynb"
    source.parent.mkdir()
    source.write_text(TUTORIALS[0].read_text())
    hook.executed_notebook(source)
    hook.executed_notebook(source)
    assert len(ran) == 1  # the second call reuses the copy
    source.write_text(TUTORIALS[0].read_text().replace("Embedding map", "Embedding maps"))
    hook.executed_notebook(source)
    assert len(ran) == 2  # a changed notebook runs again
