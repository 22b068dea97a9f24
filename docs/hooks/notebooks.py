"""The tutorials: each notebook of docs/tutorials is executed once per change and rendered with its outputs.

The notebooks are committed without outputs. `executed_notebook(path)` runs one with nbclient in a fresh kernel, in
a temporary working folder, and keeps the executed copy under build/notebooks/, keyed by the notebook's text and
every source file of the package: while neither changes, the copy is reused. The test suite
(tests/test_notebooks.py) calls it, so `make test` executes each tutorial once and the docs build that follows
reuses the copies; `make docs` alone executes whatever is missing or stale. As an MkDocs hook, `on_files` points
mkdocs-jupyter at the executed copies, so the pictures the notebooks draw appear in the site.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TUTORIALS = REPO / "docs" / "tutorials"
EXECUTED = REPO / "build" / "notebooks"
KEY = "clay_hf_docs_key"
#: Tutorial name → whether this build renders it executed (set by `on_files`, checked by `on_post_build`).
RENDERED: dict[str, bool] = {}
#: A tutorial runs on a tiny model and a few chips; this bounds one cell.
CELL_TIMEOUT_S = 600


def notebook_key(path: Path) -> str:
    """sha256 of the notebook's text and of every Python file of the package (so a code change re-executes)."""
    digest = hashlib.sha256(path.read_bytes())
    for source in sorted((REPO / "src" / "clay_hf").rglob("*.py")):
        digest.update(str(source.relative_to(REPO)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def kernel_environment() -> dict[str, str]:
    """The kernel's environment: this process's, without a matplotlib backend (the kernel's own inline backend
    draws the figures into the notebook), without progress bars (noise on a page), and without tqdm's warning that
    ipywidgets is not installed (it falls back to text bars, which are off anyway)."""
    environment = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    environment["TQDM_DISABLE"] = "1"
    warnings = [environment.get("PYTHONWARNINGS", ""), "ignore:IProgress not found"]
    environment["PYTHONWARNINGS"] = ",".join(filter(None, warnings))
    return environment


def execute_notebook(path: Path, output: Path) -> float:
    """Execute `path` in a new kernel inside a temporary folder and write the result to `output`; seconds taken.

    A cell that raises stops the run with nbclient's `CellExecutionError`, which names the cell and the error.
    """
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"clay-tutorial-{path.stem}-") as folder:
        client = nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": folder}},
            # The kernel application's own log (ipykernel ≥ 7 warns at every start that local TCP is unencrypted):
            # errors only. What the cells print, warnings included, is in the outputs, which the tests check.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        client.execute(env=kernel_environment())
    seconds = time.perf_counter() - start
    notebook.metadata[KEY] = notebook_key(path)
    notebook.metadata["clay_hf_docs_seconds"] = round(seconds, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".ipynb.partial")
    nbformat.write(notebook, partial)
    partial.replace(output)  # a copy is under its name only once complete
    return seconds


def executed_notebook(path: Path, force: bool = False) -> Path:
    """The executed copy of tutorial `path`, executing it when there is none for its current key (or `force`)."""
    output = EXECUTED / path.name
    if not force and output.is_file():
        try:
            if json.loads(output.read_text())["metadata"].get(KEY) == notebook_key(path):
                return output
        except (ValueError, KeyError):
            pass  # an unreadable copy is executed again
    execute_notebook(path, output)
    return output


def unexecuted_notebook(path: Path, reason: str) -> Path:
    """A copy of tutorial `path` that says at its top why it was not executed in this build."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    note = f"**Not executed in this build**: {reason}. This page shows the code without its output."
    notebook.cells.insert(1, nbformat.v4.new_markdown_cell(note))
    output = EXECUTED / f"{path.stem}.unexecuted.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, output)
    return output


def sample_scene_problem() -> str | None:
    """Why the tutorials cannot run here (the sample scene cannot be fetched), or None."""
    from clay_hf.chipping import SampleDataUnavailable, sentinel2_sample_scene

    try:
        sentinel2_sample_scene()
    except SampleDataUnavailable as error:
        return f"the sample Sentinel-2 scene could not be fetched ({error})"
    return None


def on_files(files, config):
    """MkDocs hook: render the executed copies of docs/tutorials/*.ipynb instead of the output-less sources.

    Where the sample scene cannot be fetched (offline), as the test suite skips the tutorials, the site shows them
    unexecuted, each with a note at its top that says so, rather than failing the build."""
    tutorials = [file for file in files if file.src_uri.startswith("tutorials/") and file.src_uri.endswith(".ipynb")]
    problem = sample_scene_problem() if tutorials else None
    RENDERED.clear()
    for file in tutorials:
        path = Path(config["docs_dir"]) / file.src_uri
        file.abs_src_path = str(unexecuted_notebook(path, problem) if problem else executed_notebook(path))
        RENDERED[path.stem] = problem is None
    return files


# Last among the plugins' on_files: set earlier, the executed path did not survive theirs (found by a build whose
# tutorial pages showed no outputs, which on_post_build now refuses).
on_files.mkdocs_priority = -100  # (MkDocs' event_priority, without importing MkDocs here)


def on_post_build(config):
    """MkDocs hook: fail the build unless every executed tutorial became a page that shows its pictures."""
    from mkdocs.exceptions import PluginError

    site = Path(config["site_dir"])
    for stem, executed in RENDERED.items():
        page = site / "tutorials" / stem / "index.html"
        if not page.is_file():
            raise PluginError(f"tutorial {stem}.ipynb was not rendered as a page ({page} is missing)")
        if executed and not re.search(r'<img [^>]*src="data:image/png;base64,', page.read_text()):  # an output
            raise PluginError(f"the page of tutorial {stem}.ipynb shows no picture")
