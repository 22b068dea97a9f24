"""`clay-evaluate`: Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""

from __future__ import annotations

import argparse
import sys

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""
    import json

    from ..evaluation.reconstruction import (
        MASKINGS,
        SPLITS,
        evaluate_reconstruction,
        load_pretraining_model,
        write_eval_results,
    )
    from ..models.clay.image_processing_clay import parse_fill_value

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True, help="where eval_results.json goes (e.g. the model folder)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="validation",
        help="chips of the training run's hash split of --data_dir (default: validation), or all of them",
    )
    parser.add_argument("--validation_fraction", type=float, default=0.2, help="as the training run's (default 0.2)")
    parser.add_argument(
        "--masking",
        choices=MASKINGS,
        default="random",
        help="random: per-chip masks from --seed, every group measured (default, as training's validation); "
        "v0: v0's validation masking (no shuffle), which never masks the last band groups",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masking")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_chips", type=int, help="evaluate exactly this many chips (the first readable ones)")
    parser.add_argument(
        "--fill_value",
        type=parse_fill_value,
        help="use chips with nodata filled ('mean' or a raw value); default: skip them as bad chips",
    )
    args = parser.parse_args(argv)
    model, processor = load_pretraining_model(args.model_name_or_path)
    results = evaluate_reconstruction(
        model, processor, args.data_dir, args.batch_size, masking=args.masking, seed=args.seed,
        max_chips=args.max_chips, split=args.split, validation_fraction=args.validation_fraction,
        fill_value=args.fill_value,
    )  # fmt: skip
    path = write_eval_results(results, args.output_dir)
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
