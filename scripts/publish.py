"""Publish a Clay model folder to the Hub: weights, processor, remote code, model card and licence.

python scripts/publish.py --model_dir runs/clay-small --repo_id made-with-clay/Clay --dry_run
HF_TOKEN=… python scripts/publish.py --model_dir runs/clay-small --repo_id made-with-clay/Clay
"""

import sys

from clay_hf.commands.publish import main

if __name__ == "__main__":
    sys.exit(main())
