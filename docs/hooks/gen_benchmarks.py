"""reference/benchmarks.md, generated at build time (by gen_pages.py) from the files in benchmarks/results.

Every result is shown as its benchmark wrote it: the text report (`NAME.txt`) verbatim when there is one, else the
rows of the JSON record (`NAME.json`) as a table, else the JSON itself. Nothing is typed in by hand, so the page
cannot disagree with the files; the discussion of the figures lives in the guides and design notes that cite them.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PAGE = "reference/benchmarks.md"
#: File-name prefix → the benchmark script that writes such files.
SCRIPTS = {
    "bench_model": "bench_model.py",
    "bench_key_rows": "bench_model.py",
    "bench_train_compare": "bench_train_compare.py",
    "bench_train": "bench_train.py",
    "bench_finetune": "bench_finetune.py",
    "bench_onnx": "bench_onnx.py",
    "bench_search": "bench_search.py",
    "loader": "bench_loader.py",
    "finetune_pretrained_vs_scratch": "finetune_pretrained_vs_scratch.py",
}


def script_for(stem: str) -> str | None:
    for prefix in sorted(SCRIPTS, key=len, reverse=True):
        if stem.startswith(prefix):
            return SCRIPTS[prefix]
    return None


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def rows_table(rows: list[dict]) -> list[str]:
    """A Markdown table of the scalar fields of a list of flat records."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key, value in row.items() if key not in columns and not isinstance(value, dict | list)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return lines


def section(stem: str) -> list[str]:
    text, record = RESULTS / f"{stem}.txt", RESULTS / f"{stem}.json"
    lines = ["", f"## {stem}", ""]
    script = script_for(stem)
    files = ", ".join(f"`benchmarks/results/{path.name}`" for path in (text, record) if path.is_file())
    lines.append(f"Written by `python benchmarks/{script}`: {files}." if script else f"Files: {files}.")
    lines.append("")
    if text.is_file():
        return [*lines, "```text", text.read_text().rstrip(), "```"]
    data = json.loads(record.read_text())
    rows = next((data[key] for key in ("rows", "results") if isinstance(data, dict) and key in data), None)
    if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
        lines += rows_table(rows)
        lines.append("")
    return [
        *lines,
        '??? note "The whole record"',
        "    ```json",
        *("    " + line for line in json.dumps(data, indent=2).splitlines()),
        "    ```",
    ]


def page() -> str:
    stems = sorted({path.stem for path in RESULTS.iterdir() if path.suffix in (".txt", ".json")})
    lines = [
        "# Benchmark results",
        "",
        "The measurements kept in `benchmarks/results/`, one section per result, generated when the documentation is",
        "built. They were taken on the machines the files name (mostly a shared 2-core AMD EPYC VM without a GPU); read",
        "[Speed and memory](../design/speed_and_memory.md) for what they mean and how each was measured.",
        "",
        *(f"- [{stem}](#{stem.lower()})" for stem in stems),
    ]
    for stem in stems:
        lines += section(stem)
    return "\n".join(lines) + "\n"
