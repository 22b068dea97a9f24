"""Pack chips into WebDataset tar shards (`.tif` + `.json` per sample).

python scripts/pack_webdataset.py chips/ --output_dir shards --chips_per_shard 256
"""

import sys

from clay_hf.commands.pack_webdataset import main

if __name__ == "__main__":
    sys.exit(main())
