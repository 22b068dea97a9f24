"""The generated pages of the site, written at build time by mkdocs-gen-files (`python docs/hooks/gen_pages.py` prints
them): the CLI reference (`gen_cli.py`) and the benchmark results (`gen_benchmarks.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HOOKS = Path(__file__).resolve().parent
GENERATORS = ("gen_cli", "gen_benchmarks")


def generator(name: str) -> ModuleType:
    """A page generator of this folder: its `PAGE` (the page's path in the site) and `page()` (its Markdown)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import mkdocs_gen_files

    for name in GENERATORS:
        module = generator(name)
        with mkdocs_gen_files.open(module.PAGE, "w") as file:
            file.write(module.page())


if __name__ == "<run_path>":  # mkdocs-gen-files runs this file with runpy.run_path
    main()
elif __name__ == "__main__":
    for name in GENERATORS:
        print(generator(name).page())
