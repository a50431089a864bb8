"""Cells for near-duplicate search: a two-level spherical k-means quantizer.

Near-duplicate pairs are searched within cells of about :data:`CELL_SIZE` vectors, so the
number of cells grows with the number of vectors ``n``. Assigning every vector to its
nearest cells through one flat list of ``c = n / CELL_SIZE`` centroids costs ``n * c * D``
multiply-adds, which is quadratic in ``n`` (1 s at 100k, 21 s at 1M on 2 cores). Here the
``c`` fine centroids are grouped under ``k`` coarse centroids: a vector is compared with
the ``k`` coarse centroids, then with the fine centroids of its ``p = COARSE_PROBE``
nearest coarse cells (about ``c / k`` each). Cost per vector::

    assign:  D * (k + p * c / k),  least at k = sqrt(p * c):  2 * D * sqrt(p * n / CELL_SIZE)

so the total grows like ``n ** 1.5`` with a small constant (256-d, ``p`` 8: 0.14M
multiply-adds per vector at 5M vectors, 0.64M at 100M, against 2.5M and 50M for the
flat list), while the search within cells costs ``D * nprobe * CELL_SIZE`` per vector
(0.4M, times about 1.7 for uneven cell sizes), linear in ``n``. Training is bounded by its
sample (``FINE_POINTS_PER_CELL`` vectors per cell). The fine centroids of a coarse cell
are scanned by a FAISS inverted file (one SIMD dot product per vector and centroid).
Probing 8 coarse cells puts a vector's 3 nearest cells among its candidates 99% of the
time at 5M vectors (3 coarse cells: 90%), and finds 99.9% of the pairs that exact
assignment finds (bench/RESULTS.md); the share grows with ``n``, as coarse cells grow
large against fine ones.

The nearest cells are chosen by float32 products and the last candidates re-ranked in
float64, so a vector gets the same cells whatever batch or machine computes them.

What runs where (the Beam stages call these; :func:`train_cells` composes them locally):

- once: :func:`plan_cells` (counts and rank bounds from ``n``); per element:
  :func:`sample_rank` of the key against the bounds (:func:`training_rows` on one
  machine); once: :func:`train_coarse` on the about ``coarse * COARSE_POINTS_PER_CELL``
  keys of smallest rank;
- per training vector (element): :func:`nearest_coarse`; per coarse cell (key):
  :func:`train_fine` on that cell's share of the sample (about ``FINE_POINTS_PER_CELL *
  c / k`` vectors), :func:`fine_counts` giving each its number of fine cells (from the
  coarse cells' sizes); once: :meth:`Cells.from_parts`;
- per shard (element): :meth:`Cells.assign`, memory bounded by ``ASSIGN_ROWS`` rows;
  the ``Cells`` themselves are ``(k + c) * D`` floats (10 MiB at 5M 256-d vectors).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

CELL_SIZE = 512
FLAT_MAX_VECTORS = 20_000
FINE_POINTS_PER_CELL = 40
COARSE_POINTS_PER_CELL = 256
KMEANS_ITERATIONS = 10
COARSE_PROBE = 8
ASSIGN_ROWS = 32_768
_RERANK_EXTRA = 2
_TIE = 1e-5


@dataclass(frozen=True)
class CellPlan:
    """How many cells ``n`` vectors get, and which keys train them.

    Training keys are chosen by :func:`sample_rank` below a bound (:func:`rank_limit`), the
    same rule per element on one machine or on many: about ``sample`` keys train the fine
    cells, the about ``coarse * COARSE_POINTS_PER_CELL`` of smallest rank among them the
    coarse ones.
    """

    cells: int  # fine cells (the cells pairs are searched in)
    coarse: int  # coarse cells grouping them
    sample: int  # training sample size (0: a single cell, nothing to train)
    sample_limit: int = 0  # keys whose rank is below this train the fine cells
    coarse_limit: int = 0  # ... and below this the coarse cells


def rank_limit(size: int, n: int) -> int:
    """The :func:`sample_rank` bound below which about ``size`` of ``n`` keys fall (all of
    them when ``size >= n``)."""
    if size <= 0 or n <= 0:
        return 0
    return 1 << 64 if size >= n else (size << 64) // n


def plan_cells(n: int) -> CellPlan:
    """One cell (an exact search) up to :data:`FLAT_MAX_VECTORS` vectors, else cells of about
    :data:`CELL_SIZE` under ``ceil(sqrt(COARSE_PROBE * cells))`` coarse cells."""
    if n <= FLAT_MAX_VECTORS:
        return CellPlan(1, 1, 0)
    cells = round(n / CELL_SIZE)
    coarse = min(cells, math.isqrt(COARSE_PROBE * cells - 1) + 1)
    sample = min(n, cells * FINE_POINTS_PER_CELL)
    return CellPlan(
        cells,
        coarse,
        sample,
        sample_limit=rank_limit(sample, n),
        coarse_limit=rank_limit(min(sample, coarse * COARSE_POINTS_PER_CELL), n),
    )


def sample_rank(key: str, seed: int) -> int:
    """A pseudo-random 64-bit rank of ``key`` (per element): training keys are those of
    small rank, so they depend neither on input order nor on sharding."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def training_rows(keys: Sequence[str], limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the keys whose :func:`sample_rank` is below ``limit``, in rank order, and
    their ranks (per element, then a sort of the sample)."""
    ranks = np.fromiter((sample_rank(k, seed) for k in keys), dtype=np.uint64, count=len(keys))
    rows = np.flatnonzero(ranks < np.uint64(limit)) if limit < 1 << 64 else np.arange(ranks.size)
    rows = rows[np.argsort(ranks[rows], kind="stable")]
    return rows, ranks[rows]


def _kmeans(sample: np.ndarray, k: int, seed: int, max_points: int) -> np.ndarray:
    """``k`` unit centroids of spherical k-means on ``sample`` (at least ``k`` rows)."""
    import faiss

    kmeans = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=seed,
        max_points_per_centroid=max_points,
        min_points_per_centroid=1,  # small cells are trained on what they hold
    )
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return _unit(kmeans.centroids)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def train_coarse(sample: np.ndarray, coarse: int, seed: int) -> np.ndarray:
    """``coarse`` unit centroids trained on the rows of ``sample`` (once; FAISS uses at most
    ``coarse * COARSE_POINTS_PER_CELL`` of them)."""
    return _kmeans(sample, min(coarse, sample.shape[0]), seed, COARSE_POINTS_PER_CELL)


def fine_counts(sizes: np.ndarray, cells: int) -> np.ndarray:
    """Fine cells per coarse cell, in proportion to its ``sizes`` (training rows), at least
    one each and never more than its rows."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.ones(sizes.size, dtype=np.int64)
    bounds = np.cumsum(sizes) * cells // total
    counts = np.diff(bounds, prepend=0)
    return np.maximum(1, np.minimum(counts, sizes))


def train_fine(sample: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` unit centroids of one coarse cell from its training rows (per coarse cell).

    With no more rows than ``count`` the rows themselves are the centroids.
    """
    if sample.shape[0] <= count:
        return _unit(sample)
    if count == 1:
        return _unit(sample.astype(np.float64).mean(axis=0, keepdims=True))
    return _kmeans(sample, count, seed, FINE_POINTS_PER_CELL)


@dataclass(frozen=True, eq=False)
class Cells:
    """Fine centroids grouped under coarse centroids (all unit rows, float32).

    The fine cells of coarse cell ``j`` are rows ``start[j]:start[j + 1]`` of ``fine``.
    """

    coarse: np.ndarray  # (k, D)
    fine: np.ndarray  # (c, D)
    start: np.ndarray  # (k + 1,) int64

    @property
    def count(self) -> int:
        """Number of (fine) cells."""
        return int(self.fine.shape[0])

    @classmethod
    def single(cls, dim: int) -> Cells:
        """One cell holding every vector (an exact search)."""
        centroid = np.zeros((1, dim), dtype=np.float32)
        centroid[0, 0] = 1.0
        return cls(centroid, centroid, np.array([0, 1], dtype=np.int64))

    @classmethod
    def from_parts(cls, coarse: np.ndarray, fines: list[np.ndarray]) -> Cells:
        """Cells from coarse centroids and each coarse cell's fine centroids (once)."""
        start = np.concatenate([[0], np.cumsum([f.shape[0] for f in fines])]).astype(np.int64)
        return cls(_unit(coarse), _unit(np.vstack(fines)), start)

    def assign(self, x: np.ndarray, nprobe: int, coarse_probe: int = COARSE_PROBE) -> np.ndarray:
        """The ``nprobe`` nearest cells of every row of ``x`` (unit rows), nearest first.

        Shape ``(n, min(nprobe, count))``, int64; cells are distinct within a row. Only
        the fine cells of the ``coarse_probe`` nearest coarse cells are candidates.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        k = min(nprobe, self.count)
        out = np.empty((x.shape[0], k), dtype=np.int64)
        if self.count == 1:
            out[:] = 0
            return out
        for lo in range(0, x.shape[0], ASSIGN_ROWS):
            out[lo : lo + ASSIGN_ROWS] = self._assign_rows(
                x[lo : lo + ASSIGN_ROWS], k, coarse_probe
            )
        return out

    @cached_property
    def _fine_lists(self) -> Any:
        """The fine centroids as a FAISS inverted file with one list per coarse cell."""
        import faiss

        dim = self.fine.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(self.coarse)
        lists = faiss.IndexIVFFlat(quantizer, dim, self.coarse.shape[0], faiss.METRIC_INNER_PRODUCT)
        parent = np.repeat(np.arange(self.coarse.shape[0]), np.diff(self.start)).astype(np.int64)
        ids = np.arange(self.count, dtype=np.int64)
        fine = self.fine
        lists.add_core(
            self.count, faiss.swig_ptr(fine), faiss.swig_ptr(ids), faiss.swig_ptr(parent)
        )
        return lists

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("coarse", "fine", "start")}

    def _assign_rows(self, x: np.ndarray, k: int, coarse_probe: int) -> np.ndarray:
        # Every coarse cell holds at least one fine cell, so p >= k coarse cells give k.
        p = min(max(coarse_probe, k), self.coarse.shape[0])
        near = _nearest(x, self.coarse, np.arange(self.coarse.shape[0]), p)
        wide = min(k + _RERANK_EXTRA, self.count)
        return _best(x, self.fine, *self._scan_lists(x, near, wide), k)

    def _scan_lists(
        self, x: np.ndarray, lists: np.ndarray, wide: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``wide`` most similar fine centroids in each row's coarse ``lists``:
        ``(ids, similarities)``, one SIMD dot product per row and centroid (no batch
        effects). ``nprobe`` goes with the call, so threads may share the cells."""
        import faiss

        params = faiss.SearchParametersIVF()
        params.nprobe = lists.shape[1]
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        coarse_sims = np.zeros(lists.shape, dtype=np.float32)
        sims = np.empty((x.shape[0], wide), dtype=np.float32)
        ids = np.empty((x.shape[0], wide), dtype=np.int64)
        self._fine_lists.search_preassigned_c(
            x.shape[0],
            faiss.swig_ptr(x),
            wide,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(coarse_sims),
            faiss.swig_ptr(sims),
            faiss.swig_ptr(ids),
            False,
            params,
        )
        return ids, sims


def _nearest(x: np.ndarray, centroids: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest of ``centroids`` (rows ``ids``) for each row of ``x``, nearest first."""
    sims = x @ centroids.T
    wide = min(k + _RERANK_EXTRA, centroids.shape[0])
    if wide < centroids.shape[0]:
        top = np.argpartition(-sims, wide - 1, axis=1)[:, :wide]
    else:
        top = np.broadcast_to(np.arange(centroids.shape[0]), sims.shape)
    return _best(x, centroids, ids[top], np.take_along_axis(sims, top, axis=1), k)


def _best(
    x: np.ndarray, centroids: np.ndarray, cand: np.ndarray, sims: np.ndarray, k: int
) -> np.ndarray:
    """The ``k`` best candidates ``cand`` (-1: none) of each row by similarity ``sims``.

    float32 products differ in the last bits between batch shapes and machines. Where two
    of the ``k + 1`` best are closer than ``_TIE`` (far above that error), the row is
    ranked again in float64, ties broken by the smaller id; elsewhere the float32 order is
    already the exact one. Either way the choice does not depend on the batch.
    """
    sims = np.where(cand < 0, -np.inf, sims)
    order = np.lexsort((cand, -sims), axis=-1)
    cand = np.take_along_axis(cand, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    head = sims[:, : k + 1]
    near_tie = (np.diff(head, axis=1) > -_TIE).any(axis=1)
    rows = np.flatnonzero(near_tie)
    if rows.size:
        exact = np.einsum(
            "nd,nmd->nm",
            x[rows].astype(np.float64),
            centroids[np.maximum(cand[rows], 0)].astype(np.float64),
        )
        exact[cand[rows] < 0] = -np.inf
        again = np.lexsort((cand[rows], -exact), axis=-1)
        cand[rows] = np.take_along_axis(cand[rows], again, axis=1)
    return np.ascontiguousarray(cand[:, :k])


def nearest_coarse(x: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The nearest coarse cell of every row of ``x`` (per element: routes training rows to
    :func:`train_fine`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ids = np.arange(coarse.shape[0])
    out = np.empty(x.shape[0], dtype=np.int64)
    for lo in range(0, x.shape[0], ASSIGN_ROWS):
        out[lo : lo + ASSIGN_ROWS] = _nearest(x[lo : lo + ASSIGN_ROWS], coarse, ids, 1)[:, 0]
    return out


def train_cells(
    sample: np.ndarray, plan: CellPlan, seed: int, coarse_rows: int | None = None
) -> Cells:
    """Cells for ``plan`` trained on ``sample`` (unit rows in rank order): coarse centroids
    from its first ``coarse_rows`` rows (all by default), then each coarse cell's fine
    centroids from the sample rows nearest to it."""
    if plan.cells == 1:
        return Cells.single(sample.shape[1])
    coarse = train_coarse(sample[:coarse_rows], plan.coarse, seed)
    home = nearest_coarse(sample, coarse)
    sizes = np.bincount(home, minlength=coarse.shape[0])
    counts = fine_counts(sizes, plan.cells)
    by_cell = np.argsort(home, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])

    def fine(j: int) -> np.ndarray:
        if not sizes[j]:
            return coarse[j : j + 1]
        return train_fine(sample[by_cell[bounds[j] : bounds[j + 1]]], int(counts[j]), seed + 1 + j)

    # Small k-means runs side by side, one thread each (OpenMP start-up would dominate).
    with ThreadPoolExecutor(worker_count(), initializer=one_faiss_thread) as pool:
        fines = list(pool.map(fine, range(coarse.shape[0])))
    return Cells.from_parts(coarse, fines)


def worker_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def one_faiss_thread() -> None:
    """Thread-pool initializer: FAISS calls of this thread use one OpenMP thread."""
    import faiss

    faiss.omp_set_num_threads(1)
