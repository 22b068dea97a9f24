"""Predict with a fine-tuned Clay: class maps as GeoTIFFs (segmentation) or chip classes as GeoParquet.

    python scripts/predict.py --model_name_or_path runs/floods --data_dir scenes/ --output_dir preds/

Run `python scripts/predict.py --help` for every flag.
"""

import sys

from clay_hf.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
