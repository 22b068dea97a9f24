"""Embed GeoTIFF chips with Clay and write GeoParquet (source_url, date, embeddings, geometry in OGC:CRS84).

python scripts/embed.py --model_name_or_path made-with-clay/Clay --data_dir chips/ --output embeddings.parquet
"""

import sys

from clay_hf.commands.embed import main

if __name__ == "__main__":
    sys.exit(main())
