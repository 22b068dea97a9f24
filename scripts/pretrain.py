"""Pretrain Clay v0 with Accelerate.

    accelerate launch scripts/pretrain.py --train_dir chips/ --output_dir runs/clay-small
    accelerate launch --config_file configs/accelerate_4gpu_bf16.yaml scripts/pretrain.py --train_dir s3://… --output_dir …

Run `python scripts/pretrain.py --help` for every flag; the defaults reproduce the v0 recipe.
"""

import sys

from clay_hf.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
