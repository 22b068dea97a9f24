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
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TUTORIALS = REPO / "docs" / "tutorials"
EXECUTED = REPO / "build" / "notebooks"
KEY = "clay_hf_docs_key"
#: A tutorial runs on a tiny model and a few chips; this bounds one cell.
CELL_TIMEOUT_S = 600


def notebook_key(path: Path) -> str:
    """sha256 of the notebook's text and of every Python file of the package (so a code change re-executes)."""
    digest = hashlib.sha256(path.read_bytes())
    for source in sorted((REPO / "src" / "clay_hf").rglob("*.py")):
        digest.update(str(source.relative_to(REPO)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


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
            notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": folder}}
        )
        client.execute(env={**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
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


def on_files(files, config):
    """MkDocs hook: render the executed copies of docs/tutorials/*.ipynb instead of the output-less sources."""
    for file in files:
        if file.src_uri.startswith("tutorials/") and file.src_uri.endswith(".ipynb"):
            file.abs_src_path = str(executed_notebook(Path(config["docs_dir"]) / file.src_uri))
    return files


on_files.mkdocs_priority = 100  # before mkdocs-jupyter's own on_files (MkDocs' event_priority, without importing it)
