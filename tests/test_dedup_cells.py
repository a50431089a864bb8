"""Near duplicates as distributed stages, composed in plain Python: shards -> cells ->
links -> components -> keep, against the single-machine ``find_near_duplicates``."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from curation.dedup import cells
from curation.dedup.cell_links import cell_links
from curation.dedup.cells import Cells, plan_cells, train_cells, training_rows
from curation.dedup.components import edge_components, greedy_keep
from curation.dedup.keep import NearCandidate, near_rank
from curation.dedup.near import DEFAULT_NPROBE, NearDuplicate, find_near_duplicates, near_cells

DIM = 48


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_clusters(n: int, seed: int) -> np.ndarray:
    """Background in 30 loose clusters plus 40 dense regions whose members are mostly
    within cosine 0.95 of each other, so links chain through them."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((30, DIM)))
    background = centres[rng.integers(0, 30, n // 2)]
    background = _unit(background + 0.6 / np.sqrt(DIM) * rng.standard_normal(background.shape))
    dense = _unit(rng.standard_normal((40, DIM)))[rng.integers(0, 40, n - n // 2)]
    spread = rng.uniform(0.15, 0.4, (dense.shape[0], 1)) / np.sqrt(DIM)
    dense = _unit(dense + spread * rng.standard_normal(dense.shape))
    return np.vstack([background, dense])


@pytest.fixture
def small_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells of 100 vectors above 1,000 vectors, so a few thousand make many cells."""
    monkeypatch.setattr(cells, "FLAT_MAX_VECTORS", 1000)
    monkeypatch.setattr(cells, "CELL_SIZE", 100)


def distributed_near(
    keys: list[str],
    x: np.ndarray,
    candidates: list[NearCandidate],
    threshold: float,
    shards: int,
    seed: int,
) -> list[NearDuplicate]:
    """The Beam stages' functions, composed with dicts for GroupByKey, in shuffled order."""
    rng = random.Random(seed)
    trained = near_cells(x, keys)  # once, on the sample chosen by key
    rows = list(range(len(keys)))
    rng.shuffle(rows)
    by_cell: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
    for shard in np.array_split(np.array(rows), shards):  # per shard
        probes = trained.assign(x[shard], DEFAULT_NPROBE)
        for row, probe in zip(shard.tolist(), probes, strict=True):
            for cell in probe.tolist():
                by_cell[cell].append((keys[row], x[row], probe))
    links: list[tuple[str, str, float]] = []
    cell_ids = list(by_cell)
    rng.shuffle(cell_ids)
    for cell in cell_ids:  # per cell
        entries = by_cell[cell]
        rng.shuffle(entries)
        names = np.array([e[0] for e in entries])
        i, j, sims = cell_links(
            cell,
            names,
            np.stack([e[1] for e in entries]),
            np.stack([e[2] for e in entries]),
            threshold,
        )
        links.extend(zip(names[i].tolist(), names[j].tolist(), sims.tolist(), strict=True))
    if not links:
        return []
    a, b, weight = (list(t) for t in zip(*links, strict=True))
    labels = edge_components(a, b)  # once, over the edge list
    by_component: dict[int, list[int]] = defaultdict(list)
    for edge, label in enumerate(labels.tolist()):
        by_component[label].append(edge)
    rank = {c.key: near_rank(c) for c in candidates}
    removed: dict[str, tuple[str, float]] = {}
    for edges in by_component.values():  # per component
        ea, eb = [a[e] for e in edges], [b[e] for e in edges]
        ranks = {k: rank[k] for k in ea + eb}
        removed.update(greedy_keep(ranks, ea, eb, [weight[e] for e in edges]))
    return sorted(
        (NearDuplicate(k, dup_of, sim) for k, (dup_of, sim) in removed.items()),
        key=lambda d: d.key,
    )


@pytest.mark.usefixtures("small_cells")
@pytest.mark.parametrize("shards", [1, 7])
def test_distributed_near_duplicates_equal_single_machine(shards: int) -> None:
    x = dense_clusters(4000, seed=3)
    keys = [f"img-{i:05d}" for i in range(x.shape[0])]
    rng = np.random.default_rng(4)
    candidates = [NearCandidate(k, int(rng.integers(0, 3)), float(rng.random())) for k in keys]
    assert plan_cells(x.shape[0]).cells == 40
    expected = find_near_duplicates(keys, x, candidates, threshold=0.95)
    assert len(expected) > 300  # dense regions: many removals, links that chain
    assert distributed_near(keys, x, candidates, 0.95, shards, seed=shards) == expected
    # The single-machine result does not depend on the order of its input either.
    perm = rng.permutation(x.shape[0])
    shuffled = find_near_duplicates(
        [keys[i] for i in perm], x[perm], [candidates[i] for i in perm], threshold=0.95
    )
    assert shuffled == expected


@pytest.mark.usefixtures("small_cells")
def test_each_link_comes_from_one_cell_with_its_exact_similarity() -> None:
    x = dense_clusters(3000, seed=5)
    keys = np.array([f"k{i:05d}" for i in range(x.shape[0])])
    trained = near_cells(x, keys.tolist())
    probes = trained.assign(x, DEFAULT_NPROBE)
    found: list[tuple[str, str]] = []
    sims: dict[tuple[str, str], float] = {}
    for cell in range(trained.count):
        rows = np.flatnonzero((probes == cell).any(axis=1))
        i, j, s = cell_links(cell, keys[rows], x[rows], probes[rows], 0.95)
        pairs = list(zip(keys[rows][i].tolist(), keys[rows][j].tolist(), strict=True))
        found.extend(pairs)
        sims.update(zip(pairs, s.tolist(), strict=True))
    assert len(found) == len(set(found)) > 500
    assert all(a < b for a, b in found)
    # Every pair above the threshold where one vector probes the other's home cell.
    index = {k: i for i, k in enumerate(keys.tolist())}
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    rows, cols = np.nonzero(np.triu(exact > 0.95, 1))
    reachable = {
        (keys[r], keys[c])
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        if probes[r, 0] in probes[c] or probes[c, 0] in probes[r]
    }
    assert set(found) == reachable
    assert len(reachable) / rows.size >= 0.97
    for (a, b), s in sims.items():
        assert s == pytest.approx(exact[index[a], index[b]], abs=1e-12) and s > 0.95


def test_assignment_is_the_same_whatever_the_batch() -> None:
    rng = np.random.default_rng(6)
    x = dense_clusters(6000, seed=6)
    plan = cells.CellPlan(cells=150, coarse=13, sample=6000)
    trained = train_cells(x, plan, seed=0)
    assert trained.count == 150 and trained.coarse.shape[0] == 13
    whole = trained.assign(x, 3)
    assert whole.shape == (6000, 3)
    assert all(len(set(row)) == 3 for row in whole.tolist())
    for size in (1, 2, 5, 33, 1000):
        rows = rng.choice(6000, size, replace=False)
        np.testing.assert_array_equal(trained.assign(x[rows], 3), whole[rows])
    # Cells are nearest first, and the home cell is almost always the exact nearest one.
    sims = x.astype(np.float64) @ trained.fine.astype(np.float64).T
    chosen = np.take_along_axis(sims, whole, axis=1)
    assert (np.diff(chosen, axis=1) <= 0).all()
    assert np.mean(whole[:, 0] == sims.argmax(axis=1)) >= 0.97
    # One coarse probe still yields three distinct cells.
    assert all(len(set(row)) == 3 for row in trained.assign(x[:100], 3, coarse_probe=1).tolist())


def test_plan_and_sample_bounds() -> None:
    assert plan_cells(20_000) == cells.CellPlan(1, 1, 0)
    plan = plan_cells(1_000_000)
    assert (plan.cells, plan.coarse, plan.sample) == (1953, 125, 78_120)
    big = plan_cells(100_000_000)
    probe = cells.COARSE_PROBE
    assert big.coarse**2 >= probe * big.cells > (big.coarse - 1) ** 2
    assert big.sample == big.cells * cells.FINE_POINTS_PER_CELL
    single = Cells.single(8)
    assert single.assign(np.eye(3, 8, dtype=np.float32), 3).tolist() == [[0], [0], [0]]
    assert plan.sample_limit == cells.rank_limit(78_120, 1_000_000)
    assert plan.coarse_limit == cells.rank_limit(125 * cells.COARSE_POINTS_PER_CELL, 1_000_000)
    keys = [f"key{i}" for i in range(5000)]
    limit = cells.rank_limit(100, len(keys))
    rows, ranks = training_rows(keys, limit, seed=0)
    shuffled = list(reversed(keys))
    again, _ = training_rows(shuffled, limit, seed=0)
    assert [shuffled[r] for r in again] == [keys[r] for r in rows]  # same keys, rank order
    assert 70 <= len(set(rows.tolist())) <= 130 and (np.diff(ranks.astype(np.float64)) > 0).all()
    assert set(training_rows(keys, limit, seed=1)[0].tolist()) != set(rows.tolist())
    assert training_rows(keys, cells.rank_limit(6000, 5000), seed=0)[0].size == 5000


def test_fine_counts_and_small_cells() -> None:
    counts = cells.fine_counts(np.array([400, 0, 40, 3, 1557]), 50)
    assert counts.tolist() == [10, 1, 1, 1, 39]  # proportional, at least 1, at most its rows
    rows = dense_clusters(10, seed=7)
    np.testing.assert_allclose(np.linalg.norm(cells.train_fine(rows, 12, 0), axis=1), 1, atol=1e-6)
    assert cells.train_fine(rows, 12, 0).shape == (10, DIM)  # fewer rows than cells: the rows
    assert cells.train_fine(rows, 1, 0).shape == (1, DIM)


def test_cells_travel_to_workers_by_pickle() -> None:
    import pickle

    x = dense_clusters(3000, seed=8)
    trained = train_cells(x, cells.CellPlan(cells=40, coarse=7, sample=3000), seed=1)
    before = trained.assign(x[:500], 3)  # builds the FAISS lists, which do not pickle
    shipped = pickle.loads(pickle.dumps(trained))
    np.testing.assert_array_equal(shipped.assign(x[:500], 3), before)
