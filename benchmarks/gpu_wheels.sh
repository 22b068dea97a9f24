#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI) before benchmarks/gpu_suite.sh: downloads into .whl/ the wheels that the
# GPU image lacks (it has torch, transformers, accelerate, safetensors, numpy, pyarrow, pandas, fsspec, xxhash, …),
# for its Python 3.12 on x86-64. Then call the device tool with carry [".whl"] and benchmarks/gpu_suite.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 rasterio==1.4.4 affine==3.0.1 cligj==0.7.2
click-plugins==1.1.1.2 torchdata==0.11.0 zstandard==0.25.0 lz4==4.4.5"
PLATFORMS=""
for n in 17 27 28 31 34 35; do PLATFORMS="$PLATFORMS --platform manylinux_2_${n}_x86_64"; done
mkdir -p .whl
for package in $PACKAGES; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS --platform manylinux2014_x86_64 --platform any -d .whl "$package"
done
du -sh .whl && ls .whl
