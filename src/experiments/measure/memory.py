"""Peak memory of training steps: the CUDA allocator's peak on a GPU, the peak RSS growth on a CPU."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import resource
import sys
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.M).group(1)) * 1024


def _release_freed_memory() -> None:
    """Free what earlier work left (an earlier run of a multirun in this process) and hand it back to the OS.

    Otherwise a GPU's peak counts an earlier run's uncollected tensors (Lightning's objects hold each other
    in cycles, so they wait for the garbage collector), and on a CPU the allocator keeps freed memory in
    the RSS and reuses it, so the next run's peak shows no growth.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


APPROXIMATE = "cpu peak RSS growth (ru_maxrss, approximate)"


class PeakMemory:
    """`start()` before the steps, `stop()` after: peak bytes in between, and how they were measured.

    CUDA: torch.cuda.max_memory_allocated after a reset (reserved is kept too). CPU on Linux: the
    process's RSS high-water mark, reset through /proc/self/clear_refs, minus the RSS at start (after
    freed memory went back to the OS). Elsewhere ru_maxrss, which cannot be reset: growth beyond the
    earlier peak of the process only.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.resettable = STATUS.exists() and os.access(CLEAR_REFS, os.W_OK)
        self.source = "cuda max_memory_allocated" if self.cuda else "cpu peak RSS growth"
        self.reserved_bytes: int | None = None

    def start(self) -> None:
        _release_freed_memory()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # the reserved peak starts from what is reserved now
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self.resettable:
            try:
                CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
                self.baseline = _status_bytes("VmRSS")
                return
            except OSError:  # some sandboxes refuse it
                self.resettable = False
        self.source = APPROXIMATE
        self.baseline = self._max_rss()

    def stop(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        peak = _status_bytes("VmHWM") if self.resettable else self._max_rss()
        return max(0, peak - self.baseline)

    @staticmethod
    def _max_rss() -> int:
        # kilobytes on Linux, bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
