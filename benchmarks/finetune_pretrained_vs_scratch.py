"""What pretraining buys, on a tiny synthetic flood task: pretrained vs from scratch, frozen encoder vs full.

    python benchmarks/finetune_pretrained_vs_scratch.py --output_dir /tmp/ft_compare

1. writes unlabelled synthetic chips and pretrains a tiny Clay on them with `scripts/pretrain.py`'s loop;
2. writes a few labelled chips (water where a smooth field is high; the label follows the bands) and a held-out set;
3. fine-tunes the same architecture four ways with `scripts/finetune.py`'s `Trainer` loop and prints mIoU and pixel
   accuracy on the held-out chips beside the majority-class accuracy.

A toy: a 2-layer encoder of width 32 on 64×64 chips, minutes of CPU. It shows the machinery, not Clay v0's value.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from clay_hf.commands.finetune import run as finetune
from clay_hf.commands.pretrain import run as pretrain
from clay_hf.finetuning.synthetic import write_synthetic_segmentation
from clay_hf.testing_utils import toy_config

#: The toy config of the test suite on 64×64 chips, with narrow segmentation heads.
TINY = dict(image_size=64, neck_hidden_size=16, decode_hidden_size=16)


def majority_accuracy(labels_dir: Path) -> float:
    import rasterio

    counts = np.zeros(256, dtype=np.int64)
    for path in labels_dir.glob("*.tif"):
        with rasterio.open(path) as dataset:
            counts += np.bincount(dataset.read(1).ravel(), minlength=256)
    return float(counts[:255].max() / counts[:255].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="ft_compare")
    parser.add_argument("--pretrain_chips", type=int, default=256)
    parser.add_argument("--pretrain_steps", type=int, default=600)
    parser.add_argument("--labelled_chips", type=int, default=16)
    parser.add_argument("--validation_chips", type=int, default=32)
    parser.add_argument("--finetune_steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    root = Path(args.output_dir)
    write_synthetic_segmentation(root / "unlabelled", args.pretrain_chips, seed=100)
    write_synthetic_segmentation(root / "train", args.labelled_chips, seed=200)
    write_synthetic_segmentation(root / "validation", args.validation_chips, seed=300)
    toy_config(**TINY).to_json_file(root / "tiny.json")

    started = time.perf_counter()
    pretrain(
        [
            *("--train_dir", str(root / "unlabelled" / "images"), "--output_dir", str(root / "pretrained")),
            *("--config_name", str(root / "tiny.json"), "--max_train_steps", str(args.pretrain_steps)),
            *("--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3"),
            *("--lr_scheduler", "cosine_with_warmup", "--num_warmup_steps", "50", "--report_to", "none"),
            *("--seed", str(args.seed), "--logging_steps", "100"),
        ]
    )
    pretrain_seconds = time.perf_counter() - started

    rows = []
    for from_scratch in (False, True):
        for freeze in (True, False):
            name = f"{'scratch' if from_scratch else 'pretrained'}-{'frozen' if freeze else 'full'}"
            started = time.perf_counter()
            results = finetune(
                [
                    *("--task", "semantic-segmentation", "--model_name_or_path", str(root / "pretrained")),
                    *("--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")),
                    *("--id2label", "land,water", "--output_dir", str(root / name), "--seed", str(args.seed)),
                    *("--max_steps", str(args.finetune_steps), "--per_device_train_batch_size", "4"),
                    *("--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--use_cpu"),
                    *("--disable_tqdm", "true", "--decode_head_type", "fcn", "--augment"),
                    *(["--from_scratch"] if from_scratch else []),
                    *(["--freeze_encoder"] if freeze else []),
                ]
            )
            rows.append(
                {
                    "encoder": "from scratch" if from_scratch else "pretrained",
                    "training": "frozen encoder" if freeze else "full",
                    "mean_iou": results["metrics"]["mean_iou"],
                    "pixel_accuracy": results["metrics"]["pixel_accuracy"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    majority = majority_accuracy(root / "validation" / "labels")
    print(f"pretraining: {args.pretrain_steps} steps on {args.pretrain_chips} chips in {pretrain_seconds:.0f} s")
    print(f"held-out chips: {args.validation_chips}; majority-class pixel accuracy {majority:.3f}")
    print("| encoder | training | mIoU | pixel accuracy |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['encoder']} | {row['training']} | {row['mean_iou']:.3f} | {row['pixel_accuracy']:.3f} |")
    summary = {
        "majority_accuracy": majority,
        "rows": rows,
        "arguments": vars(args),
        "pretrain_seconds": pretrain_seconds,
    }
    (root / "comparison.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
