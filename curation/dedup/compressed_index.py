"""The compressed index of large rounds: inverted lists over an HNSW graph of centroids.

Layout (FAISS factory notation, inner product): ``IVF{nlist}_HNSW32,SQ8`` by default, ids
stored in the inverted lists (no ``IndexIDMap`` around it, whose id hash map would not fit
at 100M vectors). Cells are about :data:`CELL_SIZE` vectors; their centroids are trained
with the two-level k-means of :mod:`curation.dedup.cells` (flat k-means with ``nlist``
centroids is quadratic), and a vector finds its ``nprobe`` lists through an HNSW graph
over the centroids (``efSearch`` stored in the file), so a query costs about
``D * (efSearch * log(nlist) + nprobe * CELL_SIZE)`` whatever the index size.

Codes: ``SQ8`` stores each dimension in 8 bits (``D`` bytes a vector, 4x smaller than
float32, similarity error about 0.001), ``PQ{m}`` in ``m`` bytes (product quantization,
``D / m`` dimensions per byte). On 256-d embeddings with planted copies at cosine
0.955-0.995 and threshold 0.95, SQ8 finds as many as the exact index and PQ128 (8x smaller)
about 5% fewer: PQ underestimates similarity by 0.004-0.006 on average (bench/RESULTS.md).
Dedup decides on a threshold, so SQ8 is the default.

What runs where (as autofaiss builds large indexes):

- once: :func:`train_index` on a sample of :func:`train_size` vectors, at most
  ``nlist * TRAIN_POINTS_PER_CELL`` (the centroids, the graph, the codec); the empty trained index is small
  (``nlist * D`` floats) and is shipped to the workers;
- per shard: :func:`encode_shard` gives each vector's code (list number + code, bytes);
- once, merging: :func:`add_codes` appends codes and ids to the lists; memory is the final
  index, about ``D + 8`` bytes per vector for SQ8.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curation.dedup.cells import CellPlan, train_cells

CELL_SIZE = 1024
MAX_LISTS = 262_144
TRAIN_POINTS_PER_CELL = 40
MIN_TRAIN_POINTS = 16_384
NPROBE = 8
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 64
CODEC = "SQ8"


def list_count(n: int) -> int:
    """Number of inverted lists for ``n`` vectors: about ``n / CELL_SIZE``."""
    return int(np.clip(round(n / CELL_SIZE), 1, MAX_LISTS))


def train_size(n: int) -> int:
    """Training sample size for ``n`` vectors: ``TRAIN_POINTS_PER_CELL`` per list, and at
    least ``MIN_TRAIN_POINTS`` for the codec (PQ trains 256 centroids per byte)."""
    return min(n, max(list_count(n) * TRAIN_POINTS_PER_CELL, MIN_TRAIN_POINTS))


def _empty_index(centroids: np.ndarray, codec: str) -> Any:
    import faiss

    nlist, dim = centroids.shape
    quantizer = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the graph is then the same on every run
    try:
        quantizer.add(centroids)
    finally:
        faiss.omp_set_num_threads(threads)
    quantizer.hnsw.efSearch = HNSW_EF_SEARCH
    if codec == "SQ8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
        )
    elif codec.startswith("PQ") and codec[2:].isdigit() and dim % int(codec[2:]) == 0:
        index = faiss.IndexIVFPQ(
            quantizer, dim, nlist, int(codec[2:]), 8, faiss.METRIC_INNER_PRODUCT
        )
    else:
        raise ValueError(f"codec must be SQ8 or PQ<m> with m dividing {dim}, got {codec!r}")
    index.nprobe = NPROBE
    return index


def train_index(sample: np.ndarray, n: int, codec: str = CODEC, seed: int = 0) -> Any:
    """An empty, trained compressed index for about ``n`` vectors (once).

    ``sample`` holds unit rows drawn at random from the vectors (:func:`train_size` of
    them): the first ``TRAIN_POINTS_PER_CELL`` per list train the centroids, all the codec.
    """
    sample = np.ascontiguousarray(sample[: train_size(n)], dtype=np.float32)
    nlist = min(list_count(n), sample.shape[0])
    centroid_sample = sample[: nlist * TRAIN_POINTS_PER_CELL]
    plan = CellPlan(nlist, math.isqrt(nlist - 1) + 1, centroid_sample.shape[0])
    if nlist > 1:
        centroids = train_cells(centroid_sample, plan, seed).fine
    else:
        centroids = _mean_direction(sample)
    index = _empty_index(centroids, codec)
    index.train(sample)
    return index


def _mean_direction(sample: np.ndarray) -> np.ndarray:
    mean = sample.astype(np.float64).mean(axis=0, keepdims=True)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else np.eye(1, sample.shape[1])).astype(np.float32)


def encode_shard(index: Any, vectors: np.ndarray) -> np.ndarray:
    """Codes of a shard's unit rows for :func:`add_codes`: ``(n, code size)`` uint8 (per
    shard)."""
    return index.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))


def add_codes(index: Any, codes: np.ndarray, ids: np.ndarray) -> None:
    """Append encoded vectors with their int64 ``ids`` to ``index`` (once per shard, merging)."""
    if codes.shape[0]:
        index.add_sa_codes(codes, np.ascontiguousarray(ids, dtype=np.int64))


def describe(index: Any) -> dict[str, Any]:
    """Layout of a compressed index: ``{"layout": "IVF977_HNSW32,SQ8", "nlist", "nprobe"}``."""
    import faiss

    code = f"PQ{index.pq.M}" if isinstance(index, faiss.IndexIVFPQ) else "SQ8"
    return {
        "layout": f"IVF{index.nlist}_HNSW{HNSW_NEIGHBOURS},{code}",
        "nlist": int(index.nlist),
        "nprobe": int(index.nprobe),
    }
