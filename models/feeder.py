"""Keep the accelerator fed: batches prepared ahead in worker threads, in pinned memory.

:func:`prefetch` runs ``prepare`` (for example decoding and resizing an image) for the
items of the next ``depth`` batches in a thread pool while the caller runs the models on
the current batch, and writes each result into a page-locked (pinned) host buffer, so the
copy to the GPU is asynchronous (:func:`models.preprocess.pixel_values`). Pillow and numpy
release the GIL while they decode and resize, so the threads decode in parallel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


class _Buffers:
    """A ring of host buffers (pinned when CUDA is available), reused in turn: a buffer comes
    back ``size`` batches after it was handed out, when its copy to the device is done (the
    models wait for each batch's results before asking for the next one)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: deque[torch.Tensor] = deque()
        self.handed: deque[torch.Tensor] = deque()

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        if len(self.handed) >= self.size:
            self.free.append(self.handed.popleft())
        buffer = next(
            (b for b in self.free if b.shape[1:] == shape[1:] and b.shape[0] >= shape[0]), None
        )
        if buffer is None:
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
        else:
            self.free.remove(buffer)
        self.handed.append(buffer)
        return buffer[: shape[0]]


def prefetch(
    batches: Iterable[Sequence[T]],
    prepare: Callable[[T], np.ndarray],
    shape: tuple[int, int, int],
    *,
    workers: int = 4,
    depth: int = 2,
) -> Iterator[tuple[Sequence[T], torch.Tensor]]:
    """Yield ``(batch, pixels)`` in order; ``pixels`` is ``len(batch) x shape`` uint8, row i
    ``prepare(batch[i])``, prepared while up to ``depth`` earlier batches are in use.

    An exception raised by ``prepare`` is raised here, for the batch it belongs to.
    """
    if workers < 1 or depth < 1:
        raise ValueError("workers and depth must be at least 1")
    buffers = _Buffers(depth + 2)
    pending: deque[tuple[Sequence[T], torch.Tensor, list[Future[None]]]] = deque()

    def fill(buffer: torch.Tensor, index: int, item: T) -> None:
        buffer[index].numpy()[...] = prepare(item)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="feeder") as pool:
        source = iter(batches)
        while True:
            while len(pending) <= depth:
                batch = next(source, None)
                if batch is None:
                    break
                buffer = buffers.take((len(batch), *shape))
                jobs = [pool.submit(fill, buffer, i, item) for i, item in enumerate(batch)]
                pending.append((batch, buffer, jobs))
            if not pending:
                return
            batch, buffer, jobs = pending.popleft()
            for job in jobs:
                job.result()
            yield batch, buffer
