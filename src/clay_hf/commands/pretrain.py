"""`clay-pretrain`: the pretraining loop (see `clay_hf.training.pretrain`); exit status 0 when it finishes."""

from __future__ import annotations

import logging
import sys
from typing import Any

from ..training.pretrain import pretrain
from ..utils.errors import user_errors


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """The pretraining script: its progress at INFO (the library itself configures no logging)."""
    from ..training.arguments import parse_args

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("clay_hf").setLevel(logging.INFO)
    return pretrain(*parse_args(argv))


@user_errors
def main(argv: list[str] | None = None) -> int:
    """`clay-pretrain`: the pretraining loop (see `clay_hf.training.pretrain`); exit status 0 when it finishes."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
