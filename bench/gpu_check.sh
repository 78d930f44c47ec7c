#!/usr/bin/env bash
# GPU check, at most 8 minutes on one modern GPU: images/s and peak memory of the project's train path and of
# a hand-written loop with the same optimisations (bf16 autocast, channels_last, cudnn.benchmark, the
# dataset held on the GPU), and of Lightning's loop alone around the same step, for ResNet-20/56/110,
# DenseNet-BC-100 and DenseNet-121 at batch 128, and the time He et al.'s ResNet-56 recipe (64k iterations
# x 128) would take; then ResNet-56 again with CUDA graphs (compile=reduce-overhead); then where each path's
# step time goes with CUDA graphs (bench/step_profile.py: launches, syncs, GPU busy time, top kernels), with
# the profiler traces saved under $TRACES. Copy the tables, with the card's name, into docs/performance.md.
#
# Usage: bench/gpu_check.sh   (PYTHON=... to pick the interpreter; the project need not be installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TRACES=${TRACES:-${OUT:-/tmp}/traces}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# each pass has its own time limit; one that runs out does not stop the next
run_for() { timeout "$@" || echo "(exit status $? from: ${*:2})"; }
run_for 250 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1
run_for 150 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1 --cases resnet56 --compile reduce-overhead
# the compiled graphs are in inductor's on-disk cache by now: this pass compiles in seconds
run_for 80 "$PYTHON" bench/step_profile.py --gpu --cases resnet56 --compile reduce-overhead --traces "$TRACES"
