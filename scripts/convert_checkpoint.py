"""Convert an original Clay v0 Lightning checkpoint into a transformers folder (also: `clay-convert-checkpoint`).

python scripts/convert_checkpoint.py --checkpoint Clay_v0.1_epoch-24_val-loss-0.46.ckpt --output_dir clay-v0.1
"""

import sys

from clay_hf.commands.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
