"""Near-duplicate removal after scoring: links above a cosine threshold, then a greedy keep.

Pairs with cosine similarity above the threshold are linked. Images are then visited in the
order of :func:`curation.dedup.keep.near_rank` (best first): an image linked to an image
already kept is removed as its duplicate, any other image is kept
(:func:`curation.dedup.leaders.leaders`). So every removed image is above the threshold
to the kept image it names, and no two kept images are above it: a chain of small steps
through a dense region does not remove images that are far from every kept one.

Pairs are searched within cells (:mod:`curation.dedup.cells`): up to
``FLAT_MAX_VECTORS`` (20,000) vectors one cell holds them all (exact); above, cells of
about 512 vectors from a two-level spherical k-means trained on a sample, each vector
assigned to its ``nprobe`` (3) nearest cells, and every cell range-searched for the links
of its members (:func:`curation.dedup.cell_links.cell_links`, one exact ``IndexFlatIP``
range search per cell, as BLAS matrix products). A pair is found when either vector
probes the other's cell. Cost per vector: ``2 * D * sqrt(8 * n / 512)`` multiply-adds to
assign, ``D * nprobe * 512`` (times about 1.6 for uneven cells) to search; 32 s at 1M
vectors and 275 s at 5M on 2 shared cores, planted-pair recall 0.997 (bench/RESULTS.md).

What runs where: :func:`similar_pairs` and :func:`find_near_duplicates` compose the steps
once on one machine (memory: the embeddings plus about 150 bytes per vector). As
distributed stages the same steps are: cells trained once on a bounded sample and
assigned per shard (:mod:`curation.dedup.cells`), links per cell
(:mod:`curation.dedup.cell_links`), components once over the links and the keep per
component (:mod:`curation.dedup.components`), which gives exactly this module's result.
:func:`query_previous` runs per shard against an index opened once per worker
(:func:`curation.dedup.index_store.open_index`, memory-mapped); memory is the shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.dedup.cell_links import cell_links
from curation.dedup.cells import (
    Cells,
    one_faiss_thread,
    plan_cells,
    train_cells,
    training_rows,
    worker_count,
)
from curation.dedup.keep import NearCandidate, near_rank
from curation.dedup.leaders import leaders

DEFAULT_NPROBE = 3


@dataclass(frozen=True)
class NearDuplicate:
    """A removed image, the kept image it duplicates, and their cosine similarity
    (above the threshold)."""

    key: str
    dup_of: str
    similarity: float


def as_normalised(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 (N, D) array; raises if rows are not unit length."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {x.shape}")
    if x.shape[0]:
        squared = np.einsum("ij,ij->i", x, x)  # no (N, D) temporary
        if not np.allclose(squared, 1.0, atol=2e-3):
            raise ValueError("embeddings must be L2-normalised (unit-length rows)")
    return x


def near_cells(x: np.ndarray, keys: Sequence[str], seed: int = 0) -> Cells:
    """Cells for the unit rows ``x`` (:func:`curation.dedup.cells.plan_cells`), trained on
    the rows of ``keys`` whose rank is below the plan's bounds
    (:func:`curation.dedup.cells.training_rows`)."""
    plan = plan_cells(x.shape[0])
    if plan.cells == 1:
        return Cells.single(x.shape[1])
    rows, ranks = training_rows(keys, plan.sample_limit, seed)
    coarse_rows = int(np.count_nonzero(ranks < np.uint64(plan.coarse_limit)))
    return train_cells(x[rows], plan, seed, coarse_rows)


def similar_pairs(
    embeddings: np.ndarray,
    threshold: float,
    keys: Sequence[str] | None = None,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``, ``i < j``, with cosine similarity above ``threshold``, and that
    similarity (float64), sorted by ``(i, j)``.

    Exact up to ``FLAT_MAX_VECTORS`` vectors, the cell join above (module docstring).
    ``keys`` (unique, one per row; the row numbers when not given) choose the training
    sample, so the pairs do not depend on the order of the rows.
    """
    x = as_normalised(embeddings)
    n = x.shape[0]
    cells = near_cells(x, keys if keys is not None else [str(i) for i in range(n)], seed)
    probes = cells.assign(x, nprobe)
    flat = probes.ravel()
    by_cell = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[by_cell], np.arange(cells.count + 1))
    entries = by_cell // probes.shape[1]

    def join(cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = entries[bounds[cell] : bounds[cell + 1]]
        i, j, sims = cell_links(cell, rows, x[rows], probes[rows], threshold)
        return rows[i], rows[j], sims

    if cells.count == 1:
        parts = [join(0)]
    else:
        # Cells are small: run them side by side, one thread each, rather than each call
        # with all threads (OpenMP start-up would dominate, and collide with torch's pool).
        with ThreadPoolExecutor(worker_count(), initializer=one_faiss_thread) as pool:
            parts = list(pool.map(join, range(cells.count)))
    lo = np.concatenate([p[0] for p in parts])
    hi = np.concatenate([p[1] for p in parts])
    sims = np.concatenate([p[2] for p in parts])
    order = np.lexsort((hi, lo))
    return lo[order], hi[order], sims[order]


def find_near_duplicates(
    keys: Sequence[str],
    embeddings: np.ndarray,
    candidates: Sequence[NearCandidate],
    threshold: float = 0.95,
) -> list[NearDuplicate]:
    """Every image to remove as a near-duplicate, with the kept image it duplicates.

    ``keys``, the rows of ``embeddings`` (L2-normalised float32) and ``candidates`` describe
    the same images in the same order. Images with cosine similarity above ``threshold``
    are linked and kept greedily in :func:`~curation.dedup.keep.near_rank` order (module
    docstring); removed images are returned sorted by key. The result does not depend on
    input order.
    """
    x = as_normalised(embeddings)
    if not (len(keys) == x.shape[0] == len(candidates)):
        raise ValueError(
            f"keys ({len(keys)}), embeddings ({x.shape[0]}) and candidates "
            f"({len(candidates)}) must have the same length"
        )
    for key, candidate in zip(keys, candidates, strict=True):
        if candidate.key != key:
            raise ValueError(f"candidate {candidate.key!r} is not in the row of key {key!r}")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    lo, hi, sims = similar_pairs(x, threshold, keys)
    linked = np.unique(np.concatenate([lo, hi]))
    ranked = sorted(linked.tolist(), key=lambda i: near_rank(candidates[i]))
    unlinked = np.setdiff1d(np.arange(x.shape[0]), linked)
    order = np.concatenate([np.asarray(ranked, dtype=np.int64), unlinked])
    leader, similarity = leaders(x.shape[0], lo, hi, sims, order)
    removed = [
        NearDuplicate(keys[i], keys[leader[i]], float(similarity[i]))
        for i in np.flatnonzero(leader != np.arange(x.shape[0])).tolist()
    ]
    removed.sort(key=lambda d: d.key)
    return removed


def query_previous(
    index: Any, embeddings: np.ndarray, threshold: float, shard_size: int = 65536
) -> list[tuple[int, int, float]]:
    """``(row, previous_id, similarity)`` for each new row whose best match in ``index`` is above ``threshold``.

    ``index`` is a FAISS inner-product index over earlier rounds (for example
    :attr:`curation.dedup.index_store.PreviousIndex.index`, or per shard
    :func:`curation.dedup.index_store.open_index`); ids are its stored ids.
    """
    x = as_normalised(embeddings)
    if index.ntotal == 0 or x.shape[0] == 0:
        return []
    if x.shape[1] != index.d:
        raise ValueError(f"embeddings have dimension {x.shape[1]}, the index {index.d}")
    matches: list[tuple[int, int, float]] = []
    for start in range(0, x.shape[0], shard_size):
        sims, ids = index.search(x[start : start + shard_size], 1)
        hit = np.flatnonzero((ids[:, 0] >= 0) & (sims[:, 0] > threshold))
        matches.extend((start + int(r), int(ids[r, 0]), float(sims[r, 0])) for r in hit)
    return matches
