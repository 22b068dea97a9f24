"""Linear probe of Clay mean embeddings on labelled chips (class folders or a CSV)."""

import sys

from clay_hf.commands.linear_probe import main

if __name__ == "__main__":
    sys.exit(main())
