"""The GPU suite, in one command on a machine with a GPU (see benchmarks/gpu_suite.sh):

    python benchmarks/bench_gpu.py --output benchmarks/results/gpu_suite.json

1. the card, its nominal dense bf16 peak (a table of known cards, or --peak_tflops) and a measured bf16 matmul peak;
2. encoder inference and a training step (forward, backward, fused AdamW) of `small` at 512×512, bf16 autocast,
   sdpa, at batch 1, 2, 4, … up to the largest that fits: chips/s, MFU against the nominal and the measured peak,
   peak memory;
3. the loader alone: Clay shards on local disk through `chip_dataloader` with --num_workers workers, pinned;
4. `scripts/pretrain.py` end to end from those shards (bf16, --num_workers workers), run for two lengths: chips/s
   of the whole loop (the difference of the two runs, so start-up cancels) beside the model alone at that batch;
5. a check that batches copied one step ahead (`DevicePrefetcher`) equal the loader's, with the same resume point.

Everything prints as it goes and lands in --output. `--device cpu --config_name tiny --image_size 64` runs the
same steps on a CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from clay_hf import ClayConfig
from clay_hf.chipping import write_synthetic_chips
from clay_hf.data import ChipLayout, chip_dataloader, load_chip_dataset, pack_shards
from clay_hf.models.benchmarking import run_inference, run_train_step
from clay_hf.utils.benchmarking import machine_description, matmul_peak

REPO = Path(__file__).resolve().parents[1]
#: Nominal dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a part of the name torch reports.
NOMINAL_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 80GB HBM3": 989.4,  # SXM
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # an unknown H100 variant: the lowest, so MFU is not overstated
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def nominal_peak(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, tflops in NOMINAL_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def log(record: dict, results: list[dict], text: str) -> None:
    results.append(record)
    print(text, flush=True)


def sweep(task: str, args, config: ClayConfig, device, nominal: float | None, results: list[dict]) -> dict | None:
    """Batch 1, 2, 4, … until memory runs out (or --max_batch); returns the row of the largest batch that fit."""
    best, batch = None, 1
    while batch <= args.max_batch:
        peak = matmul_peak(device, torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if task == "inference":
                row = run_inference(config, "sdpa", "bf16", batch, device, peak, args.repeats, args.compile)
            else:
                row = run_train_step(config, "sdpa", "bf16", False, batch, device, peak, args.repeats)
        except torch.OutOfMemoryError:
            print(f"{task:<10} batch {batch:>4}: out of memory", flush=True)
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        record = {"section": task, **row.to_dict()}
        record["mfu_vs_nominal"] = None if nominal is None else row.model_tflops_per_second / nominal
        nominal_text = "" if nominal is None else f"{record['mfu_vs_nominal']:>8.1%} of nominal"
        log(record, results,
            f"{task:<10} batch {batch:>4}: {row.chips_per_second:>9.1f} chips/s {row.model_tflops_per_second:>8.1f} "
            f"TFLOP/s {nominal_text} {row.mfu:>7.1%} of measured {row.peak_memory_gib:>7.2f} GiB")  # fmt: skip
        best, batch = record, batch * 2
    return best


def _synthetic(job: tuple[str, int, int, int]) -> list[str]:
    folder, count, size, seed = job
    return [str(path) for path in write_synthetic_chips(folder, count, size=size, seed=seed)]


def prepare_shards(work: Path, args) -> Path:
    """--unique synthetic chips written in parallel, packed --records times over into shards on local disk."""
    shards = work / "shards"
    if shards.exists():
        return shards
    jobs = [(str(work / f"chips{i}"), args.unique // args.cpus, args.image_size, i) for i in range(args.cpus)]
    with ProcessPoolExecutor(args.cpus) as pool:
        paths = [path for chunk in pool.map(_synthetic, jobs) for path in chunk]
    repeats = -(-args.records // len(paths))
    report = pack_shards((paths * repeats)[: args.records], shards, chips_per_shard=128, num_workers=args.cpus)
    print(f"packed {report.chips} records ({len(paths)} unique chips) into {len(report.shards)} shards", flush=True)
    return shards


def loader_alone(shards: Path, args, device, results: list[dict]) -> None:
    dataset = load_chip_dataset(shards, num_workers=args.num_workers, layout=ChipLayout(size=(args.image_size,) * 2))
    loader = chip_dataloader(
        dataset, args.loader_batch, args.num_workers, pin_memory=device.type == "cuda", persistent_workers=False
    )
    iterator, seen = iter(loader), 0
    for _ in range(2):  # workers started, page cache warm
        seen += len(next(iterator, {"source_url": []})["source_url"])
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch["source_url"])
    rate = seen / (time.perf_counter() - start)
    log({"section": "loader", "workers": args.num_workers, "chips_per_second": rate}, results,
        f"loader alone, {args.num_workers} workers, pinned: {rate:.1f} chips/s")  # fmt: skip


def pretrain_run(shards: Path, output: Path, steps: int, batch: int, args, device) -> tuple[dict, float]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--dynamo_backend", "no", "--mixed_precision", "bf16" if device.type == "cuda" else "no",
               str(REPO / "scripts" / "pretrain.py"), "--train_dir", str(shards), "--output_dir", str(output),
               "--config_name", args.config_name, "--image_size", str(args.image_size),
               "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
               "--max_train_steps", str(steps), "--dataloader_num_workers", str(args.num_workers),
               "--report_to", "none", "--max_eval_chips", str(batch), "--logging_steps", "50"]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"} if device.type == "cpu" else dict(os.environ)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - start
    return json.loads((output / "training_summary.json").read_text()), wall


def end_to_end(shards: Path, work: Path, batch: int, model_rate: float | None, args, device, results) -> None:
    short, short_wall = pretrain_run(shards, work / "run_short", args.steps // 4, batch, args, device)
    long, long_wall = pretrain_run(shards, work / "run_long", args.steps, batch, args, device)
    rate = (long["chips_seen"] - short["chips_seen"]) / (long_wall - short_wall)
    ratio = "" if not model_rate else f" = {rate / model_rate:.0%} of the model alone ({model_rate:.1f} chips/s)"
    log({"section": "pretrain", "batch_size": batch, "steps": [args.steps // 4, args.steps],
         "walls": [short_wall, long_wall], "chips_per_second": rate, "model_alone_chips_per_second": model_rate},
        results, f"pretrain.py end to end, batch {batch}: {rate:.1f} chips/s of the whole loop{ratio}")  # fmt: skip


def prefetch_check(shards: Path, device, results: list[dict], image_size: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from clay_hf.data.dataset import collate_chips
    from clay_hf.training.prefetch import DevicePrefetcher

    def make():
        dataset = load_chip_dataset(shards, num_shards=4, layout=ChipLayout(size=(image_size, image_size)))
        return StatefulDataLoader(dataset, batch_size=2, collate_fn=collate_chips, pin_memory=device.type == "cuda")

    plain = [batch["pixels"].double().sum().item() for _, batch in zip(range(4), make(), strict=False)]
    wrapped = DevicePrefetcher(make(), device)
    iterator = iter(wrapped)
    ahead = [next(iterator)["pixels"].double().sum().item() for _ in range(2)]
    resumed = DevicePrefetcher(make(), device)
    resumed.load_state_dict(wrapped.state_dict())
    ahead += [batch["pixels"].double().sum().item() for _, batch in zip(range(2), resumed, strict=False)]
    same = ahead == plain
    log({"section": "prefetch_check", "identical": same}, results,
        f"prefetcher on {device}: same batches and resume point as the plain loader: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config_name", default="small")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--max_batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the inference rows")
    parser.add_argument("--peak_tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    parser.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="processes preparing the shards")
    parser.add_argument("--unique", type=int, default=64, help="synthetic chips written")
    parser.add_argument("--records", type=int, default=4096, help="records packed (the chips repeated)")
    parser.add_argument("--loader_batch", type=int, default=32)
    parser.add_argument("--train_batch", type=int, help="pretrain.py's batch (default: the largest that fit, ≤ 64)")
    parser.add_argument("--steps", type=int, default=240, help="optimizer steps of the long pretrain.py run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inference", "train", "loader", "pretrain"])
    parser.add_argument("--work_dir", default=None, help="local disk for shards and runs (default: a temp folder)")
    parser.add_argument("--output", default="gpu_suite.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = machine_description(device)
    nominal = nominal_peak(machine["device"], args.peak_tflops)
    measured = matmul_peak(device, torch.bfloat16) / 1e12
    print(f"device: {machine['device']}, {machine['cpu_count']} CPU cores, torch {machine['torch']}")
    print(f"bf16 peak: nominal {nominal or 'unknown (give --peak_tflops)'} TFLOP/s, measured matmul {measured:.1f}")
    results: list[dict] = []
    report = {"machine": machine, "nominal_bf16_tflops": nominal, "measured_bf16_tflops": measured, "rows": results}
    config = ClayConfig.from_preset(args.config_name, image_size=args.image_size)
    try:
        if "inference" not in args.skip:
            sweep("inference", args, config, device, nominal, results)
        train = None if "train" in args.skip else sweep("train_step", args, config, device, nominal, results)
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="clay-gpu-bench-"))
        if not {"loader", "pretrain"} <= set(args.skip):
            shards = prepare_shards(work, args)
            prefetch_check(shards, device, results, args.image_size)
            if "loader" not in args.skip:
                loader_alone(shards, args, device, results)
            if "pretrain" not in args.skip:
                batch = args.train_batch or min(64, train["batch_size"] if train else 16)
                model_rate = None
                if train is not None:
                    rows = [r for r in results if r["section"] == "train_step" and r["batch_size"] == batch]
                    model_rate = rows[0]["chips_per_second"] if rows else None
                end_to_end(shards, work, batch, model_rate, args, device, results)
    finally:
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
