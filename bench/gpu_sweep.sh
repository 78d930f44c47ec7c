#!/usr/bin/env bash
# GPU sweep check, under 7 minutes on one H100 or H200, in two passes:
# 1. the GPU test of hydra/launcher=packed: runs packed on one GPU, each on its own CUDA stream, train as
#    they do alone, within the tolerance the CUDA-graph tests use;
# 2. bench/sweep.py --gpu: ResNet-20, plain-56 and ResNet-110 for 300 steps each, run after run and packed,
#    projected to He et al.'s ten-run sweep and to the fifty-run, five-seed one; DenseNet-BC-100 with
#    torch.compile off and on, projected to Huang et al.'s recipe. It prints its table last.
# Copy the table, with the card's name, into docs/performance.md.
#
# Usage: bench/gpu_sweep.sh   (PYTHON=... picks the interpreter; the project need not be installed, but
#        hydra-core, omegaconf and comet-ml must be importable). Exits 1 if a pass failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
failed=0
run_for() { timeout "$@" || { echo "(exit status $? from: ${*:2})"; failed=1; }; }
run_for 100 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_packed.py
run_for 300 "$PYTHON" bench/sweep.py --gpu --steps 300
exit $failed
