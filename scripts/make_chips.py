"""Cut GeoTIFFs into 512×512 v0-format chips, or write synthetic chips.

python scripts/make_chips.py scene.tif --output_dir chips --date 2023-06-01
python scripts/make_chips.py --synthetic 64 --output_dir chips
"""

import sys

from clay_hf.commands.make_chips import main

if __name__ == "__main__":
    sys.exit(main())
