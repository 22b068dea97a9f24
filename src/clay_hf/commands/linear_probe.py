"""`clay-linear-probe`: Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed
split."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..utils.errors import user_errors
from ._common import CommandParser


@dataclass(kw_only=True)
class LinearProbeArguments:
    """The arguments of `clay-linear-probe`: the chips by class folders (`data_dir`) or by a CSV (`labels`)."""

    model_name_or_path: str
    data_dir: str | None = field(default=None, metadata={"help": "chips in class folders: DATA_DIR/<label>/*.tif"})
    labels: str | None = field(
        default=None, metadata={"help": "a CSV with 'path' and 'label' columns (instead of class folders)"}
    )
    test_size: float = 0.3
    seed: int = 0
    output: str | None = field(default=None, metadata={"help": "write the results as JSON here"})


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed split."""
    import json
    from contextlib import nullcontext

    from ..evaluation.probe import labels_from_csv, labels_from_folders, linear_probe
    from ..inference.embeddings import load_encoder
    from ..utils.outputs import OutputLock, write_json

    parser = CommandParser(LinearProbeArguments, description=main.__doc__)
    (args,) = parser.parse(argv)
    if not (args.data_dir or args.labels):
        parser.error("give --data_dir (class folders) or --labels (CSV)")
    labels = labels_from_csv(args.labels) if args.labels else labels_from_folders(args.data_dir)
    with OutputLock(args.output) if args.output else nullcontext():  # one run per results file, taken first
        model, processor = load_encoder(args.model_name_or_path)
        results = linear_probe(model, processor, labels, args.test_size, args.seed)
        print(json.dumps(results, indent=2))
        if args.output:
            write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
