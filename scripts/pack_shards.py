"""Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format.

python scripts/pack_shards.py chips/ --output_dir shards --chips_per_shard 256 [--codec zstd:-1|zstd:LEVEL|lz4:LEVEL|none]
    [--shuffle float|all|none] [--num_workers 8]
"""

import sys

from clay_hf.commands.pack_shards import main

if __name__ == "__main__":
    sys.exit(main())
