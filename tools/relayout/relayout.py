#!/usr/bin/env python3
"""Re-lay out the clay_hf package (issue 24, item 1): one automated, re-runnable transformation of a checkout of main.

    python relayout.py CHECKOUT [--ruff PATH_TO_RUFF] [--python PATH_TO_PYTHON]

It moves modules into the layered layout (utils < models < data < chipping < applications < hub < commands), splits
`cli.py` and the console functions of library modules into `commands/` (one module per console script, `main(argv)
-> int`), moves the GeoParquet helpers of `embeddings.py` into `inference/geoparquet.py`, splits `benchmarking.py`
into hardware/timing helpers (`utils/benchmarking.py`) and model throughput (`models/benchmarking.py`), moves the
chip-making modules of `data/` into `chipping/` (with their re-exports), and rewrites every import (absolute and
relative, module- and function-level) and every dotted path / file path in the repository's text files. Then it
derives the Hub remote-code list from `models/clay/`, regenerates the thin `scripts/*.py`, copies in
`tests/test_layout.py` (the layering test, beside this file), runs ruff (fix + format) and imports every module.

Everything is computed from the checkout's content (ast), never from line numbers; a module it cannot place is
reported and left where it is. It refuses to run on a checkout that is already laid out.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

PKG = "clay_hf"
HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------------------------------
# The plan (names relative to the package)
# ---------------------------------------------------------------------------------------------------------------------

#: Top-level modules with a fixed place. `None`: dissolved by the script (cli.py); same name: stays.
TOP_LEVEL = {
    "geometry": "utils.geometry",
    "model_source": "utils.model_source",
    "memory": "utils.memory",
    "benchmarking": "utils.benchmarking",  # its model-bound half goes to models.benchmarking (split below)
    "_logging": "utils.logging",
    "embeddings": "inference.embeddings",
    "ranks": "inference.ranks",
    "evaluation": "evaluation.reconstruction",
    "visualize": "evaluation.visualize",
    "probe": "evaluation.probe",
    "hub": "hub.publish",
    "model_cards": "hub.cards",
    "weights_license": "hub.weights_license",  # branch hfeco: the licence of published weights (cards and staging)
    "recompute": "models.clay.recompute",
    "convert_clay_original_checkpoint": "models.clay.convert_clay_original_checkpoint",
    "testing_utils": "testing_utils",
    "cli": None,
}
#: Modules of rooms that move to another room.
ROOM_MOVES = {
    "data.tiling": "chipping.tiling",
    "data.datacube": "chipping.datacube",
    "data.stac": "chipping.stac",
    "data.sample_data": "chipping.sample_data",
}
MODEL_DIR = "models.clay"
CONVERTER = "convert_clay_original_checkpoint"
#: Package data folders that move (relative to src/clay_hf).
DATA_DIRS = {"model_card": "hub/templates"}

NEW_PACKAGES = {
    "models": "The models of clay_hf: `clay/` is Clay v0 as a self-contained transformers model (the Hub remote "
    "code); `benchmarking` measures its throughput.",
    "models.clay": "Clay v0 as a transformers model: configuration, modeling, task heads, masking, loss, recompute, "
    "image processing and pipelines.\n\nThe self-contained unit uploaded to the Hub as remote code: its modules "
    "import only torch, transformers, numpy-level libraries and each other (relative imports), so publishing copies "
    "the folder. `convert_clay_original_checkpoint` (original Lightning checkpoints → this model) is not shipped.",
    "chipping": "Making chips: cutting stacked GeoTIFFs (tiling), stacking band files and STAC items (datacube, "
    "STAC) and the built-in sample scene.",
    "inference": "Running a Clay encoder over chips: embeddings as GeoParquet (`embeddings`), rank sharding "
    "(`ranks`) and the GeoParquet helpers shared with prediction and search (`geoparquet`).",
    "evaluation": "Evaluating Clay: masked reconstruction error (`reconstruction`), reconstruction figures "
    "(`visualize`) and the linear probe (`probe`).",
    "hub": "Publishing to the Hugging Face Hub: staging and upload (`publish`), model cards (`cards`) and their "
    "templates (`templates/`, package data).",
    "commands": "The console scripts: one module per `clay-*` command, each with `main(argv) -> int` (also "
    "`python -m clay_hf.commands.NAME`). A user error is one `error: …` line and exit status 1 "
    "([`clay_hf.utils.errors.user_errors`]); anything else keeps its traceback.",
}

#: Text files rewritten (dotted paths, file paths); .py files also get their imports rewritten.
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".ini", ".sh", ".ipynb", ".rst", ".json"}
TEXT_NAMES = {"Makefile"}
SKIP_PREFIXES = ("benchmarks/results/",)  # records of past runs: they name what ran then

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    moved: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"WARNING: {text}", flush=True)


REPORT = Report()


# ---------------------------------------------------------------------------------------------------------------------
# Source helpers (ast positions are UTF-8 byte offsets: edits work on bytes)
# ---------------------------------------------------------------------------------------------------------------------


class Source:
    """A module's text and its top-level statements with their byte spans (whole lines, with decorators and the
    comment lines right above)."""

    def __init__(self, text: str, module: str | None = None):
        self.text = text
        self.module = module
        self.data = text.encode()
        self.tree = ast.parse(self.data)
        self.line_starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.lines = self.data.splitlines(keepends=True)

    def offset(self, lineno: int, col: int) -> int:
        return self.line_starts[lineno - 1] + col

    def node_span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def stmt_span(self, node: ast.stmt) -> tuple[int, int]:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        while first > 1 and self.lines[first - 2].lstrip().startswith(b"#"):
            first -= 1
        return self.line_starts[first - 1], self.line_starts[min(node.end_lineno, len(self.lines))]

    def segment(self, start: int, end: int) -> str:
        return self.data[start:end].decode()


def wrap_doc(doc: str, width: int = 116) -> str:
    """A docstring's text wrapped as the house style does (120 columns with the quotes)."""
    import textwrap

    paragraphs = doc.split("\n\n")
    return "\n\n".join(
        "\n".join(textwrap.wrap(p, width, break_long_words=False, break_on_hyphens=False)) if "\n" not in p else p
        for p in paragraphs
    )


def lower_first(text: str) -> str:
    """`Reading chips` → `reading chips`; `Clay v0 …` stays."""
    match = re.match(r"[A-Za-z][a-z-]*\b", text or "")
    if match and match.group(0) != "Clay" and (len(match.group(0)) > 1 or text[1:2] == " "):
        return text[:1].lower() + text[1:]
    return text


def apply_edits(data: bytes, edits: list[tuple[int, int, str]]) -> str:
    """Replace byte spans (non-overlapping) with texts."""
    out, last = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < last:
            raise ValueError(f"overlapping edits at {start}")
        out.append(data[last:start])
        out.append(new.encode())
        last = end
    out.append(data[last:])
    return b"".join(out).decode()


def defines(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def references(node: ast.AST) -> set[str]:
    """Global names a statement uses: for a function, not those it binds itself (arguments, assignments, imports)."""
    used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        for inner in node.body:
            for n in ast.walk(inner):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    local.add(n.id)
                elif isinstance(n, (ast.Import, ast.ImportFrom)):
                    local |= {(a.asname or a.name).split(".")[0] for a in n.names}
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    local.add(n.name)
        globals_ = {n for inner in node.body for g in ast.walk(inner) if isinstance(g, ast.Global) for n in g.names}
        outer = set()
        for part in [*node.decorator_list, node.args, node.returns]:
            if part is not None:
                outer |= {n.id for n in ast.walk(part) if isinstance(n, ast.Name)}
        used = (used - (local - globals_)) | outer
    return used


def is_import(node: ast.stmt) -> bool:
    return isinstance(node, (ast.Import, ast.ImportFrom))


def is_dunder_all(node: ast.stmt) -> bool:
    return "__all__" in defines(node)


def is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def is_logger(node: ast.stmt) -> bool:
    """`logger = logging.getLogger(__name__)` and the like: copied, never imported from another module."""
    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
        return False
    func = node.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in {"getLogger", "get_logger"}


def top_defs(src: Source) -> dict[str, ast.stmt]:
    """Top-level names defined by def/class/assignment (not imports, not __all__)."""
    found = {}
    for node in src.tree.body:
        if is_import(node) or is_dunder_all(node):
            continue
        for name in defines(node):
            found[name] = node
    return found


def docstring_node(src: Source) -> ast.stmt | None:
    body = src.tree.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def all_names(src: Source) -> list[str] | None:
    for node in src.tree.body:
        if is_dunder_all(node) and isinstance(getattr(node, "value", None), (ast.List, ast.Tuple)):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return None


def set_all(text: str, names: list[str] | None, remove: set[str] = frozenset()) -> str:
    """Rewrite `__all__` without `remove` (or as `names`)."""
    src = Source(text)
    for node in src.tree.body:
        if is_dunder_all(node) and isinstance(getattr(node, "value", None), (ast.List, ast.Tuple)):
            old = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            new = names if names is not None else [n for n in old if n not in remove]
            if new == old:
                return text
            start, end = src.node_span(node.value)
            return apply_edits(src.data, [(start, end, "[" + ", ".join(repr(n).replace("'", '"') for n in new) + "]")])
    return text


def rename_names(text: str, mapping: dict[str, str]) -> str:
    """Rename Name nodes and def/class names (simultaneously) by ast positions, and `name` in backticks."""
    if not mapping:
        return text
    text = re.sub(r"`(\w+)`", lambda m: f"`{mapping.get(m.group(1), m.group(1))}`", text)
    src = Source(text)
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Name) and node.id in mapping:
            start = src.offset(node.lineno, node.col_offset)
            edits.append((start, start + len(node.id.encode()), mapping[node.id]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in mapping:
            line_start = src.offset(node.lineno, 0)
            line = src.lines[node.lineno - 1].decode()
            match = re.search(rf"\b(def|class)\s+({re.escape(node.name)})\b", line[node.col_offset :])
            if match:
                start = line_start + len(line[: node.col_offset + match.start(2)].encode())
                edits.append((start, start + len(node.name.encode()), mapping[node.name]))
    return apply_edits(src.data, edits)


def module_name(path: Path, src_root: Path) -> str:
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str, is_init: bool) -> str:
    return module if is_init else module.rpartition(".")[0]


def resolve_relative(module: str | None, level: int, package: str) -> str:
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


ABSOLUTE_MARK = "  # relayout: keep absolute"
_NAMES = rf"(?:\([^)]*\)|{IDENT}(?:[ \t]+as[ \t]+{IDENT})?(?:[ \t]*,[ \t]*{IDENT}(?:[ \t]+as[ \t]+{IDENT})?)*)"
STATEMENT_OR_DOTTED = re.compile(
    rf"(?P<imp>\bfrom[ \t]+{PKG}(?:\.{IDENT})*[ \t]+import[ \t]+{_NAMES})|(?<![\w.]){PKG}(?:\.{IDENT})+(?::{IDENT})?"
)
IMPORT_HEAD = re.compile(rb"^from\s+(\.*)\s*([\w.]*)\s+import\b")


# ---------------------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------------------


class Relayout:
    def __init__(self, root: Path, ruff: str, python: str):
        self.root = root
        self.src_root = root / "src"
        self.pkg_dir = self.src_root / PKG
        self.ruff = ruff
        self.python = python
        self.module_map: dict[str, str] = {}  # old absolute module → new absolute module
        self.symbol_map: dict[tuple[str, str], tuple[str, str]] = {}  # (old module, name) → (new module, name)
        self.scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("scripts", {})
        self.new_files: dict[Path, str] = {}  # generated modules (written at their new place)
        self.removed: set[Path] = set()

    # -- helpers ----------------------------------------------------------------------------------------------------

    def p(self, name: str) -> str:
        return f"{PKG}.{name}" if name else PKG

    def path_of(self, module: str) -> Path:
        rel = module.split(".")[1:]
        as_file = self.src_root.joinpath(PKG, *rel).with_suffix(".py") if rel else None
        if as_file and as_file.is_file():
            return as_file
        return self.src_root.joinpath(PKG, *rel, "__init__.py")

    def new_path(self, module: str) -> Path:
        return self.src_root.joinpath(*module.split(".")).with_suffix(".py")

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(self.root), *args], check=check, capture_output=True, text=True)

    def package_files(self) -> list[Path]:
        return sorted(p for p in self.pkg_dir.rglob("*.py") if "__pycache__" not in p.parts)

    def tracked_text_files(self) -> list[Path]:
        listed = self.git("ls-files", "--cached", "--others", "--exclude-standard").stdout.splitlines()
        files = []
        for rel in listed:
            if rel.startswith(SKIP_PREFIXES):
                continue
            path = self.root / rel
            if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
                files.append(path)
        return files

    def script_name_for(self, target: str) -> str | None:
        for name, value in self.scripts.items():
            if value.strip() == target:
                return name
        return None

    @staticmethod
    def command_name(script: str) -> str:
        return script.removeprefix("clay-").replace("-", "_")

    # -- 0. preflight -----------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        if not self.pkg_dir.is_dir():
            sys.exit(f"error: {self.pkg_dir} is not there: give the root of a clay_hf checkout")
        if any(any((self.pkg_dir / room).rglob("*.py")) for room in ("commands", "models")):
            sys.exit(f"error: {self.root} is already laid out (src/clay_hf/commands or models exists); nothing done")
        if not (self.pkg_dir / "cli.py").is_file():
            sys.exit(f"error: {self.pkg_dir / 'cli.py'} is missing: not the layout this script expects")
        status = self.git("status", "--porcelain").stdout.strip()
        if status:
            REPORT.warn(f"the checkout has uncommitted changes:\n{status}")

    # -- 1. absolute imports ------------------------------------------------------------------------------------------

    def absolutize(self) -> None:
        """Relative imports → absolute ones (the moves work on absolute names). An import of clay_hf that is absolute
        already (the `evaluate` metric modules, loaded by path; an optional `from clay_hf… import` in remote code)
        is marked, and stays absolute at the end."""
        for path in self.package_files():
            text = path.read_text()
            module = module_name(path, self.src_root)
            package = package_of(module, path.name == "__init__.py")
            src = Source(text)
            edits = []
            for node in ast.walk(src.tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    start, end = src.node_span(node)
                    target = resolve_relative(node.module, node.level, package)
                    match = IMPORT_HEAD.match(src.data[start:end])
                    edits.append((start, start + match.end(), f"from {target} import"))
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG:
                    end = src.line_starts[node.end_lineno] - 1  # the end of its last line
                    edits.append((end, end, ABSOLUTE_MARK))
            if edits:
                path.write_text(apply_edits(src.data, edits))

    # -- 2. plan the module moves ---------------------------------------------------------------------------------------

    def plan_modules(self) -> None:
        for path in sorted(self.pkg_dir.glob("*.py")):
            name = path.stem
            if name == "__init__":
                continue
            if name in TOP_LEVEL:
                target = TOP_LEVEL[name]
            elif "_clay" in name or name.startswith("pipeline"):
                target = f"{MODEL_DIR}.{name}"
            else:
                continue  # placed by the command steps (demo.py), or reported by check_unplaced
            if target is not None and target != name:
                self.module_map[self.p(name)] = self.p(target)
        for old, new in ROOM_MOVES.items():
            if self.path_of(self.p(old)).is_file() and self.path_of(self.p(old)).name != "__init__.py":
                self.module_map[self.p(old)] = self.p(new)
            else:
                REPORT.warn(f"{self.p(old)} is not there: not moved")
        # Modules of rooms named `cli` (search/cli, export/cli) become commands named after their console script.
        for name, target in self.scripts.items():
            module = target.split(":")[0].strip()
            if module.endswith(".cli") and module != self.p("cli"):
                self.module_map[module] = self.p(f"commands.{self.command_name(name)}")
        self.module_map[self.p("cli")] = self.p("commands")  # dotted text that names cli itself

    def check_unplaced(self) -> None:
        for path in sorted(self.pkg_dir.glob("*.py")):
            module = self.p(path.stem)
            if path.stem != "__init__" and path.stem not in TOP_LEVEL and module not in self.module_map:
                REPORT.unplaced.append(f"src/{PKG}/{path.name}: an unknown top-level module, left where it is")

    # -- 3. commands ------------------------------------------------------------------------------------------------------

    def import_entries(self, src: Source) -> list[str]:
        """Top-level import statements of a module as one-line texts (one name per line), deduplicated."""
        lines = []
        for node in src.tree.body:
            if isinstance(node, ast.Import):
                lines += [f"import {a.name}" + (f" as {a.asname}" if a.asname else "") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                lines += [
                    f"from {module} import {a.name}" + (f" as {a.asname}" if a.asname else "") for a in node.names
                ]
            elif isinstance(node, ast.If) and not is_main_guard(node) and all(is_import(n) for n in node.body):
                lines.append(src.segment(*src.stmt_span(node)).rstrip("\n"))  # if TYPE_CHECKING: …
        return lines

    @staticmethod
    def bound_name(line: str) -> str:
        """The local name an import line binds (`import a.b` binds a)."""
        match = re.fullmatch(r"(?:from\s+\S+\s+)?import\s+([\w.]+)(?:\s+as\s+(\w+))?", line.strip())
        if not match:
            return line
        return match.group(2) or (match.group(1) if line.startswith("from") else match.group(1).split(".")[0])

    def assemble(self, doc: str, import_lines: list[str], body: list[str], main_guard: bool) -> str:
        seen, bound, unique = set(), set(), []
        future = [line for line in import_lines if line.startswith("from __future__")]
        for line in future + [line for line in import_lines if not line.startswith("from __future__")]:
            name = self.bound_name(line)
            if line not in seen and (name not in bound or line.startswith("import ")):
                seen.add(line)
                bound.add(name)
                unique.append(line)
        doc = wrap_doc(doc)
        if main_guard and "import sys" not in seen:
            unique.append("import sys")
        parts = [f'"""{doc}"""\n', "\n".join(unique) + "\n"]
        parts += [chunk.strip("\n") + "\n" for chunk in body]
        if main_guard:
            parts.append('if __name__ == "__main__":\n    sys.exit(main())\n')
        return "\n\n".join(parts)

    def closure(self, src: Source, seeds: set[str], pull) -> set[str]:
        defs = top_defs(src)
        moved = set(seeds)
        stack = list(seeds)
        while stack:
            node = defs.get(stack.pop())
            if node is None:
                continue
            for ref in references(node):
                if ref in defs and ref not in moved and not is_logger(defs[ref]) and pull(ref):
                    moved.add(ref)
                    stack.append(ref)
        return moved

    def importers_of(self, module: str) -> set[str]:
        """Names other files import from `module` (absolute imports only: run after absolutize)."""
        names = set()
        for path in [*self.package_files(), *self.root.glob("tests/**/*.py"), *self.root.glob("benchmarks/**/*.py"),
                     *self.root.glob("scripts/**/*.py"), *self.root.glob("docs/**/*.py")]:  # fmt: skip
            if path == self.path_of(module):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == module:
                    names |= {a.name for a in node.names}
        return names

    def extract(
        self,
        module: str,
        seeds: set[str],
        target: str,
        doc: str,
        mode: str,
        renames: dict[str, str] | None = None,
        main_guard: bool = False,
        extra_body: list[str] | None = None,
        extra_imports: list[str] | None = None,
        import_back: bool = False,
    ) -> set[str]:
        """Move the top-level definitions `seeds` of `module` (with what they need: every definition they reference in
        mode "all", only those nothing else uses in mode "exclusive") into a new module `target`."""
        path = self.path_of(module)
        src = Source(path.read_text(), module)
        defs = top_defs(src)
        missing = seeds - set(defs)
        if missing:
            REPORT.warn(f"{module}: no top-level {sorted(missing)} to move to {target}")
            seeds = seeds - missing
        if mode == "all":
            moved = self.closure(src, seeds, lambda name: True)
        elif mode == "exact":
            moved = set(seeds)
        else:
            exported = set(all_names(src) or []) | self.importers_of(module)
            moved = set(seeds)
            while True:
                stay_refs = set()
                for node in src.tree.body:
                    if is_dunder_all(node) or is_import(node):
                        continue
                    if any(n in moved for n in defines(node)):
                        continue
                    stay_refs |= references(node)
                grown = self.closure(
                    src, moved, lambda name, stay=frozenset(stay_refs): name not in stay and name not in exported
                )
                if grown == moved:
                    break
                moved = grown
        moved_nodes = [node for node in src.tree.body if any(n in moved for n in defines(node))]
        moved_refs = set().union(*(references(node) for node in moved_nodes)) if moved_nodes else set()
        body = []
        for node in src.tree.body:  # loggers the moved code uses are copied
            if is_logger(node) and set(defines(node)) & moved_refs:
                body.append(src.segment(*src.stmt_span(node)))
        body += [rename_names(src.segment(*src.stmt_span(node)), renames or {}) for node in moved_nodes]
        body += extra_body or []
        remaining = {
            name for name, node in defs.items() if name not in moved and not is_logger(node) and name in moved_refs
        }
        imports = self.import_entries(src) + (extra_imports or [])
        if remaining:
            imports.append(f"from {module} import {', '.join(sorted(remaining))}")
        text = self.assemble(doc, imports, body, main_guard)
        new_module = target
        self.new_files[self.new_path(new_module)] = text
        # The source loses the moved statements (and imports them back where its remaining code uses them).
        edits = [(*src.stmt_span(node), "") for node in moved_nodes]
        stay_refs = set()
        for node in src.tree.body:
            if node not in moved_nodes and not is_dunder_all(node) and not is_import(node):
                stay_refs |= references(node)
        needed = sorted(moved & stay_refs)
        if needed:
            if import_back:
                last_import = max((n for n in src.tree.body if is_import(n)), key=lambda n: n.end_lineno)
                at = src.stmt_span(last_import)[1]
                edits.append((at, at, f"from {new_module} import {', '.join(needed)}\n"))
            else:
                REPORT.warn(f"{module} still uses {needed}, moved to {new_module}: fix by hand")
        text = apply_edits(src.data, edits)
        text = set_all(text, None, remove=moved)
        path.write_text(text)
        for name in sorted(moved):
            new_name = (renames or {}).get(name, name)
            self.symbol_map[(module, name)] = (new_module, new_name)
            REPORT.symbols.append(f"{module}.{name} → {new_module}.{new_name}")
        return moved

    def split_cli(self) -> None:
        """cli.py → commands/<script>.py (each `*_main` with the helpers only it uses) and commands/_common.py."""
        cli = self.p("cli")
        path = self.path_of(cli)
        src = Source(path.read_text(), cli)
        defs = top_defs(src)
        commands = [name for name, node in defs.items() if name.endswith("_main") and isinstance(node, ast.FunctionDef)]
        closures = {c: self.closure(src, {c}, lambda name: not name.endswith("_main")) for c in commands}
        users: dict[str, set[str]] = {}
        for command, names in closures.items():
            for name in names - {command}:
                users.setdefault(name, set()).add(command)
        for name, node in defs.items():
            if name not in commands and name not in users and not is_logger(node):
                users[name] = set()
                REPORT.warn(f"{cli}.{name} is used by no command: put in commands/_common.py")
        common = {name for name, used in users.items() if len(used) != 1}
        imports = self.import_entries(src)
        loggers = [n for n in src.tree.body if is_logger(n)]

        def chunks(nodes: list[ast.stmt]) -> list[str]:
            refs = set().union(*(references(n) for n in nodes)) if nodes else set()
            used_loggers = [n for n in loggers if set(defines(n)) & refs]
            return [src.segment(*src.stmt_span(n)) for n in used_loggers + nodes]

        # Shared helpers lose their underscore: the module `_common` is the private part.
        public = {n: n.lstrip("_") for n in common if n.startswith("_") and n.lstrip("_") not in defs}
        if common:
            nodes = [n for n in src.tree.body if set(defines(n)) & common]
            self.new_files[self.new_path(self.p("commands._common"))] = self.assemble(
                "Helpers shared by several commands.", imports, [rename_names(c, public) for c in chunks(nodes)], False
            )
            for name in common:
                self.symbol_map[(cli, name)] = (self.p("commands._common"), public.get(name, name))
                REPORT.symbols.append(f"{cli}.{name} → {self.p('commands._common')}.{public.get(name, name)}")
        for command in commands:
            script = self.script_name_for(f"{cli}:{command}")
            cmd = self.command_name(script) if script else command.removesuffix("_main")
            if not script:
                REPORT.warn(f"{cli}.{command} is no console script in pyproject.toml: made commands/{cmd}.py anyway")
            target = self.p(f"commands.{cmd}")
            own = {name for name in closures[command] if name not in common}
            node = defs[command]
            doc = self.command_doc(script, ast.get_docstring(node), cmd)
            body_nodes = [n for n in src.tree.body if set(defines(n)) & own and n is not node]
            extra_imports = []
            used_common = sorted(set().union(node and references(node), *(references(n) for n in body_nodes)) & common)
            if used_common:
                names = ", ".join(public.get(n, n) for n in used_common)
                extra_imports.append(f"from {self.p('commands._common')} import {names}")
            renames = {command: "main", **public}
            for name in own:
                self.symbol_map[(cli, name)] = (target, renames.get(name, name))
                REPORT.symbols.append(f"{cli}.{name} → {target}.{renames.get(name, name)}")
            wrapped = self.wrapped_main(node)
            if wrapped:
                function = rename_names(self.without_import_of(src, node, wrapped), {"main": "run"})
                function = rename_names(function, renames)
                helpers = [rename_names(c, renames) for c in chunks(body_nodes)]
                self.wrapped_commands.append((wrapped, target, doc, helpers, function, imports + extra_imports))
                continue
            body = [rename_names(c, renames) for c in chunks([*body_nodes, node])]
            self.new_files[self.new_path(target)] = self.assemble(doc, imports + extra_imports, body, True)
        self.removed.add(path)

    @staticmethod
    def command_doc(script: str | None, doc: str | None, cmd: str) -> str:
        first = (doc or "").split("\n\n")[0].replace("\n", " ").strip()
        if not first or "\\" in first or '"""' in first:
            first = f"the {cmd} command."
        if not script or first.startswith(f"`{script}`"):
            return first
        return f"`{script}`: " + first

    def wrapped_main(self, node: ast.FunctionDef) -> str | None:
        """The module whose `main` a command only wraps (`from M import main; main(argv); return 0`)."""
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and any(a.name == "main" and not a.asname for a in inner.names):
                return inner.module
        return None

    def without_import_of(self, src: Source, node: ast.FunctionDef, wrapped: str) -> str:
        """The function's text without its `from <wrapped> import main` line (and a blank line after it)."""
        start, end = src.stmt_span(node)
        edits = []
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.module == wrapped:
                line_start = src.line_starts[inner.lineno - 1]
                line_end = src.line_starts[inner.end_lineno]
                if inner.end_lineno < len(src.lines) and src.lines[inner.end_lineno].strip() == b"":
                    line_end = src.line_starts[inner.end_lineno + 1]
                edits.append((line_start - start, line_end - start, ""))
        return apply_edits(src.data[start:end], edits)

    def finish_wrapped(self) -> None:
        """Commands that wrap another module's `main`: a top-level module (demo.py) moves whole into commands/, its
        `main` renamed `run`; a room's `main` (training.pretrain) is extracted as `run`."""
        for wrapped, target, doc, helpers, function, imports in self.wrapped_commands:
            is_top = wrapped.count(".") == 1 and wrapped.split(".")[1] not in TOP_LEVEL
            if is_top and self.path_of(wrapped).is_file():
                path = self.path_of(wrapped)
                src = Source(path.read_text(), wrapped)
                edits = [(*src.stmt_span(n), "") for n in src.tree.body if is_main_guard(n)]
                text = rename_names(apply_edits(src.data, edits), {"main": "run"})
                path.write_text(self.append_function(text, [*helpers, function], imports))
                self.module_map[wrapped] = target
                self.symbol_map[(wrapped, "main")] = (target, "run")
                REPORT.symbols.append(f"{wrapped}.main → {target}.run")
            else:
                self.extract(
                    wrapped, {"main"}, target, doc, "exclusive", renames={"main": "run"}, main_guard=True,
                    extra_body=[*helpers, function], extra_imports=imports,
                )  # fmt: skip

    def append_function(self, text: str, functions: list[str], imports: list[str]) -> str:
        src = Source(text)
        present = set(self.import_entries(src))
        bound = {self.bound_name(line) for line in present}
        missing = []
        for line in imports:
            if line not in present and not line.startswith("from __future__") and self.bound_name(line) not in bound:
                bound.add(self.bound_name(line))
                missing.append(line)
        if "import sys" not in present:
            missing.append("import sys")
        last_import = max((n for n in src.tree.body if is_import(n)), key=lambda n: n.end_lineno)
        at = src.stmt_span(last_import)[1]
        text = apply_edits(src.data, [(at, at, "".join(line + "\n" for line in missing))]).rstrip("\n")
        for function in functions:
            text += "\n\n\n" + function.strip("\n")
        return text + '\n\n\nif __name__ == "__main__":\n    sys.exit(main())\n'

    def library_commands(self) -> None:
        """Console scripts that are functions of library modules (fine-tuning, prediction, conversion): the entry
        function (and the `main` it wraps, renamed `run`) with the helpers only they use → commands/<script>.py."""
        for script, value in self.scripts.items():
            module, _, attr = value.strip().partition(":")
            if module == self.p("cli") or (module in self.module_map and ".commands." in self.module_map[module]):
                continue
            if not self.path_of(module).is_file():
                REPORT.warn(f"console script {script} = {value}: no module {module}")
                continue
            target = self.p(f"commands.{self.command_name(script)}")
            src = Source(self.path_of(module).read_text(), module)
            defs = top_defs(src)
            if attr not in defs:
                REPORT.warn(f"console script {script} = {value}: no top-level {attr}")
                continue
            seeds, renames = {attr}, {}
            if attr != "main" and "main" in defs and "main" in references(defs[attr]):
                seeds.add("main")
                renames = {"main": "run", attr: "main"}
            elif attr != "main":
                renames = {attr: "main"}
            module_doc = (ast.get_docstring(src.tree) or "").split("\n\n")[0].replace("\n", " ")
            uses_doc = "__doc__" in references(defs[attr]) or (
                "main" in seeds and "__doc__" in references(defs["main"])
            )
            if uses_doc and module_doc and "\\" not in module_doc:
                doc = module_doc  # the parser's description is the module's docstring
            else:
                doc = self.command_doc(script, module_doc, self.command_name(script))
            self.extract(module, seeds, target, doc, "exclusive", renames=renames, main_guard=True)

    # -- 4. other symbol moves -----------------------------------------------------------------------------------------

    def geoparquet(self) -> None:
        """The GeoParquet helpers that fine-tuning's prediction and search borrow from embeddings →
        inference/geoparquet.py (with what they need); embeddings imports them from there."""
        embeddings = self.p("embeddings")
        borrowers = [self.p("finetuning.predict"), self.p("search.query")]
        src = Source(self.path_of(embeddings).read_text(), embeddings)
        defs = top_defs(src)
        utils_modules = {old for old, new in self.module_map.items() if new.startswith(self.p("utils."))}
        allowed_imports = set()
        for node in src.tree.body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(PKG)
                and (node.module in utils_modules or node.module.startswith(self.p("utils.")))
            ):
                allowed_imports |= {a.asname or a.name for a in node.names}
        clay_imports = set()
        for node in src.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
                clay_imports |= {a.asname or a.name for a in node.names}
        borrowed = set()
        for module in borrowers:
            path = self.path_of(module)
            if not path.is_file():
                continue
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.ImportFrom) and node.module == embeddings:
                    borrowed |= {a.name for a in node.names}
        seeds = set()
        for name in sorted(borrowed):
            if name not in defs:
                continue
            refs = set().union(*(references(defs[n]) for n in self.closure(src, {name}, lambda _: True)))
            model_bound = "torch" in refs or {"model", "processor"} & refs or (refs & clay_imports) - allowed_imports
            if not model_bound:
                seeds.add(name)
        if not seeds:
            REPORT.warn("no GeoParquet helpers found in embeddings that prediction or search import: none moved")
            return
        doc = (
            "GeoParquet helpers shared by embeddings, prediction and search: the chip footprint in OGC:CRS84 and the "
            "file's `geo` metadata (GeoParquet 1.1)."
        )
        moved = self.extract(embeddings, seeds, self.p("inference.geoparquet"), doc, "all", import_back=True)
        public = sorted(n for n in moved if not n.startswith("_"))
        path = self.new_path(self.p("inference.geoparquet"))
        self.new_files[path] = self.new_files[path].rstrip("\n") + f"\n\n\n__all__ = {public!r}\n".replace("'", '"')

    def split_benchmarking(self) -> None:
        """benchmarking.py: what needs the model (FLOPs of a config, timed forward/training steps) →
        models/benchmarking.py; the machine description and timing helpers → utils/benchmarking.py."""
        module = self.p("benchmarking")
        if not self.path_of(module).is_file():
            return
        src = Source(self.path_of(module).read_text(), module)
        model_modules = {old for old, new in self.module_map.items() if new.startswith(self.p(MODEL_DIR + "."))}
        model_names = set()
        for node in src.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module in model_modules:
                model_names |= {a.asname or a.name for a in node.names}
        defs = top_defs(src)
        bound = set()
        for name in defs:
            refs = set().union(*(references(defs[n]) for n in self.closure(src, {name}, lambda _: True)))
            if refs & model_names:
                bound.add(name)
        if not bound:
            return
        doc = (
            "Throughput of the Clay model: FLOPs of a configuration, a timed forward pass and a timed training step "
            "(the machine description and timing helpers are in `clay_hf.utils.benchmarking`)."
        )
        all_before = all_names(src)
        self.extract(module, bound, self.p("models.benchmarking"), doc, "exclusive", import_back=True)
        if all_before:
            path = self.new_path(self.p("models.benchmarking"))
            names = [n for n in all_before if (module, n) in self.symbol_map]
            self.new_files[path] = self.new_files[path].rstrip("\n") + f"\n\n\n__all__ = {names!r}\n".replace("'", '"')

    def chipping_exports(self) -> None:
        """data/__init__ stops re-exporting the modules that move to chipping/; chipping/__init__ re-exports them."""
        data = self.p("data")
        path = self.path_of(data)
        src = Source(path.read_text(), data)
        moving = {old for old in self.module_map if old.startswith(data + ".")}
        keep_edits, lines, names = [], [], []
        for node in src.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module in moving:
                keep_edits.append((*src.stmt_span(node), ""))
                lines.append(src.segment(*src.stmt_span(node)).rstrip("\n"))
                names += [a.asname or a.name for a in node.names]
        if not lines:
            return
        text = set_all(apply_edits(src.data, keep_edits), None, remove=set(names))
        path.write_text(text)
        exported = sorted(names, key=lambda n: (not n[0].isupper(), n))
        init = self.assemble(NEW_PACKAGES["chipping"], ["from __future__ import annotations", *lines], [], False)
        init = init.rstrip("\n") + "\n\n__all__ = " + repr(sorted(names)).replace("'", '"') + "\n"
        del exported
        self.new_files[self.pkg_dir / "chipping" / "__init__.py"] = init
        for name in names:
            self.symbol_map[(data, name)] = (self.p("chipping"), name)
            REPORT.symbols.append(f"{data}.{name} → {self.p('chipping')}.{name}")

    # -- 5. moves ---------------------------------------------------------------------------------------------------------

    def move_files(self) -> None:
        for old, new in sorted(self.module_map.items()):
            if old == self.p("cli"):
                continue
            source = self.path_of(old)
            if source in self.removed or not source.is_file():
                continue
            target = self.new_path(new)
            self.mkpackage(target.parent)
            self.git_mv(source, target)
            REPORT.moved.append(f"{source.relative_to(self.root)} → {target.relative_to(self.root)}")
        for old, new in DATA_DIRS.items():
            source, target = self.pkg_dir / old, self.pkg_dir / new
            if source.is_dir():
                self.mkpackage(target.parent)
                self.git_mv(source, target)
                REPORT.moved.append(f"{source.relative_to(self.root)}/ → {target.relative_to(self.root)}/")
        for path in sorted(self.removed):
            if path.is_file():
                self.git("rm", "-q", "-f", str(path.relative_to(self.root)))
                REPORT.moved.append(f"{path.relative_to(self.root)}: removed (its content is in commands/)")
        main = self.pkg_dir / "training" / "__main__.py"
        if main.is_file():  # `python -m clay_hf.training` is now `python -m clay_hf.commands.pretrain`
            self.git("rm", "-q", "-f", str(main.relative_to(self.root)))
            REPORT.moved.append(f"{main.relative_to(self.root)}: removed (python -m clay_hf.commands.pretrain)")
        for path, text in sorted(self.new_files.items()):
            self.mkpackage(path.parent)
            path.write_text(text)
            REPORT.created.append(str(path.relative_to(self.root)))

    def mkpackage(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        current = folder
        while current != self.pkg_dir and self.pkg_dir in current.parents:
            init = current / "__init__.py"
            if not init.exists() and init not in self.new_files:
                dotted = ".".join(current.relative_to(self.pkg_dir).parts)
                doc = NEW_PACKAGES.get(dotted, f"The {dotted} room of clay_hf.")
                init.write_text(f'"""{wrap_doc(doc)}"""\n')
                REPORT.created.append(str(init.relative_to(self.root)))
            current = current.parent

    def git_mv(self, source: Path, target: Path) -> None:
        done = self.git("mv", str(source.relative_to(self.root)), str(target.relative_to(self.root)), check=False)
        if done.returncode:
            shutil.move(source, target)

    # -- 6. rewrite every reference ------------------------------------------------------------------------------------

    def map_dotted(self, dotted: str) -> str:
        parts = dotted.split(".")
        for k in range(len(parts), 1, -1):
            owner, name = ".".join(parts[: k - 1]), parts[k - 1]
            if (owner, name) in self.symbol_map:
                new_owner, new_name = self.symbol_map[(owner, name)]
                return ".".join([new_owner, new_name, *parts[k:]])
            prefix = ".".join(parts[:k])
            if prefix in self.module_map:
                return ".".join([self.module_map[prefix], *parts[k:]])
        return dotted

    def map_module(self, module: str) -> str:
        parts = module.split(".")
        for k in range(len(parts), 0, -1):
            prefix = ".".join(parts[:k])
            if prefix in self.module_map:
                return ".".join([self.module_map[prefix], *parts[k:]])
        return module

    def rewrite_import(self, node: ast.stmt, src: Source) -> str | None:
        """The new text of an import statement, or None when it stays."""
        if isinstance(node, ast.Import):
            names = []
            for alias in node.names:
                new = self.map_module(alias.name) if alias.name.startswith(PKG + ".") else alias.name
                names.append(new + (f" as {alias.asname}" if alias.asname else ""))
            text = "import " + ", ".join(names)
            original = "import " + ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            return None if text == original else text
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            return None
        module = node.module
        if not (module == PKG or module.startswith(PKG + ".")):
            return None
        groups: OrderedDict[str, list[str]] = OrderedDict()
        changed = False
        for alias in node.names:
            local = alias.asname or alias.name
            full = f"{module}.{alias.name}"
            if (module, alias.name) in self.symbol_map:
                new_module, new_name = self.symbol_map[(module, alias.name)]
            elif full in self.module_map and full != self.p("cli"):  # `from clay_hf import demo` (a module)
                new_module, _, new_name = self.module_map[full].rpartition(".")
            elif full == self.p("cli"):
                REPORT.warn(f"{getattr(src, 'module', None) or '?'}: `from {module} import cli`: cli.py is split")
                new_module, new_name = module, alias.name
            else:
                new_module, new_name = self.map_module(module), alias.name
            if new_module != module or new_name != alias.name:
                changed = True
            entry = new_name if local == new_name and not alias.asname else f"{new_name} as {local}"
            groups.setdefault(new_module, []).append(entry)
        if not changed:
            return None
        return "\n".join(f"from {m} import {', '.join(names)}" for m, names in groups.items())

    def rewrite_text(self, text: str, suffix: str = ".py") -> str:
        """Dotted paths, `from clay_hf… import …` in strings and code blocks, `-m clay_hf.training`, file paths."""

        def module_flag(match: re.Match) -> str:
            return match.group(1) + self.p("commands.pretrain")

        text = re.sub(rf"((?:-m|--module)(?:\s+|\"\s*,\s*\"|'\s*,\s*'))\b{PKG}\.training\b(?![.\w])", module_flag, text)

        def dotted(whole: str) -> str:
            head, colon, attr = whole.partition(":")
            if colon:
                mapped = self.map_dotted(f"{head}.{attr}")
                new_head, _, new_attr = mapped.rpartition(".")
                return f"{new_head}:{new_attr}"
            return self.map_dotted(whole)

        def statement(match: re.Match) -> str:
            whole = match.group("imp")
            try:
                node = ast.parse(textwrap.dedent(whole)).body[0]
            except SyntaxError:
                return re.sub(rf"{PKG}(?:\.{IDENT})+", lambda m: dotted(m.group(0)), whole, count=1)
            new = self.rewrite_import(node, None)
            if new is None:
                return whole
            line_start = text.rfind("\n", 0, match.start()) + 1
            prefix = text[line_start : match.start()]
            if suffix == ".ipynb":
                joiner = "\\n"
            elif prefix.strip() == "":
                joiner = "\n" + prefix
            else:
                joiner = "; "
            return new.replace("\n", joiner)

        def either(match: re.Match) -> str:
            return statement(match) if match.group("imp") else dotted(match.group(0))

        text = STATEMENT_OR_DOTTED.sub(either, text)

        for old, new in self.path_map.items():
            text = re.sub(rf"(?<=\b{PKG}/){re.escape(old)}(?![\w/])", new, text)
        for old, new in DATA_DIRS.items():
            text = re.sub(rf"(?<=\b{PKG}/){re.escape(old)}/", new + "/", text)
            text = re.sub(rf"(?<![\w./-]){re.escape(old)}/", new + "/", text)
        return text

    def build_path_map(self) -> None:
        """File paths under src/clay_hf that moved: `embeddings.py` → `inference/embeddings.py`."""
        self.path_map = {}
        for old, new in self.module_map.items():
            old_rel = "/".join(old.split(".")[1:]) + ".py"
            new_rel = "/".join(new.split(".")[1:]) + ("/" if old == self.p("cli") else ".py")
            self.path_map[old_rel] = new_rel
        self.path_map["training/__main__.py"] = "commands/pretrain.py"

    def rewrite_file(self, path: Path) -> None:
        text = path.read_text()
        if path.suffix != ".py":
            new = self.rewrite_text(text, path.suffix)
        else:
            try:
                src = Source(text, str(path))
            except SyntaxError:
                REPORT.warn(f"{path.relative_to(self.root)}: not parseable; dotted paths rewritten as text only")
                new = self.rewrite_text(text)
            else:
                spans = []
                for node in ast.walk(src.tree):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        spans.append((*src.node_span(node), node))
                spans.sort(key=lambda s: s[0])
                pieces, last = [], 0
                for start, end, node in spans:
                    pieces.append(self.rewrite_text(src.data[last:start].decode()))
                    original = src.data[start:end].decode()
                    replacement = self.rewrite_import(node, src)
                    if replacement is not None:
                        indent = " " * node.col_offset
                        replacement = replacement.replace("\n", "\n" + indent)
                    pieces.append(original if replacement is None else replacement)
                    last = end
                pieces.append(self.rewrite_text(src.data[last:].decode()))
                new = "".join(pieces)
        if new != text:
            path.write_text(new)
            REPORT.edited.append(str(path.relative_to(self.root)))

    # -- 7. fix-ups ------------------------------------------------------------------------------------------------------

    def hub_fixups(self) -> None:
        publish = self.new_path(self.p("hub.publish"))
        if publish.is_file():
            text = publish.read_text()
            src = Source(text)
            edits = []
            for node in src.tree.body:
                names = defines(node)
                if names == ["REMOTE_CODE"]:
                    edits.append((*src.stmt_span(node), (
                        "#: The remote code uploaded with a model: every module of `models/clay/` but its `__init__` and "
                        "the checkpoint\n#: converter (which is not shipped).\n"
                        "REMOTE_CODE = tuple(\n    sorted(\n        path.name\n        for path in REMOTE_CODE_DIR.glob"
                        '("*.py")\n        if path.name not in ("__init__.py", "' + CONVERTER + '.py")\n    )\n)\n'
                    )))  # fmt: skip
                elif names == ["PACKAGE_DIR"]:
                    edits.append((*src.stmt_span(node), (
                        '#: The Hub remote-code unit: `models/clay/` of this package.\nREMOTE_CODE_DIR = '
                        'Path(__file__).resolve().parents[1] / "models" / "clay"\n'
                    )))  # fmt: skip
            if len(edits) == 2:
                text = apply_edits(src.data, edits)
                text = re.sub(r"\bPACKAGE_DIR\b", "REMOTE_CODE_DIR", text)
                publish.write_text(text)
                REPORT.edited.append(f"{publish.relative_to(self.root)}: REMOTE_CODE derived from models/clay/")
            else:
                REPORT.warn(
                    f"{publish.relative_to(self.root)}: found {len(edits)} of REMOTE_CODE/PACKAGE_DIR; derive the list "
                    "of remote-code files from models/clay/ by hand"
                )
        # `Path(__file__).parent / "model_card"` (wherever it is now) → the templates' new place.
        pattern = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parent\s*/\s*([\"'])model_card\1")
        found = False
        for path in self.package_files():
            text = path.read_text()
            if not pattern.search(text):
                continue
            found = True
            templates = self.pkg_dir / DATA_DIRS["model_card"]
            if templates.parent == path.parent:
                expression = f'Path(__file__).parent / "{templates.name}"'
            else:
                depth = len(path.parent.relative_to(self.pkg_dir).parts)
                parts = " / ".join(f'"{part}"' for part in templates.relative_to(self.pkg_dir).parts)
                expression = f"Path(__file__).resolve().parents[{depth}] / {parts}"
            path.write_text(pattern.sub(expression, text))
        if not found and (self.pkg_dir / DATA_DIRS["model_card"]).is_dir():
            REPORT.warn(
                'no `Path(__file__).parent / "model_card"` found: point the card templates\' folder at hub/templates'
            )

    def regenerate_scripts(self) -> None:
        """scripts/*.py that only call one console function → `sys.exit(main())` of its command module."""
        for path in sorted((self.root / "scripts").glob("*.py")):
            src = Source(path.read_text())
            body = [n for n in src.tree.body if n is not docstring_node(src)]
            imports = [n for n in body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(PKG)]
            thin = all(is_import(n) or is_main_guard(n) for n in body) and len(imports) == 1
            commands = [n.module for n in imports if n.module.startswith(self.p("commands."))]
            if not thin or not commands:
                if any((n.module or "").startswith(self.p("commands.")) for n in imports):
                    REPORT.warn(f"{path.relative_to(self.root)} is not a thin wrapper: its import was rewritten only")
                continue
            doc = docstring_node(src)
            head = src.segment(*src.stmt_span(doc)) if doc else ""
            guard = 'if __name__ == "__main__":\n    sys.exit(main())\n'
            text = head + f"\nimport sys\n\nfrom {commands[0]} import main\n\n" + guard
            if text != src.text:
                path.write_text(text)

    def command_guards(self) -> None:
        """Every command module runs as `python -m clay_hf.commands.NAME`."""
        for path in sorted((self.pkg_dir / "commands").glob("*.py")):
            if path.name.startswith("_"):
                continue
            src = Source(path.read_text())
            if any(is_main_guard(n) for n in src.tree.body) or "main" not in top_defs(src):
                continue
            path.write_text(self.append_function(src.text, [], []))

    def layout_maps(self) -> None:
        """Hand-made maps of the tree (a fenced block of `src/clay_hf/… description` lines in README.md or docs/)
        are regenerated from the rooms' docstrings; lines about other folders stay."""
        rows = self.layout_rows()
        width = max(len(path) for path, _ in rows) + 1
        for path in [self.root / "README.md", *sorted((self.root / "docs").rglob("*.md"))]:
            if not path.is_file():
                continue
            text = path.read_text()

            def block(match: re.Match) -> str:
                lines = match.group(2).split("\n")
                ours = [line for line in lines if line.startswith(f"src/{PKG}/")]
                if len(ours) < 5:
                    return match.group(0)
                first = lines.index(ours[0])
                others = [line for line in lines if not line.startswith(f"src/{PKG}/")]
                pad = max(width, *(len(line.split()[0]) + 1 for line in others if line.strip()))
                others = [
                    f"{line.split(None, 1)[0]:<{pad}}{line.split(None, 1)[1]}"
                    if len(line.split(None, 1)) == 2
                    else line
                    for line in others
                ]
                generated = [f"{p:<{pad}}{d}".rstrip() for p, d in rows]
                new = others[:first] + generated + others[first:]
                return match.group(1) + "\n".join(new) + match.group(3)

            new = re.sub(r"(^```[^\n]*\n)(.*?)(\n```)", block, text, flags=re.S | re.M)
            if new != text:
                path.write_text(new)
                REPORT.edited.append(f"{path.relative_to(self.root)}: layout map regenerated")

    def layout_rows(self) -> list[tuple[str, str]]:
        order = ["utils", "models", "models/clay", "data", "chipping", "inference", "evaluation", "training",
                 "finetuning", "search", "export", "metrics", "hub", "hub/templates", "commands"]  # fmt: skip
        rows = [(f"src/{PKG}/__init__.py", "registers Clay with the Auto classes of transformers")]
        folders = sorted(
            (p for p in self.pkg_dir.rglob("*") if p.is_dir() and "__pycache__" not in p.parts),
            key=lambda p: (order.index(str(p.relative_to(self.pkg_dir))) if str(p.relative_to(self.pkg_dir)) in order
                           else len(order), str(p)),
        )  # fmt: skip
        for folder in folders:
            rel = str(folder.relative_to(self.pkg_dir))
            if rel not in order and (folder / "__init__.py").is_file() is False and rel != "hub/templates":
                continue
            if rel.startswith("metrics/"):
                continue
            init = folder / "__init__.py"
            doc = ast.get_docstring(ast.parse(init.read_bytes())) if init.is_file() else None
            if rel == "hub/templates":
                doc = "the model card templates and the licence (package data)"
            first = re.split(r"(?<=[a-z)`])[.:](?:\s|$)", (doc or "").strip().replace("\n", " "), maxsplit=1)[0]
            rows.append((f"src/{PKG}/{rel}/", lower_first(first)))
        for module in sorted(self.pkg_dir.glob("*.py")):
            if module.name != "__init__.py":
                doc = ast.get_docstring(ast.parse(module.read_bytes())) or ""
                first = re.split(r"(?<=[a-z)`])[.:](?:\s|$)", doc.strip().replace("\n", " "), maxsplit=1)[0]
                rows.append((f"src/{PKG}/{module.name}", lower_first(first)))
        return rows

    def data_doc(self) -> None:
        """data/ no longer cuts chips (chipping/ does): its docstring stops saying so."""
        init = self.pkg_dir / "data" / "__init__.py"
        text = init.read_text()
        src = Source(text)
        doc = docstring_node(src)
        if doc is not None:
            start, end = src.node_span(doc)
            old = src.segment(start, end)
            new = re.sub(r"\b([Rr]eading), cutting,", r"\1,", old)
            if new != old:
                init.write_text(apply_edits(src.data, [(start, end, new)]))

    def utils_doc(self) -> None:
        """utils/__init__'s docstring names what utils holds now."""
        init = self.pkg_dir / "utils" / "__init__.py"
        src = Source(init.read_text())
        if [n for n in src.tree.body if n is not docstring_node(src)]:
            return  # more than a docstring: left alone
        known = {
            "errors": "user errors and the commands' error contract",
            "outputs": "how every writer puts files on disk",
            "geometry": "chip footprints in OGC:CRS84",
            "model_source": "one check of model paths and Hub ids",
            "memory": "the CPU malloc setting for training",
            "benchmarking": "the machine description and timing helpers",
            "logging": "the package logger",
        }
        names = sorted(p.stem for p in init.parent.glob("*.py") if p.stem != "__init__")
        parts = [f"{known[n]} (`{n}`)" if n in known else f"`{n}`" for n in names]
        doc = "Shared utilities below every other room of the package: " + ", ".join(parts) + "."
        init.write_text(f'"""{wrap_doc(doc)}"""\n')

    def leftovers(self) -> None:
        """Old dotted paths or file paths still in text files (a spelling the rewrite did not know)."""
        old = [m for m in self.module_map if not self.path_of(m).is_file() or m == self.p("cli")]
        old = [m for m in old if m not in (self.p("hub"), self.p("evaluation"))]
        names = "|".join(re.escape(m) for m in sorted(old, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w.])(?:{names})(?![\w])")
        for path in self.tracked_text_files():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    REPORT.warn(f"{path.relative_to(self.root)}:{number}: old module path left: {line.strip()[:100]}")

    # -- 8. relative imports inside the package -------------------------------------------------------------------------

    def relativize(self) -> None:
        """Absolute imports of clay_hf inside the package → relative ones (the house style; models/clay must import
        itself relatively), except those marked absolute by `absolutize`."""
        for path in self.package_files():
            text = path.read_text()
            module = module_name(path, self.src_root)
            package = package_of(module, path.name == "__init__.py").split(".")
            src = Source(text)
            edits = []
            for node in ast.walk(src.tree):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                    continue
                if not (node.module == PKG or node.module.startswith(PKG + ".")):
                    continue
                if src.lines[node.end_lineno - 1].rstrip().endswith(ABSOLUTE_MARK.strip().encode()):
                    continue
                target = node.module.split(".")
                common = 0
                while common < min(len(package), len(target)) and package[common] == target[common]:
                    common += 1
                level = len(package) - common + 1
                rest = ".".join(target[common:])
                start, end = src.node_span(node)
                match = IMPORT_HEAD.match(src.data[start:end])
                edits.append((start, start + match.end(), f"from {'.' * level}{rest} import"))
            text = apply_edits(src.data, edits) if edits else text
            stripped = text.replace(ABSOLUTE_MARK, "")
            if stripped != src.text:
                path.write_text(stripped)

    # -- 9. tests, ruff, smoke ---------------------------------------------------------------------------------------------

    def add_layout_test(self) -> None:
        source = HERE / "test_layout.py"
        target = self.root / "tests" / "test_layout.py"
        if source.is_file():
            shutil.copy2(source, target)
            REPORT.created.append(str(target.relative_to(self.root)))
        else:
            REPORT.warn(f"{source} is missing: no tests/test_layout.py")

    def ruff_run(self) -> None:
        def ruff(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([self.ruff, *args], cwd=self.root, capture_output=True, text=True)

        ruff("check", "--fix", "--quiet", ".")
        ruff("format", "--quiet", ".")
        done = ruff("check", "--fix", "--quiet", ".")
        if done.returncode:
            REPORT.warn("ruff check still reports (fix by hand):\n" + done.stdout + done.stderr)
        ruff("format", "--quiet", ".")
        done = ruff("format", "--check", "--quiet", ".")
        if done.returncode:
            REPORT.warn("ruff format --check: " + done.stdout + done.stderr)

    def smoke(self) -> None:
        modules = [module_name(p, self.src_root) for p in self.package_files()]
        modules = [m for m in modules if not m.endswith("__main__")]
        code = (
            "import importlib, sys, traceback\nbad = 0\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n"
            "        if getattr(e, 'name', '') and not str(getattr(e, 'name', '')).startswith('clay_hf'):\n"
            "            continue  # an optional dependency\n"
            "        bad += 1; print('IMPORT FAILED', m, repr(e))\n"
            "    except Exception as e:\n        bad += 1; print('IMPORT FAILED', m, repr(e))\n"
            "sys.exit(1 if bad else 0)\n"
        )
        env = {"PYTHONPATH": str(self.src_root), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
        done = subprocess.run([self.python, "-c", code], cwd=self.root, capture_output=True, text=True, env=env)
        if done.returncode:
            REPORT.warn("some modules do not import:\n" + done.stdout + done.stderr[-3000:])
        else:
            print(f"imported all {len(modules)} modules of the new layout", flush=True)

    # -- run --------------------------------------------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        self.preflight()
        self.absolutize()
        self.plan_modules()
        self.wrapped_commands = []
        self.split_cli()
        self.finish_wrapped()
        self.library_commands()
        self.check_unplaced()
        self.geoparquet()
        self.split_benchmarking()
        self.chipping_exports()
        self.move_files()
        self.build_path_map()
        for path in self.tracked_text_files():
            self.rewrite_file(path)
        self.hub_fixups()
        self.command_guards()
        self.regenerate_scripts()
        self.utils_doc()
        self.data_doc()
        self.layout_maps()
        self.relativize()
        self.add_layout_test()
        self.ruff_run()
        self.leftovers()
        self.smoke()
        print_report(time.monotonic() - started)


def print_report(seconds: float) -> None:
    print("\n== moved")
    for line in REPORT.moved:
        print(f"  {line}")
    print("== created")
    for line in REPORT.created:
        print(f"  {line}")
    print("== definitions moved between modules")
    for line in sorted(set(REPORT.symbols)):
        print(f"  {line}")
    print(f"== {len(set(REPORT.edited))} files rewritten (imports, dotted paths, file paths)")
    print("== could not place (handle by hand)")
    for line in REPORT.unplaced or ["(nothing)"]:
        print(f"  {line}")
    print("== warnings")
    for line in REPORT.warnings or ["(none)"]:
        print(f"  {line}")
    print(f"done in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="root of a clay_hf checkout (main)")
    parser.add_argument("--ruff", default=shutil.which("ruff") or "/work/main/.venv/bin/ruff")
    parser.add_argument("--python", default="/work/main/.venv/bin/python", help="imports every module at the end")
    args = parser.parse_args(argv)
    Relayout(args.checkout.resolve(), args.ruff, args.python).run()
    return 1 if REPORT.unplaced else 0


if __name__ == "__main__":
    sys.exit(main())
