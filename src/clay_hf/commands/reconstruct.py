"""`clay-reconstruct`: Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..utils.errors import user_errors
from ._common import parse_arguments


@dataclass(kw_only=True)
class ReconstructArguments:
    """The arguments of `clay-reconstruct`."""

    model_name_or_path: str
    data_dir: str
    output_dir: str
    num_chips: int = 4
    seed: int = 0


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""
    from ..evaluation.reconstruction import load_pretraining_model
    from ..evaluation.visualize import save_reconstructions

    args = parse_arguments(ReconstructArguments, argv, main.__doc__)
    model, processor = load_pretraining_model(args.model_name_or_path)
    for path in save_reconstructions(model, processor, args.data_dir, args.output_dir, args.num_chips, args.seed):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
