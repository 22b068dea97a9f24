"""`clay-reconstruct`: Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..utils.errors import user_errors
from ..utils.outputs import OutputLock, make_folder, remove_partials
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
    """Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed); one run per
    output folder (it holds OUTPUT_DIR.lock)."""
    from ..evaluation.reconstruction import load_pretraining_model
    from ..evaluation.visualize import save_reconstructions

    args = parse_arguments(ReconstructArguments, argv, main.__doc__)
    with OutputLock(args.output_dir):  # one writer per folder; a killed run's partial PNGs go first
        remove_partials(make_folder(args.output_dir))
        model, processor = load_pretraining_model(args.model_name_or_path)
        written = save_reconstructions(model, processor, args.data_dir, args.output_dir, args.num_chips, args.seed)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
