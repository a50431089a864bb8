"""From a sparse list of links to the greedy keep, one connected component at a time.

The greedy keep of :func:`curation.dedup.leaders.leaders` visits items best first and
decides each from its linked neighbours only, so items of different connected components
never influence each other: running it per component, in the same rank order, gives
exactly the result of one run over all items. Items without links are kept.

What runs where:

- once, over the edge list: :func:`edge_components` labels every link with its component.
  It holds the two endpoint keys of every link and a few int64 arrays per link and per
  linked item: ``O(E)`` memory for ``E`` links (tens of bytes per link besides the keys),
  independent of the number of unlinked items.
- per component (key): :func:`greedy_keep` over the component's links and its items'
  ranks; memory is the component's links.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from curation.dedup.leaders import leaders


def component_labels(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Connected components of nodes ``0..n-1`` with edges ``(a[i], b[i])``: each node's
    label is the smallest node of its component.

    Hooking and pointer jumping on numpy arrays: every round, each root linked to a
    smaller root is hooked under the smallest of them, then paths are compressed; the
    number of roots drops every round.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))


def edge_components(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The component label of every link ``(a[i], b[i])`` between keys (strings or ints).

    Labels are int64; two links share a label exactly when they are connected.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    labels = component_labels(inverse[: a.size], inverse[a.size :], nodes.size)
    return labels[inverse[: a.size]]


def greedy_keep(
    ranks: Mapping[Hashable, Any],
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    weight: Sequence[float] | np.ndarray,
) -> dict[Hashable, tuple[Hashable, float]]:
    """Removed items of one component: ``{key: (kept key it duplicates, weight)}``.

    ``ranks`` maps every key of the links ``(a[i], b[i], weight[i])`` to its sort key
    (best first, all distinct); the keep is :func:`~curation.dedup.leaders.leaders`
    in that order.
    """
    order = sorted(ranks, key=ranks.__getitem__)
    position = {key: i for i, key in enumerate(order)}
    ai = np.fromiter((position[k] for k in a), dtype=np.int64, count=len(a))
    bi = np.fromiter((position[k] for k in b), dtype=np.int64, count=len(b))
    n = len(order)
    leader, to_leader = leaders(n, ai, bi, np.asarray(weight), np.arange(n, dtype=np.int64))
    return {
        order[i]: (order[leader[i]], float(to_leader[i]))
        for i in np.flatnonzero(leader != np.arange(n)).tolist()
    }
