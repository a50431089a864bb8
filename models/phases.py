"""Wall time per phase of the models layer (input, vision, decoding, scoring), for benchmarks.

Off unless a benchmark opens :func:`measure_phases`; then each phase waits for the device
before and after (so GPU work is counted where it runs, at the cost of the overlap between
phases) and adds its seconds to the totals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_totals: dict[str, float] | None = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def phase(name: str, device: torch.device) -> Iterator[None]:
    """Count the enclosed work as ``name`` while phases are measured."""
    if _totals is None:
        yield
        return
    _synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        _synchronize(device)
        if _totals is not None:
            _totals[name] = _totals.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def measure_phases() -> Iterator[dict[str, float]]:
    """Seconds per phase of the work done inside, filled as it runs."""
    global _totals
    totals: dict[str, float] = {}
    _totals = totals
    try:
        yield totals
    finally:
        _totals = None
