"""Near-duplicate removal after scoring: FAISS range search on normalised image embeddings.

Pairs with cosine similarity above the threshold are linked. Images are then visited in the
order of :func:`curation.dedup.keep.near_rank` (best first): an image linked to an image
already kept is removed as its duplicate, any other image is kept
(:func:`curation.dedup.leaders.leaders`). So every removed image is above the threshold
to the kept image it names, and no two kept images are above it: a chain of small steps
through a dense region does not remove images that are far from every kept one.

How pairs are found depends on the number of vectors ``n`` (measured on 2 CPU cores, 256-d):

- ``n <= FLAT_MAX_VECTORS`` (20,000): exact, one ``IndexFlatIP`` range search over all
  vectors (BLAS; about 1 s at 20,000, but quadratic: 25 s at 100,000).
- above: an inverted-file join, the ``IVF{nlist},Flat`` layout searched cell by cell.
  Spherical k-means puts every vector in the cell of its nearest centroid (``nlist`` about
  ``n / CELL_SIZE``); each vector is then range-searched against the cells of its
  ``nprobe`` nearest centroids, one exact ``IndexFlatIP`` range search per cell with all
  the vectors that probe it as one query batch. That is what ``IndexIVFFlat.range_search``
  computes, but as BLAS matrix products instead of one vector at a time (about 10x faster
  here). A pair is found when either vector probes the other's cell; with ``nprobe = 3``
  recall of planted pairs with cosine 0.955-0.995 is 0.996-0.997 on clustered data, 3 s
  at 100,000 vectors and 30 s at 1,000,000 (bench/RESULTS.md).

Queries go in shards of ``shard_size`` so memory is bounded by the shard, not by ``n``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.dedup.keep import NearCandidate, near_rank
from curation.dedup.leaders import leaders

FLAT_MAX_VECTORS = 20_000
CELL_SIZE = 512
DEFAULT_NPROBE = 3
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_CENTROID = 40


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


def _collect(
    queries: np.ndarray, lims: np.ndarray, found: np.ndarray, sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Range-search results as ``(lo, hi, similarity)`` pairs without self matches."""
    query = np.repeat(queries, np.diff(lims).astype(np.int64))
    keep = query != found
    query, found, sims = query[keep], found[keep], sims[keep]
    return np.minimum(query, found), np.maximum(query, found), sims


def _flat_pairs(x: np.ndarray, threshold: float, shard_size: int) -> list[tuple]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out = []
    for start in range(0, x.shape[0], shard_size):
        lims, sims, found = index.range_search(x[start : start + shard_size], threshold)
        queries = np.arange(start, start + lims.size - 1, dtype=np.int64)
        out.append(_collect(queries, lims, found, sims))
    return out


def _cells(x: np.ndarray, nprobe: int, shard_size: int, seed: int) -> np.ndarray:
    """The ``nprobe`` nearest k-means cells of every vector, nearest first, shape (N, nprobe)."""
    import faiss

    n, dim = x.shape
    nlist = int(np.clip(round(n / CELL_SIZE), 1, 65536))
    sample_size = min(n, nlist * KMEANS_POINTS_PER_CENTROID)
    sample = np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))
    kmeans = faiss.Kmeans(
        dim,
        nlist,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=seed,
        max_points_per_centroid=KMEANS_POINTS_PER_CENTROID,
    )
    kmeans.train(x[sample])
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    cells = np.empty((n, nprobe), dtype=np.int64)
    for start in range(0, n, shard_size):
        _, cells[start : start + shard_size] = quantizer.search(
            x[start : start + shard_size], nprobe
        )
    return cells


def _worker_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ivf_pairs(
    x: np.ndarray, threshold: float, shard_size: int, nprobe: int, seed: int
) -> list[tuple]:
    import faiss

    dim = x.shape[1]
    cells = _cells(x, nprobe, shard_size, seed)
    by_home = np.argsort(cells[:, 0], kind="stable")
    home_bounds = np.searchsorted(cells[by_home, 0], np.arange(cells.max() + 2))
    probed = cells.ravel()
    by_probe = np.argsort(probed, kind="stable")
    probe_bounds = np.searchsorted(probed[by_probe], np.arange(cells.max() + 2))
    prober = by_probe // nprobe

    def join(cell: int) -> list[tuple]:
        members = by_home[home_bounds[cell] : home_bounds[cell + 1]]
        if members.size == 0:
            return []
        index = faiss.IndexFlatIP(dim)
        index.add(x[members])
        queries = prober[probe_bounds[cell] : probe_bounds[cell + 1]]
        out = []
        for start in range(0, queries.size, shard_size):
            chunk = queries[start : start + shard_size]
            lims, sims, found = index.range_search(x[chunk], threshold)
            out.append(_collect(chunk, lims, members[found], sims))
        return out

    # Cells are small: run them side by side, one thread each, rather than each call with
    # all threads (OpenMP start-up would dominate, and collide with torch's thread pool).
    with ThreadPoolExecutor(
        _worker_count(), initializer=faiss.omp_set_num_threads, initargs=(1,)
    ) as pool:
        return [part for parts in pool.map(join, range(home_bounds.size - 1)) for part in parts]


def similar_pairs(
    embeddings: np.ndarray,
    threshold: float,
    shard_size: int = 65536,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``, ``i < j``, with cosine similarity above ``threshold``, and that similarity.

    Exact up to :data:`FLAT_MAX_VECTORS` vectors, the inverted-file join above (see module
    docstring). Deterministic for a given ``seed``.
    """
    x = as_normalised(embeddings)
    n = x.shape[0]
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    if n <= FLAT_MAX_VECTORS:
        parts = _flat_pairs(x, threshold, shard_size)
    else:
        parts = _ivf_pairs(x, threshold, shard_size, nprobe, seed)
    lo = np.concatenate([p[0] for p in parts])
    hi = np.concatenate([p[1] for p in parts])
    sims = np.concatenate([p[2] for p in parts])
    _, first = np.unique(lo * n + hi, return_index=True)
    return lo[first], hi[first], sims[first]


def find_near_duplicates(
    keys: Sequence[str],
    embeddings: np.ndarray,
    candidates: Sequence[NearCandidate],
    threshold: float = 0.95,
    shard_size: int = 65536,
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
    lo, hi, sims = similar_pairs(x, threshold, shard_size)
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
    :attr:`curation.dedup.index_store.PreviousIndex.index`); ids are its stored ids.
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
