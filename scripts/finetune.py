"""Fine-tune Clay on labelled chips with `transformers.Trainer`.

    python scripts/finetune.py --task semantic-segmentation --model_name_or_path clay-v0.1 --train_dir floods/ \
        --num_labels 2 --output_dir runs/floods --num_train_epochs 10 --per_device_train_batch_size 8
    accelerate launch scripts/finetune.py …   # several devices

Run `python scripts/finetune.py --help` for every flag (TrainingArguments included).
"""

import sys

from clay_hf.commands.finetune import main

if __name__ == "__main__":
    sys.exit(main())
