"""`clay-linear-probe`: Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed
split."""

from __future__ import annotations

import argparse
import sys

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed split."""
    import json

    from ..evaluation.probe import labels_from_csv, labels_from_folders, linear_probe
    from ..inference.embeddings import load_encoder
    from ..utils.outputs import write_json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", help="chips in class folders: DATA_DIR/<label>/*.tif")
    parser.add_argument("--labels", help="a CSV with 'path' and 'label' columns (instead of class folders)")
    parser.add_argument("--test_size", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.data_dir or args.labels):
        parser.error("give --data_dir (class folders) or --labels (CSV)")
    labels = labels_from_csv(args.labels) if args.labels else labels_from_folders(args.data_dir)
    model, processor = load_encoder(args.model_name_or_path)
    results = linear_probe(model, processor, labels, args.test_size, args.seed)
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
