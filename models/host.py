"""Process settings for CPU inference: reuse of freed memory, and threads for small work.

- Memory: glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
  pages from the kernel and returns them on free. A BLIP-base forward on a batch of images
  allocates and frees activations of 40-60 MiB per layer, so every layer paid for page
  faults and zeroing of new memory: about a tenth of a CPU vision pass went to the kernel.
  Raising glibc's mmap and trim thresholds lets those blocks be reused from the heap. The
  peak is unchanged (the same blocks are live at the peak); memory freed after it is kept.
- Threads: torch's OpenMP threads wait for each other at the end of every operation. For
  the large operations of the vision and text encoders that wait is small next to the
  work, and all cores help even on a shared machine; the decoding steps are hundreds of
  operations on a few dozen rows each, and when other processes kept the cores busy a
  thread that lost its core stalled the others at every one of them: 2 threads decoded 4-6x
  slower than 1 on 2 shared cores, and encoded texts 1.5x slower, while on a quiet machine
  they are faster. :class:`ThreadTuner` times both and keeps the faster for such work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


@functools.cache
def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process; False where not
    glibc (a no-op)."""
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


@contextmanager
def threads_at_most(count: int) -> Iterator[None]:
    """Run the enclosed work with at most ``count`` torch threads (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, count)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ThreadTuner:
    """Chooses the torch threads for one kind of small work by timing it: one thread or
    all of them (the count set when the tuner is used), whichever took less time per unit
    of work. Each count is tried once; after that the faster one runs, and every
    ``recheck``-th call tries the other again, so the choice follows the load of the
    machine. Shared by every model in the process that does that kind of work."""

    def __init__(self, recheck: int = 32) -> None:
        self.recheck = recheck
        self.calls = 0
        self.seconds_per_unit: dict[int, float] = {}

    def _pick(self, available: int) -> int:
        candidates = sorted({1, available})
        untried = [n for n in candidates if n not in self.seconds_per_unit]
        if untried:
            return untried[0]
        best = min(candidates, key=self.seconds_per_unit.__getitem__)
        if len(candidates) > 1 and self.calls % self.recheck == 0:
            return next(n for n in candidates if n != best)
        return best

    @contextmanager
    def run(self, units: float) -> Iterator[None]:
        """Run the enclosed work (``units`` of it) with the chosen thread count, and time it."""
        threads = self._pick(torch.get_num_threads())
        self.calls += 1
        with threads_at_most(threads):
            start = time.perf_counter()
            yield
            elapsed = (time.perf_counter() - start) / max(units, 1e-9)
        previous = self.seconds_per_unit.get(threads)
        self.seconds_per_unit[threads] = elapsed if previous is None else 0.5 * (previous + elapsed)
