# Two entry points: `make demo` (the main job on built-in sample data) and `make test` (lint, tests, the docs build).
# Both create .venv on first use and install the project into it from its own files.

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch; set TORCH_SPEC (e.g. "torch>=2.4") on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs format clean

# MkDocs' plugins print banners about MkDocs 2 on every build; they are not warnings about this site.
export DISABLE_MKDOCS_2_WARNING := true
export NO_MKDOCS_2_WARNING := 1

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --output_dir demo_output

# pytest executes the tutorials (tests/test_notebooks.py) and keeps the executed copies in build/notebooks, which the
# docs build that follows renders instead of executing them again.
test: $(STAMP) lint
	$(BIN)/python -m pytest
	$(BIN)/mkdocs build --strict

# The documentation site, into build/site; every warning is an error. Tutorials not executed since their last change
# (or the package's) are executed first.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo_output build .pytest_cache .ruff_cache
