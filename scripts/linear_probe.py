"""Linear probe of Clay mean embeddings on labelled chips (class folders or a CSV)."""

import sys

from clay_hf.cli import linear_probe_main

if __name__ == "__main__":
    sys.exit(linear_probe_main())
