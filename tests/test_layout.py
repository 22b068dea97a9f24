"""The package's layout is its architecture: the import graph of `clay_hf` has no cycles, no module imports one of a
higher layer, and the Hub remote-code unit (`models/clay/`) imports nothing of clay_hf outside itself.

Layers, lowest first: utils < models < data < chipping < applications (inference, evaluation, training, finetuning,
search, export, metrics) < hub < commands. Every import counts: module-level and inside functions, absolute and
relative. Rooms of the application layer import each other only along `APPLICATION_EDGES` (an acyclic list).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clay_hf"

LAYERS = [
    {"utils"},
    {"models"},
    {"data"},
    {"chipping"},
    {
        "inference",
        "evaluation",
        "training",
        "finetuning",
        "search",
        "export",
        "metrics",
    },
    {"hub"},
    {"commands"},
]
#: Modules at the top of the package and the layer each belongs to: the package root registers the model with the
#: Auto classes (and re-exports it); testing_utils is a toy model configuration.
TOP_LEVEL = {"clay_hf": "models", "clay_hf.testing_utils": "models"}
#: Imports between rooms of the application layer: (importer, imported). Acyclic (checked below).
APPLICATION_EDGES = {
    (
        "inference",
        "evaluation",
    ),  # embeddings store each chip's masked reconstruction error
    (
        "training",
        "evaluation",
    ),  # pretraining validates with the masked reconstruction error
    (
        "finetuning",
        "evaluation",
    ),  # fine-tuning writes its results under the evaluation results' name
    ("finetuning", "inference"),  # prediction writes GeoParquet with the shared helpers
    ("search", "inference"),  # search embeds query chips and writes GeoParquet hits
    (
        "search",
        "export",
    ),  # search embeds query chips with an ONNX encoder when the index was built from one
    (
        "metrics",
        "finetuning",
    ),  # the `evaluate` metric modules compute fine-tuning's scores (as `Trainer` does)
}
#: Module imports allowed against the rules above, each with its reason.
ALLOWED = {
    ("clay_hf.models.clay.pipeline_clay", "clay_hf.data"): "optional (in a `try` that catches ImportError): the "
    "remote-code pipeline reads a GeoTIFF path with clay_hf's chip reader when clay_hf is installed",
    (
        "clay_hf.evaluation.probe",
        "clay_hf.inference.embeddings",
    ): "the linear probe evaluates embeddings, so it embeds "
    "chips as inference does (the reconstruction error that inference takes from evaluation is another module)",
}
MODEL_UNIT = "clay_hf.models.clay"
#: Not uploaded with a model: may import clay_hf outside the unit.
NOT_SHIPPED = {"clay_hf.models.clay.convert_clay_original_checkpoint"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts}


def imports(path: Path, known: set[str]) -> set[str]:
    """The clay_hf modules `path` imports anywhere (module level and inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name` the module.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("clay_hf") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) for name, path in found.items()}


def room(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        raise AssertionError(f"{module}: a module at the top of the package; give it a room (or list it in TOP_LEVEL)")
    return parts[1]


def layer(module: str) -> int:
    for index, rooms in enumerate(LAYERS):
        if room(module) in rooms:
            return index
    raise AssertionError(f"{module}: room {room(module)!r} is in no layer")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for module in graph():
        layer(module)


def test_no_import_cycles():
    assert find_cycle(graph()) is None, "import cycle: " + " → ".join(find_cycle(graph()))


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, targets in sorted(graph().items()):
        for target in sorted(targets):
            if (module, target) in ALLOWED:
                continue
            if layer(target) > layer(module):
                wrong.append(f"{module} → {target}")
    assert not wrong, "imports of a higher layer:\n" + "\n".join(wrong)


def test_application_rooms_import_each_other_only_as_listed():
    wrong = []
    for module, targets in sorted(graph().items()):
        for target in sorted(targets):
            if (module, target) in ALLOWED:
                continue
            same_layer = layer(target) == layer(module) and room(target) != room(module)
            if same_layer and (room(module), room(target)) not in APPLICATION_EDGES:
                wrong.append(f"{module} → {target} ({room(module)} → {room(target)} is not in APPLICATION_EDGES)")
    assert not wrong, "\n".join(wrong)


def test_application_edges_are_acyclic():
    edges: dict[str, set[str]] = {}
    for importer, imported in APPLICATION_EDGES:
        edges.setdefault(importer, set()).add(imported)
    assert find_cycle(edges) is None


def test_allowed_exceptions_are_still_needed():
    edges = graph()
    stale = [pair for pair in ALLOWED if pair[1] not in edges.get(pair[0], set())]
    assert not stale, f"ALLOWED lists imports that no longer exist: {stale}"


def optional_imports(tree: ast.AST) -> set[ast.AST]:
    """Imports inside a `try` that catches ImportError: the module works without them."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            handler.type is not None
            and {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
            & {"ImportError", "ModuleNotFoundError"}
            for handler in node.handlers
        ):
            found |= {
                inner
                for stmt in node.body
                for inner in ast.walk(stmt)
                if isinstance(inner, (ast.Import, ast.ImportFrom))
            }
    return found


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith(MODEL_UNIT + ".")))
def test_the_model_unit_is_self_contained(module):
    """The shipped files of models/clay import only each other, relatively (they are uploaded as a flat folder);
    an optional import of clay_hf (in a `try` that catches ImportError) is allowed: the remote code works without it.
    (It is still an import for the layering tests above.)"""
    if module in NOT_SHIPPED:
        return
    tree = ast.parse(modules()[module].read_bytes())
    optional = optional_imports(tree)
    for node in ast.walk(tree):
        if node in optional:
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level in (0, 1), f"{module}: `from {'.' * node.level}{node.module} import …` leaves the unit"
            assert node.level == 1 or not (node.module or "").startswith("clay_hf"), f"{module} imports {node.module}"
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("clay_hf") for a in node.names), f"{module} imports clay_hf"
