"""Greedy leader selection on a graph of linked items (duplicate candidates).

Items are visited best first; an item linked to an item already kept is assigned to it,
any other item is kept. Unlike connected components this never chains: every removed item
is linked directly to the item it is assigned to, and no two kept items are linked.
"""

from __future__ import annotations

import numpy as np


def leaders(
    n: int, a: np.ndarray, b: np.ndarray, weight: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy leader selection: ``(leader, weight_to_leader)`` for nodes ``0..n-1``.

    Nodes are visited in ``order`` (a permutation of ``0..n-1``, best first). A node with an
    edge to an already kept node is assigned to the kept neighbour of highest ``weight``
    (ties: the earlier in ``order``); any other node is kept and is its own leader (weight
    1.0). Unlike connected components this never chains: a node two links away from a kept
    node, through a removed one, is kept.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    leader = np.arange(n, dtype=np.int64)
    to_leader = np.ones(n, dtype=np.float64)
    if a.size == 0:
        return leader, to_leader
    position = np.empty(n, dtype=np.int64)
    position[np.asarray(order, dtype=np.int64)] = np.arange(n)
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    both = np.concatenate([weight, weight])
    by_src = np.argsort(src, kind="stable")
    src, dst, both = src[by_src], dst[by_src], both[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    linked = np.unique(src)
    kept = np.zeros(n, dtype=bool)
    for node in linked[np.argsort(position[linked])].tolist():
        lo, hi = starts[node], starts[node + 1]
        neighbours = dst[lo:hi]
        is_kept = kept[neighbours]
        if not is_kept.any():
            kept[node] = True
            continue
        candidates, weights = neighbours[is_kept], both[lo:hi][is_kept]
        best = np.lexsort((position[candidates], -weights))[0]
        leader[node], to_leader[node] = candidates[best], weights[best]
    return leader, to_leader
