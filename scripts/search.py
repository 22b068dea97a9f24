"""Similarity search over Clay embeddings: `search.py index …`, `search.py query …` (see clay_hf.commands.search)."""

import sys

from clay_hf.commands.search import main

if __name__ == "__main__":
    sys.exit(main())
