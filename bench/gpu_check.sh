#!/usr/bin/env bash
# GPU check, under 8 minutes on one modern GPU: images/s and peak memory of the project's train path and of
# a hand-written loop with the same optimisations (bf16 autocast, channels_last, cudnn.benchmark, the
# dataset held on the GPU), and of Lightning's loop alone around the same step, for ResNet-20/56/110,
# DenseNet-BC-100 and DenseNet-121 at batch 128, and the time He et al.'s ResNet-56 recipe (64k iterations
# x 128) would take; then ResNet-56 again with CUDA graphs (compile=reduce-overhead). Copy the tables, with
# the card's name, into docs/performance.md.
#
# Usage: bench/gpu_check.sh   (PYTHON=... to pick the interpreter; the project need not be installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 300 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1
timeout 170 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1 --cases resnet56 --compile reduce-overhead
