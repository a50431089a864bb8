"""Keep the accelerator fed: batches prepared ahead in worker threads or processes, in
pinned memory.

:func:`prefetch` runs ``prepare`` (for example decoding and resizing an image) for the
items of the next ``depth`` batches in a pool while the caller runs the models on the
current batch, and writes each result into a page-locked (pinned) host buffer, so the copy
to the GPU is asynchronous (:func:`models.preprocess.pixel_values`).

Threads (the default) write straight into the buffer: Pillow and numpy release the GIL
while they decode and resize, but the rest of each item's work holds it, and so competes
with the Python loop that launches the GPU work. Processes (``processes=True``) decode in
interpreters of their own and send back each slice of a batch as one array, which the
caller's thread copies into the buffer; ``prepare`` and the items must then be picklable
(a module-level function or a ``functools.partial`` of one).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypeVar

import numpy as np
import torch

from models.feeder_worker import prepared

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


def feeder_pool(workers: int, processes: bool = False) -> Executor:
    """A pool of ``workers`` threads or processes for :func:`prefetch`, to reuse across
    calls (worker processes take a moment to start)."""
    if processes:
        # spawn: the workers start clean, whatever threads or CUDA state the caller holds
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=workers, mp_context=context)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="feeder")


def prefetch(
    batches: Iterable[Sequence[T]],
    prepare: Callable[[T], np.ndarray],
    shape: tuple[int, int, int],
    *,
    workers: int = 4,
    depth: int = 2,
    processes: bool = False,
    pool: Executor | None = None,
) -> Iterator[tuple[Sequence[T], torch.Tensor]]:
    """Yield ``(batch, pixels)`` in order; ``pixels`` is ``len(batch) x shape`` uint8, row i
    ``prepare(batch[i])``, prepared while up to ``depth`` earlier batches are in use, by
    ``workers`` threads or (``processes=True``) worker processes; or by ``pool`` (from
    :func:`feeder_pool`, left running), whose kind decides between the two; with processes,
    each batch goes out in ``workers`` slices, so give the pool's size then.

    An exception raised by ``prepare`` is raised here, for the batch it belongs to.
    """
    if workers < 1 or depth < 1:
        raise ValueError("workers and depth must be at least 1")
    if pool is not None:
        processes = isinstance(pool, ProcessPoolExecutor)
    buffers = _Buffers(depth + 2)
    pending: deque[tuple[Sequence[T], torch.Tensor, list[tuple[slice, Future]]]] = deque()

    def fill(buffer: torch.Tensor, index: int, item: T) -> None:
        buffer[index].numpy()[...] = prepare(item)

    def start(
        pool: Executor, batch: Sequence[T], buffer: torch.Tensor
    ) -> list[tuple[slice, Future]]:
        if not processes:
            return [
                (slice(i, i + 1), pool.submit(fill, buffer, i, item))
                for i, item in enumerate(batch)
            ]
        step = -(-len(batch) // workers)
        return [
            (slice(i, i + step), pool.submit(prepared, prepare, batch[i : i + step]))
            for i in range(0, len(batch), step)
        ]

    with nullcontext(pool) if pool is not None else feeder_pool(workers, processes) as running:
        source = iter(batches)
        while True:
            while len(pending) <= depth:
                batch = next(source, None)
                if batch is None:
                    break
                buffer = buffers.take((len(batch), *shape))
                pending.append((batch, buffer, start(running, batch, buffer)))
            if not pending:
                return
            batch, buffer, jobs = pending.popleft()
            for rows, job in jobs:
                result = job.result()
                if result is not None:
                    buffer[rows].numpy()[...] = result
            yield batch, buffer
