"""Speed and peak memory of one fine-tuning step of `ClayForSemanticSegmentation`: frozen encoder vs full.

    python benchmarks/bench_finetune.py --config small --image_size 512 --batch_size 4

One optimizer step = forward over the whole chip (no masking), cross-entropy, backward, AdamW over the trainable
parameters; timed after two warm-up steps (AdamW's state exists). Each row runs in a fresh process, so the peak
memory (CUDA's allocator peak, or the CPU's peak resident set) is that row's alone. On the CPU, glibc's malloc
mmap threshold is fixed as the training scripts fix it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from clay_hf import ClayConfig, ClayForSemanticSegmentation
from clay_hf.utils.benchmarking import machine_description, matmul_peak, peak_memory_bytes, time_call
from clay_hf.utils.memory import GLIBC_DEFAULT_MMAP_THRESHOLD, configure_training_malloc


def run_row(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    configure_training_malloc(device, GLIBC_DEFAULT_MMAP_THRESHOLD)
    config = ClayConfig.from_preset(args.config, image_size=args.image_size, num_labels=2)
    config.decode_head_type = args.head
    torch.manual_seed(0)
    model = ClayForSemanticSegmentation(config).to(device).train()
    if args.row == "frozen":
        model.freeze_encoder()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    size = args.image_size
    inputs = {
        "pixel_values": torch.randn(args.batch_size, config.num_channels, size, size, device=device),
        "timestep": torch.randn(args.batch_size, 3, device=device),
        "latlon": torch.randn(args.batch_size, 2, device=device),
        "labels": torch.randint(0, 2, (args.batch_size, size, size), device=device),
    }

    def step() -> None:
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_call(step, device, warmup=2, repeats=args.repeats)
    peak = matmul_peak(device, torch.float32)  # this machine's speed right after the row (shared CPUs drift)
    return {
        "row": args.row,
        "head": args.head,
        "config": args.config,
        "image_size": size,
        "batch_size": args.batch_size,
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
        "seconds_per_step": round(seconds, 3),
        "chips_per_second": round(args.batch_size / seconds, 3),
        "peak_memory_gib": round(peak_memory_bytes(device) / 2**30, 3),
        "matmul_peak_tflops_after": round(peak / 1e12, 4),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--head", default="upernet", choices=("upernet", "fcn"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="bench_finetune_results.json")
    parser.add_argument("--row", choices=("frozen", "full"), help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args)))
        return
    rows = []
    for row in ("frozen", "full"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--row", row], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    machine = machine_description(torch.device(args.device))
    print(
        f"machine: {machine['device']} ({machine['device_type']}), {machine['cpu_count']} cores, torch {machine['torch']}"
    )
    print(f"ClayForSemanticSegmentation ({args.head} head), {args.config} at {args.image_size}×{args.image_size}")
    print("encoder        batch  trainable params  s/step  chips/s  peak GiB  matmul TF/s  load")
    for row in rows:
        print(
            f"{row['row']:<14} {row['batch_size']:>5}  {row['trainable_parameters']:>16,}  {row['seconds_per_step']:>6.2f}"
            f"  {row['chips_per_second']:>7.3f}  {row['peak_memory_gib']:>8.2f}  {row['matmul_peak_tflops_after']:>11.3f}"
            f"  {row['load_average']:>4.1f}"
        )
    Path(args.output).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
