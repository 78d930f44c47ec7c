"""What a number was computed on: versions, the CPU and its kernels, threads, the numerical flags, the GPU.

Another CPU's kernels round differently, and a deep net at a high learning rate turns a rounding difference
into a different run: a result is only comparable with its environment beside it. `environment()` is read
once the run's Trainer has set its flags (deterministic algorithms, cuDNN's autotuner), and goes into the
record, the analysis commands' sidecars and Comet. Nothing of it names the run's directory.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What differs between two machines that run the same code on the same data in a way that changes the numbers;
# the host name (and anything else) may differ between runs of one verdict without warning.
NUMERICAL_KEYS = (
    "torch",
    "numpy",
    "cuda",
    "cudnn",
    "blas",
    "cpu",
    "cpu_capability",
    "threads",
    "matmul_precision",
    "tf32",
    "deterministic",
    "gpu",
)


def environment(cuda: bool) -> dict[str, Any]:
    """The environment of a computation starting now, on a CUDA GPU or not (`cuda`: where it computes, not
    whether the machine has a GPU; JSON-able; keys as in summary.json)."""
    import torch  # here: the report reads environments without torch

    return {
        **_software(torch),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _driver() if cuda else None,
        "blas": _blas(torch),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "matmul_precision": torch.get_float32_matmul_precision(),
        "tf32": _tf32(torch) if cuda else False,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "host": socket.gethostname(),
    }


def numerical(env: dict[str, Any] | None) -> tuple:
    """The part of an environment that can change a run's numbers: two runs whose parts differ may disagree
    by more than their seeds explain."""
    env = env or {}
    return tuple(str(env.get(key)) for key in NUMERICAL_KEYS)


def difference(env: dict[str, Any] | None, others: list[dict[str, Any] | None]) -> str:
    """What sets `env` apart among `others` (`threads=2, cpu_capability=AVX2`): its values of the numerical
    keys on which they differ; empty where they do not."""
    keys = [key for key in NUMERICAL_KEYS if len({str((other or {}).get(key)) for other in others}) > 1]
    return ", ".join(f"{key}={(env or {}).get(key)}" for key in keys)


def describe(env: dict[str, Any] | None) -> str:
    """One line naming an environment: `AMD EPYC (AVX512), 2 threads, torch 2.14.1` (and the GPU)."""
    if not env:
        return "unknown (a record written before environments were recorded)"
    where = f"{env.get('cpu')} ({env.get('cpu_capability')}), {env.get('threads')} threads"
    gpu = (
        f", {env['gpu']} (CUDA {env.get('cuda')}, TF32 {'on' if env.get('tf32') else 'off'})"
        if env.get("gpu")
        else ""
    )
    return f"{where}{gpu}, torch {env.get('torch')}"


def _tf32(torch: Any) -> bool:
    """Whether float32 matmuls or convolutions may round to TF32's 10 mantissa bits: the flags allow it and
    the GPU has TF32 (Ampere and later)."""
    allowed = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return bool(allowed and torch.cuda.get_device_capability()[0] >= 8)


@cache
def _software(torch: Any) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a plain str: checkpoints load with weights_only
        "lightning": _version("pytorch-lightning"),
        "numpy": _version("numpy"),
        "package": _version("experiments"),
        "commit": _commit(),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The checkout's git SHA, `+dirty` when its tracked files differ from it; None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        sha = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if changed else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def _blas(torch: Any) -> str:
    """The BLAS and the convolution library torch was built with, as torch reports them."""
    found = []
    for line in torch.__config__.show().splitlines():
        line = line.strip(" -")
        if "Math Kernel Library Version" in line:
            found.append("MKL " + line.split("Version", 1)[1].split("-", 1)[0].strip())
        elif re.match(r"Intel\(R\) MKL-DNN v|oneDNN v", line):
            found.append("oneDNN " + line.split(" v", 1)[1].split()[0])
        elif line.startswith("Build settings:") and not found:
            blas = re.search(r"BLAS_INFO=([^,]+)", line)
            found.append(blas.group(1) if blas else "unknown")
    return ", ".join(found) or "unknown"


@cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or sys.platform


def _driver() -> str | None:
    """The NVIDIA driver's version, from the kernel module (or nvidia-smi where /proc does not say)."""
    try:
        found = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None
