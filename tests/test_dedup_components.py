"""Connected components over an edge list, and the greedy keep run one component at a time."""

from __future__ import annotations

import random

import numpy as np

from curation.dedup.components import component_labels, edge_components, greedy_keep
from curation.dedup.leaders import leaders


def union_find_labels(a: list[int], b: list[int], n: int) -> list[int]:
    """Reference: smallest node of each node's component, by plain union-find."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for x, y in zip(a, b, strict=True):
        rx, ry = root(x), root(y)
        parent[max(rx, ry)] = min(rx, ry)
    return [root(i) for i in range(n)]


def test_component_labels_match_union_find_on_random_graphs() -> None:
    rng = np.random.default_rng(0)
    for n, edges in [(1, 0), (10, 0), (50, 30), (500, 400), (2000, 2500)]:
        a = rng.integers(0, n, edges)
        b = rng.integers(0, n, edges)
        labels = component_labels(a, b, n)
        assert labels.tolist() == union_find_labels(a.tolist(), b.tolist(), n)
    # A long path given in the worst order for hooking still ends in one component.
    path = np.arange(1000)[::-1]
    assert set(component_labels(path[:-1], path[1:], 1000).tolist()) == {0}


def test_edge_components_label_links_by_key() -> None:
    a = ["b", "x", "c", "y", "q"]
    b = ["a", "y", "b", "z", "q2"]
    labels = edge_components(a, b).tolist()
    assert labels[0] == labels[2] and labels[1] == labels[3]
    assert len({labels[0], labels[1], labels[4]}) == 3
    assert edge_components([], []).size == 0


def test_greedy_keep_per_component_equals_one_run_over_all_items() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    # Sparse random links with dense pockets, so components range from pairs to hundreds.
    a = np.concatenate([rng.integers(0, n, 1500), rng.integers(0, 200, 1500)])
    b = np.concatenate([rng.integers(0, n, 1500), rng.integers(0, 200, 1500)])
    keep = a != b
    a, b = a[keep], b[keep]
    weight = rng.random(a.size).round(2)  # rounded: equal weights test the tie rule too
    score = rng.integers(0, 5, n)
    keys = [f"k{i:04d}" for i in range(n)]
    rank = {keys[i]: (-int(score[i]), keys[i]) for i in range(n)}
    order = np.array(sorted(range(n), key=lambda i: rank[keys[i]]))
    leader, to_leader = leaders(n, a, b, weight, order)
    expected = {
        keys[i]: (keys[leader[i]], float(to_leader[i]))
        for i in np.flatnonzero(leader != np.arange(n)).tolist()
    }

    labels = edge_components([keys[i] for i in a], [keys[i] for i in b])
    by_component: dict[int, list[int]] = {}
    for edge, label in enumerate(labels.tolist()):
        by_component.setdefault(label, []).append(edge)
    components = list(by_component.values())
    random.Random(2).shuffle(components)
    removed: dict[str, tuple[str, float]] = {}
    for edges in components:
        random.Random(len(edges)).shuffle(edges)
        ea = [keys[a[e]] for e in edges]
        eb = [keys[b[e]] for e in edges]
        ranks = {k: rank[k] for k in ea + eb}
        removed.update(greedy_keep(ranks, ea, eb, weight[edges]))
    assert len(expected) > 100
    assert removed == expected
