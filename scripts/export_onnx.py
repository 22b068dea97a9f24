"""Export the Clay encoder to ONNX (inputs pixel_values, timestep, latlon; dynamic batch and image size).

python scripts/export_onnx.py --model_name_or_path made-with-clay/Clay --output encoder.onnx
"""

import sys

from clay_hf.commands.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
