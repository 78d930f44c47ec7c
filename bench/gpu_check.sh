#!/usr/bin/env bash
# GPU check, at most 8 minutes on one modern GPU, in four passes:
# 1. the GPU tests: steps replayed as a CUDA graph (cuda_graph, on by default on one GPU) compute what eager
#    steps do, in fp32 and bf16, train as the eager step does, and a train command completes;
# 2. images/s and peak memory of the project's train path, of Lightning's loop alone around a hand-written
#    step and of the hand-written loop, all with the same optimisations (bf16 autocast, channels_last,
#    cudnn.benchmark, a fused optimiser, the dataset held on the GPU, each step's forward and backward as
#    one CUDA graph: the GPU defaults), for ResNet-20/56/110, DenseNet-BC-100 and DenseNet-121 at batch
#    128, and the time He et al.'s ResNet-56 recipe (64k iterations x 128) would take;
# 3. ResNet-56 again with torch.compile's kernels inside the graph (compile=true), in three rounds;
# 4. where each path's step time goes (bench/step_profile.py: launches, syncs, GPU busy time, the kernels
#    it goes to), with the profiler traces saved under $TRACES;
# 5. deterministic=true: the same command twice gives the same metrics.csv on the GPU; and what a loss
#    surface costs there: a 21x21 surface of a ResNet-56 over 10k images (multiply by 5.9 for the paper's
#    51x51), after a one-epoch run on synthetic 32 px images.
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
run_for 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_step_graph.py
run_for 140 "$PYTHON" bench/speed.py --gpu --epochs 2 --repeats 1
# three rounds, each path first once; each run compiles afresh, from inductor's on-disk cache after the first
run_for 140 "$PYTHON" bench/speed.py --gpu --compile --epochs 2 --repeats 3 --cases resnet56
# the compiled graphs are in inductor's on-disk cache by now: each path compiles in seconds
run_for 70 "$PYTHON" bench/step_profile.py --gpu --cases resnet56 --compile --traces "$TRACES"
run_for 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_train.py -k deterministic_runs_repeat
SURFACE=$(mktemp -d)
run_for 60 "$PYTHON" -m experiments train arch=resnet56 dataset=synthetic dataset.train_size=10000 \
    trainer.max_epochs=1 logger=none "hydra.run.dir=$SURFACE/resnet56"
run_for 150 /usr/bin/time -f "landscape 21x21 over 10k images: %e s" "$PYTHON" -m experiments landscape \
    --grid 21 --directions 2 --points 3 --images 10000 --no-interpolation "$SURFACE/resnet56"
exit $failed
