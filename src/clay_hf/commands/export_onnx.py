"""`export_onnx.py --model_name_or_path M --output encoder.onnx` (the `clay-export-onnx` console script)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Export the Clay encoder to ONNX and check ONNX Runtime against PyTorch at batch 1 and 3."""
    from ..export.onnx import OnnxEncoder, export_onnx, max_difference
    from ..inference.embeddings import load_encoder

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model_name_or_path", required=True, help="a save_pretrained folder or a Hub id")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--fixed_image_size", action="store_true", help="trace at config.image_size only")
    parser.add_argument("--opset_version", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest difference from PyTorch accepted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, processor = load_encoder(args.model_name_or_path)
    path = export_onnx(model, args.output, processor, not args.fixed_image_size, args.opset_version)
    encoder = OnnxEncoder(path)
    patches = model.config.image_size // model.config.patch_size if args.fixed_image_size else 3
    differences = {batch: max_difference(model, encoder, batch, patches) for batch in (1, 3)}
    print(
        f"wrote {path}; largest difference from PyTorch: "
        + ", ".join(f"batch {b}: {d:.2e}" for b, d in differences.items())
    )
    return 0 if max(differences.values()) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
