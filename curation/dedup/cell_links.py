"""Near-duplicate links within one cell: the per-cell step of near-duplicate search.

Every vector is assigned to its ``nprobe`` nearest cells (:meth:`curation.dedup.cells.Cells.
assign`); the first is its home cell. A cell's entries are the vectors that probe it; its
members are those whose home it is. :func:`cell_links` range-searches all entries against
the members, so a pair is found when either vector probes the other's home cell.

A pair can be found in two cells (each vector probes the other's home cell) or twice in one
(both at home there). Each entry carries its probe list, so the cell decides locally which
occurrence is the pair's own: a pair found with member ``m`` and query ``q`` is kept unless
``m`` also probes ``q``'s home cell (where the pair is found the other way round) and
``q``'s key is the smaller. Every link then comes out of exactly one cell, and the links
of all cells need no global de-duplication.

Similarities are computed again in float64 from the float32 vectors for every candidate
(FAISS range-searches with a margin below the threshold), so a link and its similarity do
not depend on which vectors share the cell's batch or on the machine.

What runs where: :func:`cell_links` runs per cell (key); its memory is the cell's entries
(about ``nprobe * CELL_SIZE`` vectors) plus the links it returns.
"""

from __future__ import annotations

import numpy as np

LINK_MARGIN = 1e-4
_QUERY_ROWS = 65_536


def exact_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of unit rows ``a`` and ``b`` in float64."""
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def cell_links(
    cell: int, keys: np.ndarray, vectors: np.ndarray, probes: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links above ``threshold`` found in ``cell``: ``(i, j, similarity)``, positions into the
    entries with ``keys[i] < keys[j]``.

    ``keys`` (unique, any ordered dtype), ``vectors`` (unit float32 rows) and ``probes``
    (each entry's cells, home first) describe the entries of ``cell``: every vector whose
    probes include it.
    """
    import faiss

    keys = np.asarray(keys)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    probes = np.asarray(probes, dtype=np.int64)
    members = np.flatnonzero(probes[:, 0] == cell)
    empty = np.empty(0, dtype=np.int64)
    if members.size == 0:
        return empty, empty, np.empty(0, dtype=np.float64)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors[members])
    firsts, seconds, sims = [], [], []
    for lo in range(0, keys.size, _QUERY_ROWS):
        chunk = np.arange(lo, min(keys.size, lo + _QUERY_ROWS))
        lims, _, found = index.range_search(vectors[chunk], threshold - LINK_MARGIN)
        q = np.repeat(chunk, np.diff(lims).astype(np.int64))
        m = members[found]
        other_way = (probes[m] == probes[q, 0][:, None]).any(axis=1)
        keep = (q != m) & (~other_way | (keys[m] < keys[q]))
        q, m = q[keep], m[keep]
        sim = exact_similarity(vectors[q], vectors[m])
        above = sim > threshold
        q, m, sim = q[above], m[above], sim[above]
        q_first = keys[q] < keys[m]
        firsts.append(np.where(q_first, q, m))
        seconds.append(np.where(q_first, m, q))
        sims.append(sim)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims)
