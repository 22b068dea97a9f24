"""The exported encoder on ONNX Runtime against PyTorch on the CPU, in one run.

    python benchmarks/bench_onnx.py --config_name small --image_size 512 --batch_sizes 1 4 \
        --output benchmarks/results/bench_onnx_cpu_2core_epyc.json

Builds a randomly initialised encoder of a v0 preset (speed does not depend on the weights), exports it with
`clay_hf.export.export_onnx` (dynamic batch and image size), then times encoder inference (no masking) in PyTorch
(fp32, sdpa attention) and in ONNX Runtime (CPU provider, all threads) at each batch size: median seconds of
`--repeats` calls after one warm-up, chips/s, and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from clay_hf import ClayConfig, ClayModel
from clay_hf.export import OnnxEncoder, export_onnx
from clay_hf.export.onnx import sample_inputs
from clay_hf.utils.benchmarking import machine_description, time_call, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_name", default="small", help="a v0 preset")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ClayConfig.from_preset(args.config_name)
    model = ClayModel(config).eval()
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = export_onnx(model, Path(folder) / "encoder.onnx")
        export_seconds = time.perf_counter() - start
        encoder = OnnxEncoder(path)
        patches = args.image_size // config.patch_size
        for batch_size in args.batch_sizes:
            inputs = sample_inputs(config, batch_size, patches)
            with torch.no_grad():
                expected = model(**inputs).pooler_output
                seconds = time_call(lambda inputs=inputs: model(**inputs), device, repeats=args.repeats)
            rows.append({"runtime": "pytorch", "batch_size": batch_size, "seconds": seconds})
            seconds = time_call(lambda inputs=inputs: encoder(**inputs), device, repeats=args.repeats)
            difference = float((encoder(**inputs).pooler_output - expected).abs().max())
            rows.append(
                {"runtime": "onnxruntime", "batch_size": batch_size, "seconds": seconds, "max_diff": difference}
            )
            for row in rows[-2:]:
                row["chips_per_second"] = batch_size / row["seconds"]
                print(row)
    results = {
        "machine": machine_description(device),
        "load_average_at_end": os.getloadavg(),  # other work on the machine slows every row
        "onnxruntime_threads": "default (all cores)",
        "config": args.config_name,
        "image_size": args.image_size,
        "export_seconds": export_seconds,
        "rows": rows,
    }
    write_results(results, args.output)


if __name__ == "__main__":
    main()
