"""Loader throughput: raw rasterio reads vs the streaming loader vs the loader through a DataLoader, in one run.

    python benchmarks/bench_loader.py --num_chips 32 --chip_size 512 --num_workers 2

Writes synthetic 13-band float32 chips twice (deflate and uncompressed) into a temporary folder, then prints
chips/s for each way of reading, and for deflate also with GDAL_NUM_THREADS=1 and ALL_CPUS.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio

from clay_hf.data import ChipLayout, chip_dataloader, load_geotiff_dataset, resolve_sources, write_synthetic_chips


def copy_uncompressed(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with rasterio.open(path) as source:
            profile = {**source.profile, "compress": None}
            with rasterio.open(folder / path.name, "w", **profile) as target:
                target.write(source.read())
                target.update_tags(**source.tags())


def rate(fn, count: int, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        seen = fn()
        best = min(best, time.perf_counter() - start)
        assert seen == count, (seen, count)
    return count / best


def raw_reads(paths: list[str]) -> int:
    for path in paths:
        with rasterio.open(path) as dataset:
            dataset.read()
    return len(paths)


def streaming(folder: Path, layout: ChipLayout) -> int:
    return sum(1 for _ in load_geotiff_dataset(folder, num_shards=8, layout=layout))


def dataloader(folder: Path, layout: ChipLayout, workers: int, batch_size: int) -> int:
    loader = chip_dataloader(load_geotiff_dataset(folder, num_workers=workers, layout=layout), batch_size, workers)
    return sum(len(batch["source_url"]) for batch in loader)


def measure(
    name: str, folder: Path, threads: str, num_chips: int, num_workers: int, batch_size: int, chip_size: int
) -> None:
    """One row of the table, in a process whose GDAL has only ever run with `threads`.

    (A parent that decoded with GDAL_NUM_THREADS>1 holds a GDAL thread pool that a forked DataLoader worker
    inherits in a broken state: the worker deadlocks. Each row therefore runs in a fresh process.)
    """
    os.environ["GDAL_NUM_THREADS"] = threads
    files = resolve_sources(folder)
    layout = ChipLayout(size=(chip_size, chip_size))
    raw_rate = rate(lambda: raw_reads(files), num_chips)
    stream_rate = rate(lambda: streaming(folder, layout), num_chips)
    loader_rate = rate(lambda: dataloader(folder, layout, num_workers, batch_size), num_chips)
    print(
        f"{name:<14}{threads:<18}{raw_rate:>12.1f}/s{stream_rate:>10.1f}/s{stream_rate / raw_rate:>8.0%}"
        f"{loader_rate:>14.1f}/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_chips", type=int, default=32)
    parser.add_argument("--chip_size", type=int, default=512)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--row", nargs=3, metavar=("NAME", "FOLDER", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        name, folder, threads = args.row
        measure(name, Path(folder), threads, args.num_chips, args.num_workers, args.batch_size, args.chip_size)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, GDAL {rasterio.__gdal_version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        deflate = Path(tmp) / "deflate"
        paths = write_synthetic_chips(deflate, args.num_chips, size=args.chip_size)
        raw = Path(tmp) / "raw"
        copy_uncompressed(paths, raw)
        print(f"{args.num_chips} chips of 13×{args.chip_size}×{args.chip_size} float32, best of 2 passes")
        header = f"{'files':<14}{'GDAL_NUM_THREADS':<18}{'raw rasterio':>14}{'streaming':>12}{'ratio':>8}"
        print(header + f"{'DataLoader×' + str(args.num_workers):>16}", flush=True)
        common = ["--num_chips", str(args.num_chips), "--num_workers", str(args.num_workers)]
        common += ["--batch_size", str(args.batch_size), "--chip_size", str(args.chip_size)]
        for name, folder, threads in [
            ("deflate", deflate, "1"),
            ("deflate", deflate, "ALL_CPUS"),
            ("uncompressed", raw, "1"),
        ]:
            subprocess.run([sys.executable, __file__, *common, "--row", name, str(folder), threads], check=True)


if __name__ == "__main__":
    main()
