"""`export_onnx.py --model_name_or_path M --output encoder.onnx` (the `clay-export-onnx` console script)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from ..utils.errors import user_errors
from ..utils.outputs import OutputLock
from ._common import parse_arguments


@dataclass(kw_only=True)
class ExportOnnxArguments:
    """The arguments of `clay-export-onnx`."""

    model_name_or_path: str = field(metadata={"help": "a save_pretrained folder or a Hub id"})
    output: str = field(metadata={"help": "the .onnx file to write"})
    fixed_image_size: bool = field(default=False, metadata={"help": "trace at config.image_size only"})
    opset_version: int | None = field(default=None, metadata={"help": "ONNX opset (default: the exporter's)"})
    tolerance: float = field(default=1e-4, metadata={"help": "largest difference from PyTorch accepted"})


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Export the Clay encoder to ONNX and check ONNX Runtime against PyTorch at batch 1 and 3 (one run per output:
    it holds OUTPUT.lock)."""
    from ..export.onnx import OnnxEncoder, export_onnx, max_difference
    from ..inference.embeddings import load_encoder

    args = parse_arguments(ExportOnnxArguments, argv, main.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with OutputLock(args.output):  # taken before the export: a second run on the same file stops at once
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
