"""Near-duplicate removal on synthetic clustered embeddings with planted duplicates."""

from __future__ import annotations

import random

import numpy as np
import pytest

from curation.dedup import cells
from curation.dedup.keep import NearCandidate
from curation.dedup.near import NearDuplicate, find_near_duplicates, similar_pairs

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, n_planted: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in 20 tight clusters (same-cluster cosine ~0.75); the last
    ``n_planted`` rows are near-copies (cosine 0.96-0.995) of distinct earlier rows, whose
    indices are returned."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((20, DIM)))
    base = n - n_planted
    x = centers[rng.integers(0, 20, base)] + 0.6 / np.sqrt(DIM) * rng.standard_normal((base, DIM))
    x = _unit(x)
    sources = rng.choice(base, n_planted, replace=False)
    noise = rng.uniform(0.1, 0.28, (n_planted, 1)) / np.sqrt(DIM)
    copies = _unit(x[sources] + noise * rng.standard_normal((n_planted, DIM)))
    return np.vstack([x, copies]), sources


def exact_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Brute force: every row pair ``i < j`` with similarity above ``threshold``."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, x.shape[0], 1000):
        rows, cols = np.nonzero(x[start : start + 1000] @ x.T > threshold)
        pairs.update(
            (start + i, j)
            for i, j in zip(rows.tolist(), cols.tolist(), strict=True)
            if start + i < j
        )
    return pairs


def test_planted_duplicates_found_and_others_kept() -> None:
    x, sources = clustered(3000, 150)
    copies = np.arange(2850, 3000)
    assert exact_pairs(x, 0.95) == set(zip(sources.tolist(), copies.tolist(), strict=True))
    keys = [f"img{i:05d}" for i in range(3000)]
    candidates = [NearCandidate(k, kept_texts=1, best_itm=0.5) for k in keys]
    removed = find_near_duplicates(keys, x, candidates, threshold=0.95)
    # Ties on texts and ITM: the smaller key, i.e. the earlier source row, is kept.
    assert {(d.key, d.dup_of) for d in removed} == {
        (keys[c], keys[s]) for s, c in zip(sources, copies, strict=True)
    }
    for dup in removed:
        i, j = keys.index(dup.key), keys.index(dup.dup_of)
        assert dup.similarity == pytest.approx(float(x[i] @ x[j]), abs=1e-5)
        assert dup.similarity > 0.95
    assert [d.key for d in removed] == sorted(d.key for d in removed)


def test_keep_rule_picks_the_best_member_whatever_the_order() -> None:
    rng = np.random.default_rng(3)
    anchor = _unit(rng.standard_normal((1, DIM)))
    group = _unit(anchor + 0.1 / np.sqrt(DIM) * rng.standard_normal((3, DIM)))
    others = _unit(rng.standard_normal((5, DIM)))
    x = np.vstack([group, others])
    keys = ["g-a", "g-b", "g-c", "o1", "o2", "o3", "o4", "o5"]
    scores = {"g-a": (1, 0.9), "g-b": (3, 0.6), "g-c": (3, 0.8)}
    rows = list(range(8))
    for _ in range(4):
        random.Random(len(rows)).shuffle(rows)
        ks = [keys[r] for r in rows]
        cands = [NearCandidate(k, *scores.get(k, (1, 0.5))) for k in ks]
        removed = find_near_duplicates(ks, x[rows], cands)
        assert sorted((d.key, d.dup_of) for d in removed) == [("g-a", "g-c"), ("g-b", "g-c")]
        rows = rows[1:] + rows[:1]


def test_a_chain_removes_only_images_above_the_threshold_to_a_kept_one() -> None:
    a = np.zeros((3, DIM), dtype=np.float32)
    a[0, 0] = 1.0
    a[1, :2] = [np.cos(0.25), np.sin(0.25)]  # cos 0.969 to row 0
    a[2, :2] = [np.cos(0.5), np.sin(0.5)]  # cos 0.969 to row 1, 0.878 to row 0
    keys = ["k0", "k1", "k2"]
    removed = find_near_duplicates(keys, a, [NearCandidate(k, 1, 0.5) for k in keys])
    # k1 duplicates the kept k0; k2 is linked only to the removed k1, 0.878 from k0: kept.
    assert removed == [NearDuplicate("k1", "k0", pytest.approx(np.cos(0.25), abs=1e-6))]
    # With k1 ranked first it is kept, and both neighbours are its duplicates.
    cands = [NearCandidate("k0", 1, 0.5), NearCandidate("k1", 2, 0.5), NearCandidate("k2", 1, 0.5)]
    assert find_near_duplicates(keys, a, cands) == [
        NearDuplicate("k0", "k1", pytest.approx(np.cos(0.25), abs=1e-6)),
        NearDuplicate("k2", "k1", pytest.approx(np.cos(0.25), abs=1e-6)),
    ]


def test_inverted_file_join_matches_exact_search(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = clustered(5000, 250, seed=1)
    truth = exact_pairs(x, 0.95)
    monkeypatch.setattr(cells, "FLAT_MAX_VECTORS", 1000)
    monkeypatch.setattr(cells, "CELL_SIZE", 125)  # 40 cells under 7 coarse cells
    lo, hi, sims = similar_pairs(x, 0.95)
    found = set(zip(lo.tolist(), hi.tolist(), strict=True))
    assert found <= truth
    assert len(found) / len(truth) >= 0.99
    np.testing.assert_allclose(sims, np.einsum("ij,ij->i", x[lo], x[hi]), atol=1e-5)
    again = similar_pairs(x, 0.95)
    assert all(np.array_equal(p, q) for p, q in zip((lo, hi, sims), again, strict=True))
    # Keys choose the training sample: permuted rows with their keys give the same pairs.
    keys = [f"k{i:05d}" for i in range(x.shape[0])]
    perm = np.random.default_rng(2).permutation(x.shape[0])
    plo, phi, psims = similar_pairs(x[perm], 0.95, keys=[keys[i] for i in perm])
    base = similar_pairs(x, 0.95, keys=keys)
    moved = {(min(a, b), max(a, b)): s for a, b, s in zip(perm[plo], perm[phi], psims, strict=True)}
    assert moved == dict(
        zip(zip(base[0].tolist(), base[1].tolist(), strict=True), base[2], strict=True)
    )


def test_invalid_input_is_refused() -> None:
    x, _ = clustered(10, 0)
    keys = [f"k{i}" for i in range(10)]
    cands = [NearCandidate(k, 1, 0.5) for k in keys]
    with pytest.raises(ValueError, match="same length"):
        find_near_duplicates(keys[:9], x, cands)
    with pytest.raises(ValueError, match="row of key"):
        find_near_duplicates(keys, x, cands[::-1])
    with pytest.raises(ValueError, match="normalised"):
        find_near_duplicates(keys, 2 * x, cands)
    assert find_near_duplicates([], np.empty((0, DIM), np.float32), []) == []


def test_dense_region_keeps_no_linked_pair_and_removes_only_linked_images() -> None:
    rng = np.random.default_rng(5)
    centre = _unit(rng.standard_normal((1, DIM)))
    x = _unit(
        centre + rng.uniform(0.2, 0.5, (400, 1)) / np.sqrt(DIM) * rng.standard_normal((400, DIM))
    )
    keys = [f"d{i:03d}" for i in range(400)]
    cands = [NearCandidate(k, int(rng.integers(0, 3)), float(rng.random())) for k in keys]
    removed = find_near_duplicates(keys, x, cands, threshold=0.95)
    assert removed, "the dense region should hold duplicates"
    gone = {keys.index(d.key) for d in removed}
    kept = np.array(sorted(set(range(400)) - gone))
    sims = x[kept] @ x[kept].T
    assert (sims[np.triu_indices(kept.size, 1)] <= 0.95).all()
    for dup in removed:
        i, j = keys.index(dup.key), keys.index(dup.dup_of)
        assert j in set(kept.tolist()) and dup.similarity > 0.95
        assert dup.similarity == pytest.approx(float(x[i] @ x[j]), abs=1e-5)
    rows = np.random.default_rng(6).permutation(400)
    again = find_near_duplicates([keys[r] for r in rows], x[rows], [cands[r] for r in rows], 0.95)
    assert again == removed
