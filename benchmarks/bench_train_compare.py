"""The training step of this checkout beside that of another git revision (default: main), alternately, in one run.

    python benchmarks/bench_train_compare.py --ref main --batch_size 4 --rounds 3 --output compare.json

Each measurement is a fresh process, so that its peak memory (resident set) is its own. It imports `clay_hf` either
from this checkout's src/ or from the other revision's src/, exported with `git archive` to a temporary folder, and
runs that revision's own `clay_hf.models.benchmarking.run_train_step`: its model, loss and optimizer, as its
scripts/pretrain.py sets them up (forward, backward, AdamW; s/step is the median of `--repeats` steps after two
warm-up steps). The revisions alternate, the first of each round swapping, so that the drift of a shared machine
falls on both alike. Printed: every measurement, then the medians of s/step and the largest peak of each revision.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the git revision to compare with (default: main)")
    parser.add_argument("--config_name", default="small", help="a v0 preset")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each revision, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (after two warm-ups)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cpu_malloc_mmap_threshold",
        type=int,
        default=None,
        help="as bench_model.py's option; default: each revision's own default",
    )
    parser.add_argument("--output", default="bench_train_compare.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args(argv)


def measure_one(args: argparse.Namespace) -> dict:
    """One training-step measurement with the `clay_hf` found first on the path (the revision under test)."""
    import clay_hf
    from clay_hf import ClayConfig
    from clay_hf.models.benchmarking import run_train_step

    config = ClayConfig.from_preset(args.config_name, image_size=args.image_size)
    threshold = (
        {} if args.cpu_malloc_mmap_threshold is None else {"malloc_mmap_threshold": args.cpu_malloc_mmap_threshold}
    )
    result = run_train_step(
        config,
        args.attn,
        args.precision,
        False,
        args.batch_size,
        torch.device(args.device),
        math.nan,  # no matmul peak: MFU is not this benchmark's figure
        args.repeats,
        **threshold,
    )
    return {"package": str(Path(clay_hf.__file__).parent), **result.to_dict()}


def export_revision(revision: str, destination: Path) -> Path:
    """`src/clay_hf` of `revision` written under `destination`; the folder to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", revision, "src/clay_hf"], capture_output=True
    )
    if archive.returncode != 0:
        raise SystemExit(f"cannot export src/clay_hf of git revision {revision!r}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination / "src"


def run_measurement(source: Path, argv: list[str]) -> dict:
    """A fresh process importing `clay_hf` from `source`; its JSON result."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--one"], capture_output=True, text=True, env=environment
    )
    if run.returncode != 0:
        raise SystemExit(f"the measurement with {source} failed:\n{run.stderr.strip()}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if Path(result["package"]) != source / "clay_hf":
        raise SystemExit(f"the measurement imported clay_hf from {result['package']}, not from {source}")
    return result


def git_description(revision: str) -> str:
    described = subprocess.run(
        ["git", "-C", str(REPOSITORY), "log", "-1", "--format=%h %s", revision], capture_output=True, text=True
    )
    return described.stdout.strip()[:100]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    from clay_hf.utils.benchmarking import machine_description

    machine = machine_description(torch.device(args.device))
    print(
        f"machine: {machine['device']} ({machine['device_type']}), {machine['cpu_count']} cores, torch {machine['torch']}"
    )
    print(
        f"training step of {args.config_name} at {args.image_size}×{args.image_size}, batch {args.batch_size}, "
        f"{args.attn}, {args.precision}; {args.rounds} rounds of {args.repeats} timed steps"
    )
    labels = {"ref": f"{args.ref} ({git_description(args.ref)})", "new": "this checkout (working tree)"}
    for key, label in labels.items():
        print(f"  {key}: {label}")
    print(f"{'round':>5}  {'rev':<4}{'s/step':>9}{'chips/s':>9}{'peak GiB':>10}", flush=True)
    results: dict[str, list[dict]] = {"ref": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="clay_ref_") as folder:
        sources = {"ref": export_revision(args.ref, Path(folder)), "new": REPOSITORY / "src"}
        for round_index in range(args.rounds):
            order = ["ref", "new"] if round_index % 2 == 0 else ["new", "ref"]
            for key in order:
                result = run_measurement(sources[key], argv)
                results[key].append(result)
                print(
                    f"{round_index + 1:>5}  {key:<4}{result['seconds']:>9.3f}{result['chips_per_second']:>9.3f}"
                    f"{result['peak_memory_gib']:>10.2f}",
                    flush=True,
                )
    summary = {
        key: {
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "max_peak_memory_gib": max(r["peak_memory_gib"] for r in runs),
        }
        for key, runs in results.items()
    }
    ratio = summary["ref"]["median_seconds"] / summary["new"]["median_seconds"]
    memory = summary["new"]["max_peak_memory_gib"] / summary["ref"]["max_peak_memory_gib"]
    for key in ("ref", "new"):
        print(
            f"median {key}: {summary[key]['median_seconds']:.3f} s/step, peak {summary[key]['max_peak_memory_gib']:.2f} GiB"
        )
    print(f"this checkout: {ratio:.3f}× the speed of {args.ref}, {memory:.3f}× its peak memory")
    report = {
        "machine": machine,
        "arguments": vars(args),
        "revisions": labels,
        "results": results,
        "summary": {**summary, "speedup": ratio, "memory_ratio": memory},
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
