"""Training-step speed, peak memory and MFU of Clay `small` (eager vs sdpa, fp32 vs bf16, with and without
gradient checkpointing), against the same run's measured matmul peak. On a GPU it prints the card's name.

    python benchmarks/bench_train.py --batch_sizes 4

The training rows of bench_model.py; see it for the method.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import main

if __name__ == "__main__":
    main(["--task", "train", "--output", "bench_train_results.json", *sys.argv[1:]])
