"""`clay-evaluate`: Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..evaluation.reconstruction import MASKINGS, SPLITS
from ..models.clay.image_processing_clay import parse_fill_value
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock
from ._common import parse_arguments


@dataclass(kw_only=True)
class EvaluateArguments:
    """The arguments of `clay-evaluate`."""

    model_name_or_path: str
    data_dir: str
    output_dir: str = field(metadata={"help": "where eval_results.json goes (e.g. the model folder)"})
    split: str = field(
        default="validation",
        metadata={
            "help": "chips of the training run's hash split of --data_dir (default: validation), or all of them",
            "choices": SPLITS,
        },
    )
    validation_fraction: float = field(default=0.2, metadata={"help": "as the training run's (default 0.2)"})
    masking: str = field(
        default="random",
        metadata={
            "help": "random: per-chip masks from --seed, every group measured (default, as training's validation); "
            "v0: v0's validation masking (no shuffle), which never masks the last band groups",
            "choices": MASKINGS,
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the random masking"})
    batch_size: int = 8
    max_chips: int | None = field(
        default=None, metadata={"help": "evaluate exactly this many chips (the first readable ones)"}
    )
    fill_value: float | str | None = field(
        default=None,
        metadata={
            "help": "use chips with nodata filled ('mean' or a raw value); default: skip them as bad chips",
            "type": parse_fill_value,
        },
    )


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""
    import json

    from ..evaluation.reconstruction import evaluate_reconstruction, load_pretraining_model, write_eval_results

    args = parse_arguments(EvaluateArguments, argv, main.__doc__)
    # One writer per folder (OUTPUT_DIR.lock, beside it: never a file in the model folder), taken before the work.
    with OutputLock(args.output_dir):
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
