"""`clay-reconstruct`: Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""

from __future__ import annotations

import argparse
import sys

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""
    from ..evaluation.reconstruction import load_pretraining_model
    from ..evaluation.visualize import save_reconstructions

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_chips", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, processor = load_pretraining_model(args.model_name_or_path)
    for path in save_reconstructions(model, processor, args.data_dir, args.output_dir, args.num_chips, args.seed):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
