#!/usr/bin/env bash
# The GPU benchmarks of issue 14 as ONE command on the device machine (about 6-9 minutes on an H100):
#   1. here:      bash benchmarks/gpu_wheels.sh                       (wheels the GPU image lacks, into .whl/)
#   2. device:    run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=600)
# Results land in $OUT (the device tool brings them back) or benchmarks/results/: gpu_suite.json and gpu_suite.txt.
# Extra arguments go to benchmarks/bench_gpu.py (e.g. --max_batch 256 --steps 160 --skip inference).
# The wheels are ~42 MB (the working tree travels within 64 MiB). datasets 5.2 needs pyarrow >= 24 and
# huggingface_hub >= 1.31: the import check below fails first if the image's are older (then carry a datasets
# release that fits them rather than pyarrow's ~45 MB wheel).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$RESULTS/gpu_suite.txt"
python3 -c "import torch, datasets, rasterio, zstandard, lz4, torchdata; print('torch', torch.__version__)" \
    2>&1 | tee -a "$RESULTS/gpu_suite.txt" || exit 1
timeout 560 python3 benchmarks/bench_gpu.py --work_dir /tmp/clay-gpu-bench --output "$RESULTS/gpu_suite.json" "$@" \
    2>&1 | tee -a "$RESULTS/gpu_suite.txt"
