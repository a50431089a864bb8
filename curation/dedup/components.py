"""Connected components of an undirected graph given as edge arrays (vectorised union-find)."""

from __future__ import annotations

import numpy as np


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label nodes ``0..n-1`` by component: each label is the smallest node of its component.

    ``a`` and ``b`` hold the edge endpoints. Union-find with hooking of the larger root
    under the smaller and full path compression, done on whole arrays per round, so a
    million nodes take well under a second.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while a.size:
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            break
        lo = np.minimum(ra[split], rb[split])
        hi = np.maximum(ra[split], rb[split])
        np.minimum.at(parent, hi, lo)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        a, b = a[split], b[split]
    return parent


def groups_of(labels: np.ndarray) -> list[np.ndarray]:
    """Node indices of every component with more than one node, each sorted ascending."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, labels.size])
    return [order[s : s + k] for s, k in zip(starts, sizes, strict=True) if k > 1]
