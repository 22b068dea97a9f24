"""The documentation cannot drift from the code: README.md's, docs/'s and the model card's snippets run on a tiny model.

- Every ```python block of README.md runs, in order, in one namespace, on a tiny saved model; so do the blocks of
  every Markdown page under docs/ (one namespace per page) and of a model card rendered for that model. Placeholders that stand for the reader's own data (a
  model id, an S3 bucket, a chip file) are replaced by fixtures through the table in `substitutions()`; names a
  snippet uses without defining (the reader's tensors) come from `given()`. A new placeholder goes into that
  table (or `given()`), not into a marker.
- A block that cannot run here (it needs a GPU, the network, hours) is marked by the line `<!-- no-test -->` as
  the last non-blank line before its opening fence. Use it sparingly: a marked block is not checked at all.
- Every command the docs name (`python scripts/X.py …`, `clay-X …`, `accelerate launch … scripts/X.py …`, in
  shell blocks or inline code) exists, `scripts/X.py` has the console script `clay-X` (underscores as hyphens),
  and every `--flag` written after it is in that command's `--help` (or its subcommand's). `python
  benchmarks/X.py` must exist. The marker also exempts a shell block from these checks.
- Relative links in the project's Markdown files (README.md and docs/ included) point at files that exist.
- README.md's command table lists exactly the console scripts of pyproject.toml; the generated reference pages
  (docs/hooks/gen_cli.py, gen_benchmarks.py) cover every console script and every benchmark result; mkdocstrings
  references (`::: module.Name`) appear only on the API pages, so a reorganised package changes those pages alone.
  The site itself is built by `make docs` (`mkdocs build --strict`), which `make test` runs after pytest; the
  tutorials are executed by tests/test_notebooks.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from conftest import save_pretraining_model, small_config

from clay_hf import (
    ClayForImageClassification,
    ClayForSemanticSegmentation,
    ClayImageProcessor,
    encode_dates,
    encode_lonlat,
)
from clay_hf.chipping import write_synthetic_chips
from clay_hf.data import resolve_sources
from clay_hf.hub.cards import finetuned_task, render_finetuned_card
from clay_hf.hub.publish import CARD_DIR, render_model_card

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
DOC_PAGES = sorted(DOCS.rglob("*.md"))
#: The pages that may hold mkdocstrings references: the model page (its API section) and the API pages.
API_PAGES = [DOCS / "model_doc" / "clay.md", *sorted((DOCS / "api").glob("*.md"))]
NO_TEST = "<!-- no-test -->"
HUB_ID = "made-with-clay/Clay"
MARKDOWN_FILES = [
    README,
    REPO / "tests/fixtures/README.md",
    REPO / "src/clay_hf/metrics/masked_reconstruction/README.md",
    *DOC_PAGES,
]


@dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    skipped: bool


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with their language and whether `NO_TEST` marks them."""
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        match = re.match(r"^(\s*)```(\w*)\s*$", lines[index])
        if not match:
            index += 1
            continue
        indent, start = match.group(1), index
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent) :])
            index += 1
        before = [line.strip() for line in lines[:start] if line.strip()]
        blocks.append(Block(match.group(2), "\n".join(body), start + 1, bool(before) and before[-1] == NO_TEST))
        index += 1
    return blocks


# ---------------------------------------------------------------------------------------------------------------------
# Python snippets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """A tiny saved model (13 bands, 32×32, patches of 8) with its processor, and 10 synthetic chips."""
    root = tmp_path_factory.mktemp("docs")
    model_dir = root / "model"
    save_pretraining_model(model_dir)
    chips = root / "chips"
    write_synthetic_chips(chips, 10, size=32, seed=2)
    return {"root": root, "model": model_dir, "chips": chips, "chip": resolve_sources(chips)[0]}


def substitutions(fixtures: dict) -> dict[str, str]:
    """Placeholder in the docs → fixture. Longer strings first, so that a placeholder inside another is safe."""
    table = {
        "path/or/hub-id": str(fixtures["model"]),
        HUB_ID: str(fixtures["model"]),
        "runs/clay-small": str(fixtures["model"]),
        "s3://bucket/chips/*.tif": str(fixtures["chips"] / "*.tif"),
        "claytile_32TMT_20200701_v02_0001.tif": fixtures["chip"],
    }
    return dict(sorted(table.items(), key=lambda item: -len(item[0])))


def given() -> dict[str, object]:
    """What a snippet may use without defining it: the reader's own inputs, sized for the tiny model."""
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    return {
        "pixel_values": torch.randn(2, 13, 32, 32, generator=generator),
        "timestep": torch.from_numpy(encode_dates(["2023-06-01", "2019-11-20"])).float(),
        "latlon": torch.from_numpy(encode_lonlat(np.array([[12.49, 41.89], [-60.0, -3.1]]))).float(),
        "raw_chip": rng.integers(0, 10000, (13, 32, 32)).astype(np.uint16),
        "rgbn_chip": rng.integers(0, 10000, (4, 32, 32)).astype(np.uint16),  # red, green, blue, nir
    }


def run_python_blocks(text: str, name: str, fixtures: dict, monkeypatch) -> int:
    """Run every unmarked ```python block of `text` in order in one namespace; return how many ran."""
    monkeypatch.chdir(fixtures["root"])  # files a snippet writes land in the fixture folder
    namespace: dict[str, object] = {"__name__": "__doc_snippets__", **given()}
    table = substitutions(fixtures)
    ran = 0
    for block in code_blocks(text):
        if block.language != "python" or block.skipped:
            continue
        code = block.code
        for placeholder, value in table.items():
            code = code.replace(placeholder, value)
        try:
            exec(compile(code, f"{name}, block at line {block.line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{name}, the python block at line {block.line} fails: {error!r}\n{code}") from error
        ran += 1
    return ran


# The README's loader snippet asks for 8 workers (it never starts them); torch warns about the core count here.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_readme_python_blocks_run(fixtures, monkeypatch):
    assert run_python_blocks(README.read_text(), "README.md", fixtures, monkeypatch) > 0


def pages_with_python() -> list[Path]:
    """The pages under docs/ with a python block to run (one not marked `NO_TEST`)."""
    blocks = {page: code_blocks(page.read_text()) for page in DOC_PAGES}
    return [
        page for page in DOC_PAGES if any(block.language == "python" and not block.skipped for block in blocks[page])
    ]


# Like the README's, the chips guide's loader snippet asks for 8 workers it never starts.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("page", pages_with_python(), ids=lambda page: str(page.relative_to(DOCS)))
def test_docs_python_blocks_run(page, fixtures, monkeypatch):
    name = str(page.relative_to(REPO))
    assert run_python_blocks(page.read_text(), name, fixtures, monkeypatch) > 0


def test_docs_pages_with_python_are_found():
    """The parametrisation above is not empty by accident: the pages that hold python blocks today."""
    found = {str(page.relative_to(DOCS)) for page in pages_with_python()}
    assert {"model_doc/clay.md", "guides/chips_and_formats.md", "guides/finetuning.md"} <= found


def test_model_card_python_blocks_run(fixtures, monkeypatch):
    card = render_model_card(fixtures["model"], HUB_ID).content
    assert run_python_blocks(card, "the rendered model card", fixtures, monkeypatch) > 0


# ---------------------------------------------------------------------------------------------------------------------
# Commands and their flags
# ---------------------------------------------------------------------------------------------------------------------

SCRIPT = re.compile(r"^(?:scripts|benchmarks)/[\w-]+\.py$")
FLAG = re.compile(r"^\[?(--[A-Za-z][\w-]*)")


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def command_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, text, in a shell block) of every place a command may be written: logical lines of shell
    blocks (continuations joined, comments dropped) and inline code spans elsewhere."""
    found, shell_lines = [], set()
    for block in code_blocks(text):
        if block.language in ("bash", "sh", "shell", "console") and not block.skipped:
            logical, first = "", None
            for offset, line in enumerate(block.code.splitlines()):
                shell_lines.add(block.line + 1 + offset)
                first = first or block.line + 1 + offset
                logical += " " + line.rstrip().removesuffix("\\")
                if not line.rstrip().endswith("\\"):
                    found.append((first, re.split(r"\s#", logical)[0], True))
                    logical, first = "", None
    for number, line in enumerate(text.splitlines(), 1):
        if number not in shell_lines:
            found += [(number, span, False) for span in re.findall(r"`([^`\n]+)`", line)]
    return found


def parse_command(segment: str) -> tuple[str, list[str]] | None:
    """(command, the words after it) for one shell command: `python scripts/X.py …`, `clay-X …`, or
    `accelerate launch [options] scripts/X.py …`, after any `NAME=value` assignments; None for anything else."""
    words = segment.split()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] in ("python", "python3") and len(words) > 1 and SCRIPT.match(words[1]):
        return words[1], words[2:]
    if words[0].startswith("clay-"):
        return words[0], words[1:]
    if words[:2] == ["accelerate", "launch"]:
        script = next((i for i, word in enumerate(words) if SCRIPT.match(word)), None)
        return (words[script], words[script + 1 :]) if script is not None else None
    return None


def mentioned_commands(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, command, words after it) for each command the text names. In prose, a lone `clay-X` that is no
    console script is a name, not a command (e.g. a pipeline task), and is left alone."""
    scripts, mentions = console_scripts(), []
    for number, line, in_shell in command_lines(text):
        for segment in re.split(r"&&|\|\||;|\s\|\s", line):
            parsed = parse_command(segment)
            if parsed is None:
                continue
            command, words = parsed
            if not in_shell and not words and command.startswith("clay-") and command not in scripts:
                continue
            mentions.append((number, command, words))
    return mentions


def help_text(command: str, scripts: dict[str, str], words: list[str]) -> str:
    """The `--help` of a console script run in this process, with its subcommand's `--help` when the first word
    after the command is one (e.g. `clay-search index`)."""
    module, function = scripts[command].split(":")
    main = getattr(import_module(module), function)

    def run(argv: list[str]) -> tuple[int | None, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
            main(argv)
        return info.value.code, out.getvalue()

    code, text = run(["--help"])
    assert code == 0, f"{command} --help exits with {code}"
    if words and re.match(r"^[a-z][\w-]*$", words[0]):
        code, sub = run([words[0], "--help"])
        if code == 0:
            text += sub
    return text


def check_commands(text: str, name: str) -> int:
    scripts = console_scripts()
    helps: dict[tuple[str, str], str] = {}
    problems, checked = [], 0
    for number, command, words in mentioned_commands(text):
        checked += 1
        if command.startswith(("scripts/", "benchmarks/")) and not (REPO / command).is_file():
            problems.append(f"{name}:{number}: {command} does not exist")
            continue
        if command.startswith("benchmarks/"):
            continue
        entry = "clay-" + Path(command).stem.replace("_", "-") if command.startswith("scripts/") else command
        if entry not in scripts:
            problems.append(f"{name}:{number}: {command} has no console script {entry} in pyproject.toml")
            continue
        key = (entry, words[0] if words else "")
        if key not in helps:
            helps[key] = help_text(entry, scripts, words)
        flags = [match.group(1) for word in words if (match := FLAG.match(word))]
        unknown = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key])]
        if unknown:
            problems.append(f"{name}:{number}: {command} has no {', '.join(unknown)} (see {entry} --help)")
    assert not problems, "\n".join(problems)
    return checked


def test_readme_commands_and_flags_exist():
    assert check_commands(README.read_text(), "README.md") > 5


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_docs_commands_and_flags_exist(page):
    check_commands(page.read_text(), str(page.relative_to(REPO)))


def test_docs_name_commands():
    """The per-page checks above are not vacuous: the guides name commands and flags."""
    assert sum(len(mentioned_commands(page.read_text())) for page in DOC_PAGES) > 40


def readme_command_table() -> list[str]:
    """The first column of the table under README.md's `## Commands` heading."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(clay-[\w-]+)` \|", section, flags=re.MULTILINE)


def test_readme_command_table_lists_every_console_script():
    listed = readme_command_table()
    assert len(listed) == len(set(listed)), (
        f"listed twice: {sorted({name for name in listed if listed.count(name) > 1})}"
    )
    assert set(listed) == set(console_scripts()), (
        f"missing from README.md: {sorted(set(console_scripts()) - set(listed))}; "
        f"not console scripts: {sorted(set(listed) - set(console_scripts()))}"
    )


def test_readme_stays_short():
    assert len(README.read_text().encode()) <= 10_240, "README.md is the front page: details belong in docs/"


def test_api_references_live_on_the_api_pages():
    directive = re.compile(r"^:::\s+(clay_hf[\w.]*)", flags=re.MULTILINE)
    elsewhere = {
        str(page.relative_to(DOCS)): directive.findall(page.read_text())
        for page in DOC_PAGES
        if page not in API_PAGES and directive.search(page.read_text())
    }
    assert not elsewhere, f"mkdocstrings references outside the API pages: {elsewhere}"
    referenced = [name for page in API_PAGES for name in directive.findall(page.read_text())]
    for name in referenced:  # each names something that exists today (mkdocs --strict says so too, slower)
        module, _, attribute = name.rpartition(".")
        try:
            target = import_module(name)
        except ImportError:
            target = getattr(import_module(module), attribute, None)
        assert target is not None, f"{name} does not exist"
    assert len(referenced) > 50


def load_generator(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_covers_every_console_script():
    page = load_generator("gen_cli").page()
    for name in console_scripts():
        assert f"\n## {name}\n" in page and f"usage: {name} " in page, f"{name} is missing from the CLI reference"
    assert "\n### clay-search index\n" in page and "usage: clay-search query " in page  # subcommands too


def test_benchmark_page_covers_every_result_file():
    generator = load_generator("gen_benchmarks")
    page = generator.page()
    for path in generator.RESULTS.iterdir():
        assert f"\n## {path.stem}\n" in page and f"`benchmarks/results/{path.name}`" in page, path.name
    assert all((REPO / "benchmarks" / script).is_file() for script in generator.SCRIPTS.values())


def test_model_card_commands_and_flags_exist(fixtures):
    card = render_model_card(fixtures["model"], HUB_ID).content
    assert check_commands(card, "the rendered model card") > 0
    assert check_commands((CARD_DIR / "template.md").read_text(), "template.md") > 0


@pytest.mark.parametrize("head", [ClayForSemanticSegmentation, ClayForImageClassification])
def test_finetuned_model_card_python_blocks_run_and_commands_exist(fixtures, monkeypatch, tmp_path, head):
    folder = tmp_path / "finetuned"
    torch.manual_seed(0)
    head(small_config(num_labels=2, neck_hidden_size=16, decode_hidden_size=16)).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    task = finetuned_task(json.loads((folder / "config.json").read_text()))
    card = render_finetuned_card(folder, HUB_ID, task).content
    assert run_python_blocks(card, "the fine-tuned model card", {**fixtures, "model": folder}, monkeypatch) > 0
    assert check_commands(card, "the fine-tuned model card") > 0
    assert check_commands((CARD_DIR / "finetuned.md").read_text(), "finetuned.md") > 0


def test_every_script_is_a_console_script():
    scripts = console_scripts()
    for path in sorted((REPO / "scripts").glob("*.py")):
        assert "clay-" + path.stem.replace("_", "-") in scripts, f"{path.name} has no console script"


def test_the_checker_catches_what_it_should(tmp_path):
    """The checks themselves: an unknown flag, a missing script, a marked block."""
    with pytest.raises(AssertionError, match=r"clay-evaluate has no --no_such_flag"):
        check_commands("`clay-evaluate --data_dir x --no_such_flag 1`", "text")
    with pytest.raises(AssertionError, match=r"scripts/nothing\.py does not exist"):
        check_commands("```bash\npython scripts/nothing.py \\\n  --x 1\n```", "text")
    with pytest.raises(AssertionError, match=r"clay-nothing has no console script"):
        check_commands("```bash\nHF_TOKEN=x clay-nothing --x 1\n```", "text")
    # a model named clay-… is an argument, a lone name in prose is not a command; flags in [--x a|b] are read
    prose = "`clay-evaluate --model_name_or_path clay-v0.1 [--masking random|v0] --split all`, the `clay-x` task"
    assert [(command, words[:2]) for _, command, words in mentioned_commands(prose)] == [
        ("clay-evaluate", ["--model_name_or_path", "clay-v0.1"])
    ]
    assert check_commands(prose, "text") == 1
    blocks = code_blocks(f"a\n\n{NO_TEST}\n\n```python\nraise SystemExit\n```\n```python\nx = 1\n```")
    assert [(block.skipped, block.code) for block in blocks] == [(True, "raise SystemExit"), (False, "x = 1")]


# ---------------------------------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------------------------------


#: Pages of the site that docs/hooks/gen_pages.py writes when it is built: links to them from docs/ are fine.
GENERATED_PAGES = {(DOCS / load_generator(name).PAGE).resolve() for name in load_generator("gen_pages").GENERATORS}


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"`(\.\./[^`\s]+)`", text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        if not resolved.exists() and resolved not in GENERATED_PAGES:
            broken.append(target)
    assert not broken, f"{path.name}: links to missing files {broken}"


def test_card_template_ships_with_the_package():
    assert CARD_DIR.is_relative_to(REPO / "src" / "clay_hf")
    assert {"template.md", "finetuned.md", "prohibited_uses.md", "LICENSE.md"} <= {
        path.name for path in CARD_DIR.iterdir()
    }
