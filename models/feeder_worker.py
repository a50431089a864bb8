"""The job of a :mod:`models.feeder` worker process, in a module that does not import torch,
so that spawned workers start in a fraction of a second."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def prepared(prepare: Callable[[T], np.ndarray], items: Sequence[T]) -> np.ndarray:
    """``prepare`` of each item, stacked."""
    return np.stack([prepare(item) for item in items])
