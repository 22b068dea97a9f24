"""Helpers shared by several commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def packing_parser(main: Callable[..., int]) -> argparse.ArgumentParser:
    """The arguments every packer takes: the chips, where the shards go, how many chips each holds."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", help="chips: a folder, glob, list file or URL")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chips_per_shard", type=int, default=256)
    parser.add_argument("--prefix", default="chips")
    return parser


def print_packing(output_dir: str, shards: int, bad: list, chips: int | None = None) -> None:
    """Each skipped chip with its reason, then the totals."""
    for message in bad:
        print(f"skipped {message}")
    held = "" if chips is None else f" hold {chips} chips;"
    print(f"{shards} shards in {output_dir}{held} skipped {len(bad)} bad chips")
