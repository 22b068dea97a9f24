"""The end-to-end demo behind `make demo`, on built-in synthetic data.

Synthetic v0 chips → pretraining of a tiny Clay on 2 CPU processes (DDP) with `accelerate launch` → a
transformers folder → an embedding through `AutoModel` and `AutoImageProcessor` → embeddings of every chip as
GeoParquet → reconstruction PNGs → the masked reconstruction error in `eval_results.json` → a staged Hub repository
with its model card.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModel

from .data import read_chip, write_synthetic_chips
from .embeddings import embed_to_geoparquet
from .evaluation import evaluate_reconstruction, load_pretraining_model, write_eval_results
from .hub import stage_repository
from .visualize import save_reconstructions


def pretrain_command(chips: Path, model_dir: Path, num_processes: int, steps: int) -> list[str]:
    """`accelerate launch` of scripts/pretrain.py for a tiny Clay on the CPU."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no"]
    launch += ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--cpu"]
    return [
        *launch, "--module", "clay_hf.training",  # the installed package: works without a source checkout
        "--train_dir", str(chips), "--output_dir", str(model_dir),
        "--config_name", "tiny", "--image_size", "64", "--patch_size", "8",
        "--max_train_steps", str(steps), "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--learning_rate", "5e-4", "--lr_scheduler", "cosine_with_warmup", "--num_warmup_steps", "20",
        "--eval_steps", "100", "--checkpointing_steps", "100", "--logging_steps", "10", "--report_to", "tensorboard",
    ]  # fmt: skip


def training_artifacts(model_dir: Path) -> list[str]:
    """What the training run wrote, naming only folders that exist (no checkpoints line when none was written)."""
    lines = [f"model, processor and training summary: {model_dir}"]
    checkpoints = model_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        lines.append(f"checkpoints: {checkpoints}")
    if (model_dir / "clay_pretrain").is_dir():
        lines.append(f"TensorBoard logs: {model_dir / 'clay_pretrain'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--num_chips", type=int, default=96)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--max_train_steps", type=int, default=200)
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    chips, model_dir = output_dir / "chips", output_dir / "model"
    for folder in (chips, model_dir, output_dir / "reconstructions", output_dir / "hub"):  # the demo's own folders
        shutil.rmtree(folder, ignore_errors=True)

    write_synthetic_chips(chips, args.num_chips, size=64, seed=0)
    print(f"[1/7] {args.num_chips} synthetic 13-band chips (64×64, UTM, dated): {chips}", flush=True)

    print(f"[2/7] pretraining a tiny Clay for {args.max_train_steps} steps on {args.num_processes} CPU processes")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(pretrain_command(chips, model_dir, args.num_processes, args.max_train_steps), check=True, env=env)
    for line in training_artifacts(model_dir):
        print(f"      {line}")

    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    chip = read_chip(sorted(chips.glob("*.tif"))[0])
    inputs = processor(chip.pixels, dates=chip.date, lonlat=(chip.lon, chip.lat))
    with torch.no_grad():
        embedding = model(**inputs).pooler_output[0]
    print(f"[3/7] {type(model).__name__} embedding of {Path(chip.source_url).name} ({embedding.numel()} values):")
    print("      " + " ".join(f"{value:+.3f}" for value in embedding[:8].tolist()) + " …")

    run = embed_to_geoparquet(model, processor, chips, output_dir / "embeddings.parquet", progress=False)
    print(f"[4/7] embeddings of {run.embedded} chips (GeoParquet, OGC:CRS84): {run.output}")

    mim, mim_processor = load_pretraining_model(str(model_dir))
    pngs = save_reconstructions(mim, mim_processor, chips, output_dir / "reconstructions", num_chips=3)
    print(f"[5/7] reconstructions of {len(pngs)} chips: {pngs[0].parent}")

    results = evaluate_reconstruction(mim, mim_processor, chips)
    path = write_eval_results(results, model_dir)
    print(
        f"[6/7] masked reconstruction MSE {results['masked_mse']:.4f} on the {results['num_chips']} validation chips "
        f"(random masking, seed {results['masking_seed']}): {path}"
    )

    staged = stage_repository(model_dir, output_dir / "hub" / "Clay", "made-with-clay/Clay")
    print(f"[7/7] Hub repository staged ({len(staged.files)} files; upload with clay-publish): {staged.folder}")
    print(f"      model card: {staged.folder / 'README.md'}")


if __name__ == "__main__":
    main()
