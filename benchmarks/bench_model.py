"""Speed, memory and model FLOP utilisation of Clay, in ONE run on whatever machine runs it.

    python benchmarks/bench_model.py                         # small config, 512×512, everything
    python benchmarks/bench_model.py --task train --batch_sizes 4 --output results.json

Prints the machine's measured fp32 and bf16 matmul peaks, then for encoder inference (no masking) and one
pretraining step (mask ratio 0.75, forward + backward + AdamW): chips/s, peak memory and MFU (analytic model
FLOPs / time / the same run's peak) for eager and sdpa attention, fp32 and bf16 autocast, and training with
gradient checkpointing. Each configuration runs in a fresh process, so peak memory is its own. On the CPU the
training rows fix glibc's malloc mmap threshold as scripts/pretrain.py does (`--cpu_malloc_mmap_threshold 0`
measures glibc's default). Results also go to a JSON file with the machine described.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import torch

from clay_hf import ClayConfig
from clay_hf.models.benchmarking import run_inference, run_train_step
from clay_hf.utils.benchmarking import machine_description, matmul_peak
from clay_hf.utils.memory import GLIBC_DEFAULT_MMAP_THRESHOLD

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["inference", "train", "all"], default="all")
    parser.add_argument("--config_name", default="small", help="a v0 preset")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default: 1 4 (and 16 on a GPU)")
    parser.add_argument("--attn", nargs="+", default=["eager", "sdpa"])
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="default: fp32 and bf16, bf16 left out on a CPU without native bf16 matmuls; given, run as asked",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cpu_malloc_mmap_threshold",
        type=int,
        default=GLIBC_DEFAULT_MMAP_THRESHOLD,
        help="training rows on the CPU: as scripts/pretrain.py's option (0: glibc's dynamic threshold)",
    )
    parser.add_argument("--output", default="bench_model_results.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print its JSON
    return parser.parse_args(argv)


def run_one(spec: dict, args: argparse.Namespace) -> dict:
    """One configuration, relative to the matmul peak measured just before it in the same process: on machines
    whose speed drifts (shared virtual CPUs, GPU clocks), a peak from minutes earlier would skew its MFU."""
    device = torch.device(args.device)
    config = ClayConfig.from_preset(args.config_name, image_size=args.image_size)
    peak = matmul_peak(device, DTYPES[spec["precision"]])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # the matmul's operands are not the model's memory
    if spec["task"] == "inference":
        result = run_inference(
            config, spec["attn"], spec["precision"], spec["batch_size"], device, peak, args.repeats, spec["compiled"]
        )
    else:
        result = run_train_step(
            config,
            spec["attn"],
            spec["precision"],
            spec["checkpointing"],
            spec["batch_size"],
            device,
            peak,
            args.repeats,
            args.cpu_malloc_mmap_threshold,
        )
    return result.to_dict()


def configurations(args: argparse.Namespace, device: torch.device) -> list[dict]:
    batch_sizes = args.batch_sizes or ([1, 4, 16] if device.type == "cuda" else [1, 4])
    specs = []
    tasks = ["inference", "train"] if args.task == "all" else [args.task]
    for task, batch, precision, attn in itertools.product(tasks, batch_sizes, args.precisions, args.attn):
        for checkpointing in [False, True] if task == "train" else [False]:
            specs.append(
                dict(task=task, batch_size=batch, precision=precision, attn=attn, checkpointing=checkpointing,
                     compiled=False)
            )  # fmt: skip
        if task == "inference" and attn == "sdpa" and args.compile:
            specs.append({**specs[-1], "compiled": True})
    return specs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one), args)))
        return
    device = torch.device(args.device)
    peaks = {name: matmul_peak(device, dtype) for name, dtype in DTYPES.items()}
    machine = machine_description(device)
    print(
        f"machine: {machine['device']} ({machine['device_type']}), {machine['cpu_count']} cores, torch {machine['torch']}"
    )
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"]
        if device.type == "cpu" and peaks["bf16"] < 0.2 * peaks["fp32"]:
            args.precisions = ["fp32"]
            print("bf16 skipped: this CPU has no native bf16 matmul (its peak is a small fraction of fp32's);")
            print("  `--precisions bf16` runs it anyway, slowly")
    print(f"config: {args.config_name} at {args.image_size}×{args.image_size}")
    if device.type == "cpu" and args.task != "inference":
        print(f"training rows: malloc mmap threshold {args.cpu_malloc_mmap_threshold or 'dynamic (glibc default)'}")
    header = f"{'task':<21}{'attn':<7}{'prec':<6}{'ckpt':<6}{'batch':>5}{'s/iter':>9}{'chips/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'of TF/s':>9}{'peak GiB':>10}"
    print(header, flush=True)
    results = []
    for spec in configurations(args, device):
        forwarded = sys.argv[1:] if argv is None else argv
        command = [sys.executable, __file__, *forwarded, "--one", json.dumps(spec)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            print(
                f"{spec['task']:<11}{spec['attn']:<7}{spec['precision']:<6} failed: {run.stderr.strip().splitlines()[-1]}"
            )
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{result['task'] + (' (compiled)' if result['compiled'] else ''):<21}{result['attn_implementation']:<7}{result['precision']:<6}"
            f"{'yes' if result['gradient_checkpointing'] else 'no':<6}{result['batch_size']:>5}{result['seconds']:>9.3f}"
            f"{result['chips_per_second']:>9.2f}{result['model_tflops_per_second']:>9.3f}{result['mfu']:>7.1%}"
            f"{result['matmul_peak_tflops']:>9.3f}"
            f"{result['peak_memory_gib']:>10.2f}",
            flush=True,
        )
    report = {
        "machine": machine,
        "matmul_peak_flops": peaks,
        "config": args.config_name,
        "image_size": args.image_size,
        "cpu_malloc_mmap_threshold": args.cpu_malloc_mmap_threshold if device.type == "cpu" else None,
        "results": results,
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
