#!/usr/bin/env bash
# GPU check, at most 8 minutes on one modern GPU, in three passes:
# 1. images/s and peak memory of the project's train path, of Lightning's loop alone around a hand-written
#    step and of the hand-written loop, all with the same optimisations (bf16 autocast, channels_last,
#    cudnn.benchmark, a fused optimiser, the dataset held on the GPU), for ResNet-20/56/110, DenseNet-BC-100
#    and DenseNet-121 at batch 128, and the time He et al.'s ResNet-56 recipe (64k iterations x 128) would take;
# 2. ResNet-56 again with CUDA graphs (compile=reduce-overhead), in three rounds;
# 3. where each path's step time goes with CUDA graphs (bench/step_profile.py: launches, syncs, GPU busy
#    time, the kernels it goes to), with the profiler traces saved under $TRACES.
# Copy the tables, with the card's name, into docs/performance.md.
#
# Usage: bench/gpu_check.sh   (PYTHON=... picks the interpreter, TRACES=... where the traces go: by default
#        $OUT/traces, else /tmp/traces; the project need not be installed). Exits 1 if any pass failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TRACES=${TRACES:-${OUT:-/tmp}/traces}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export KINETO_LOG_LEVEL=4  # the profiler's errors show
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# each pass has its own time limit; one that runs out does not stop the next
failed=0
run_for() { timeout "$@" || { echo "(exit status $? from: ${*:2})"; failed=1; }; }
run_for 230 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1
# three rounds, each path first once; each run compiles afresh, from inductor's on-disk cache after the first
run_for 170 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 3 --cases resnet56 --compile reduce-overhead
# the compiled graphs are in inductor's on-disk cache by now: each path compiles in seconds
run_for 80 "$PYTHON" bench/step_profile.py --gpu --cases resnet56 --compile reduce-overhead --traces "$TRACES"
exit $failed
