"""Process settings for CPU inference: reuse of freed memory, and threads for free cores.

- Memory: glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
  pages from the kernel and returns them on free. A BLIP-base forward on a batch of images
  allocates and frees activations of 40-60 MiB per layer, so every layer paid for page
  faults and zeroing of new memory: about a tenth of a CPU vision pass went to the kernel.
  Raising glibc's mmap and trim thresholds lets those blocks be reused from the heap. The
  peak is unchanged (the same blocks are live at the peak); memory freed after it is kept.
- Threads: torch's OpenMP threads wait for each other at the end of every operation. When
  other processes keep the cores busy, a thread that lost its core stalls the others, and
  the small operations of caption decoding then ran 4-6x slower with 2 threads than with 1
  on 2 shared cores. Threads are capped at the cores that are idle when the model loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import psutil
import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


@functools.cache
def prepare_cpu() -> None:
    """Settings for CPU inference in this process, once: :func:`reuse_freed_memory`, and
    torch's threads capped at :func:`free_cores` (never raised; ``OMP_NUM_THREADS`` set
    wins)."""
    reuse_freed_memory()
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), free_cores())))


@functools.cache
def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; False where not glibc (a no-op)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )


def free_cores(interval: float = 0.25) -> int:
    """Cores this process may run on that other work leaves idle, measured over ``interval``
    seconds (while this thread sleeps), at least 1. A core counts when at least three
    quarters of it are idle: a thread sharing a core stalls its team at every operation."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = psutil.cpu_percent(interval=interval, percpu=True)
    cores = [busy[i] for i in allowed if i < len(busy)] if allowed else busy
    idle = sum(100.0 - percent for percent in cores) / 100.0
    return max(1, int(idle + 0.25))
