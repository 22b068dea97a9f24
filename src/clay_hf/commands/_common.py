"""Helpers shared by several commands: the parser of their argument dataclasses, the packers' arguments."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

T = TypeVar("T")

#: Metadata keys that set what `HfArgumentParser` would derive from a field's type; a field with one of them is
#: added to the parser as its metadata says (see `CommandParser`).
_AS_WRITTEN = ("positional", "nargs", "action", "type")
#: argparse actions that take no value (so no `type`): e.g. a plain switch, `metadata={"action": "store_true"}`.
_NO_VALUE_ACTIONS = ("store_true", "store_false", "store_const", "count")


class CommandParser(HfArgumentParser):
    """The parser of a command's argument dataclasses (`HfArgumentParser`, as transformers' example scripts use):

    - help texts as written (no defaults appended);
    - a field whose metadata has `positional: True` is a positional argument (`HfArgumentParser` makes every field a
      `--flag`);
    - a field whose metadata sets `nargs`, `action` or `type` is added as argparse would add it with that metadata
      (`HfArgumentParser` turns every list into `nargs="+"` and takes the type from the annotation), e.g.
      `--point LON LAT` (`nargs=2`), a repeated `--band` (`action="append"`) or a parsing function as type;
    - `parse` reads no `.args` file, and an unknown argument is a usage error (exit status 2), as argparse's.
    """

    def __init__(self, dataclass_types: type | Iterable[type] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(dataclass_types, **kwargs)

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        if not any(key in field.metadata for key in _AS_WRITTEN):
            HfArgumentParser._parse_dataclass_field(parser, field)
            return
        kwargs = dict(field.metadata)
        if kwargs.get("action") not in _NO_VALUE_ACTIONS:
            kwargs.setdefault("type", _element_type(field.type))
        if kwargs.pop("positional", False):
            names = [field.name]
        else:
            names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            kwargs.setdefault("required", no_default)
        if field.default is not dataclasses.MISSING:
            kwargs.setdefault("default", field.default)
        elif field.default_factory is not dataclasses.MISSING:
            kwargs.setdefault("default", field.default_factory())
        parser.add_argument(*names, **kwargs)

    def parse(self, argv: list[str] | None = None) -> tuple[Any, ...]:
        """One instance of each of the parser's dataclasses, from `argv` (default: the process's arguments)."""
        namespace = self.parse_args(argv)
        return tuple(arguments_from(namespace, dtype) for dtype in self.dataclass_types)


def default_device() -> str:
    """`--device` by default: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def arguments_from(namespace: argparse.Namespace, dtype: type[T]) -> T:
    """The `dtype` instance of a parsed namespace (e.g. a subcommand's arguments)."""
    return dtype(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(dtype) if item.init})


def parse_arguments(dtype: type[T], argv: list[str] | None, description: str | None) -> T:
    """A command's arguments: its one dataclass parsed from `argv`."""
    (arguments,) = CommandParser(dtype, description=description).parse(argv)
    return arguments


def _element_type(annotation: Any) -> Any:
    """str of `str`, `str | None`, `list[str]` and `list[str] | None` (what argparse's `type` converts each word to);
    for `bool`, HfArgumentParser's reading of yes/no words (argparse's `bool("false")` is True)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return string_to_bool if annotation is bool else annotation


@dataclass(kw_only=True)
class PackingArguments:
    """The arguments every packer takes: the chips, where the shards go, how many chips each holds."""

    source: str = field(metadata={"positional": True, "help": "chips: a folder, glob, list file or URL"})
    output_dir: str
    chips_per_shard: int = 256
    prefix: str = "chips"


def print_packing(output_dir: str, shards: int, bad: list, chips: int | None = None) -> None:
    """Each skipped chip with its reason, then the totals."""
    for message in bad:
        print(f"skipped {message}")
    held = "" if chips is None else f" hold {chips} chips;"
    print(f"{shards} shards in {output_dir}{held} skipped {len(bad)} bad chips")
