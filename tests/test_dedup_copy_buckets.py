"""Copy grouping as distributed stages, composed in plain Python: groups by hash key ->
multi-hash buckets -> links -> components -> keep, against the single-machine
``group_copies``."""

from __future__ import annotations

import random
from collections import defaultdict
from math import comb

import numpy as np
import pytest

from curation.dedup.components import edge_components, greedy_keep
from curation.dedup.copies import (
    CopyLink,
    copy_group_key,
    copy_link,
    group_copies,
    multihash_layout,
    near_hash_pairs,
)
from curation.dedup.copy_buckets import bucket_keys, bucket_links, first_meeting
from curation.dedup.keep import CopyCandidate, choose_copy, copy_rank


def flip(h: int, rng: np.random.Generator, bits: int) -> int:
    for bit in rng.choice(64, bits, replace=False).tolist():
        h ^= 1 << bit
    return h


def dense_items(n_clusters: int, per_cluster: int, seed: int) -> list[CopyCandidate]:
    """Clusters whose hashes drift by 1-3 bits from a random earlier member (so links
    chain), with exact copies (same sha256) and same-hash, other-bytes images."""
    rng = np.random.default_rng(seed)
    items = []
    for c in range(n_clusters):
        hashes = [int(rng.integers(0, 2**64, dtype=np.uint64))]
        for _ in range(per_cluster - 1):
            hashes.append(
                flip(hashes[int(rng.integers(0, len(hashes)))], rng, int(rng.integers(1, 4)))
            )
        for m, h in enumerate(hashes):
            size = int(rng.integers(1, 4)) * 32
            items.append(CopyCandidate(f"c{c:03d}-{m:03d}", f"sha-{c}-{m}", h, size, size))
            if rng.random() < 0.2:
                items.append(CopyCandidate(f"c{c:03d}-{m:03d}-same", f"sha-{c}-{m}", h, size, size))
            if rng.random() < 0.1:
                items.append(CopyCandidate(f"c{c:03d}-{m:03d}-other", f"sha-o{c}-{m}", h, 64, 64))
    return items


def distributed_copies(
    items: list[CopyCandidate], max_hamming: int, seed: int
) -> dict[str, CopyLink]:
    """The Beam stages' functions, composed with dicts for GroupByKey, in shuffled order."""
    rng = random.Random(seed)
    arriving = list(items)
    rng.shuffle(arriving)
    groups: dict[object, list[CopyCandidate]] = defaultdict(list)
    for item in arriving:  # per element
        groups[copy_group_key(item, max_hamming)].append(item)
    heads = {group: choose_copy(members) for group, members in groups.items()}  # per key
    links: list[tuple[str, str, float]] = []
    if max_hamming > 0:
        layout = multihash_layout(len(heads), max_hamming)  # once
        buckets: dict[tuple[int, int], list[CopyCandidate]] = defaultdict(list)
        for head in heads.values():  # per distinct hash
            for key in bucket_keys(head.phash, *layout):
                buckets[key].append(head)
        for bucket, entries in buckets.items():  # per bucket
            rng.shuffle(entries)
            links += bucket_links(
                bucket, [e.key for e in entries], [e.phash for e in entries], *layout, max_hamming
            )
    by_key = {head.key: head for head in heads.values()}
    rep_of: dict[str, str] = {}
    if links:
        a, b, weight = (list(t) for t in zip(*links, strict=True))
        by_component: dict[int, list[int]] = defaultdict(list)
        for edge, label in enumerate(edge_components(a, b).tolist()):  # once
            by_component[label].append(edge)
        for edges in by_component.values():  # per component
            ea, eb = [a[e] for e in edges], [b[e] for e in edges]
            ranks = {k: copy_rank(by_key[k]) for k in ea + eb}
            removed = greedy_keep(ranks, ea, eb, [weight[e] for e in edges])
            rep_of.update((k, leader) for k, (leader, _) in removed.items())
    out = {}
    for item in arriving:  # per element, joined with its group's representative
        head = heads[copy_group_key(item, max_hamming)]
        out[item.key] = copy_link(item, by_key[rep_of.get(head.key, head.key)])
    return out


@pytest.mark.parametrize("max_hamming", [-1, 0, 2, 4, 7])
def test_distributed_copies_equal_group_copies(max_hamming: int) -> None:
    items = dense_items(40, 30, seed=max_hamming + 10)
    # Spread hashes too, a few of them within reach of the clusters' first members.
    rng = np.random.default_rng(max_hamming + 20)
    items += [
        CopyCandidate(f"u{i:04d}", f"sha-u{i}", int(h), 100, 100)
        for i, h in enumerate(rng.integers(0, 2**64, 500, dtype=np.uint64))
    ]
    items += [
        CopyCandidate(f"v{i:03d}", f"sha-v{i}", flip(items[30 * i].phash, rng, 3), 500, 500)
        for i in range(20)
    ]
    expected = group_copies(items, max_hamming=max_hamming)
    kinds = {link.kind for link in expected.values()}
    assert kinds >= {None, "exact"} and (max_hamming < 0) == ("perceptual" not in kinds)
    for seed in range(3):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        assert group_copies(shuffled, max_hamming=max_hamming) == expected
        assert distributed_copies(shuffled, max_hamming, seed) == expected


@pytest.mark.parametrize("max_hamming", [1, 4, 7, 12])
def test_bucket_links_find_every_pair_once(max_hamming: int) -> None:
    rng = np.random.default_rng(max_hamming)
    base = rng.integers(0, 2**64, 800, dtype=np.uint64)
    near = np.array(
        [flip(int(h), rng, int(rng.integers(1, max_hamming + 3))) for h in base[:400]],
        dtype=np.uint64,
    )
    hashes = np.unique(np.concatenate([base, near]))
    keys = [f"h{i:04d}" for i in range(hashes.size)]
    layout = multihash_layout(hashes.size, max_hamming)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes.tolist()):
        for key in bucket_keys(h, *layout):
            buckets[key].append(i)
    found = []
    for bucket, members in buckets.items():
        found += bucket_links(
            bucket, [keys[i] for i in members], hashes[members], *layout, max_hamming
        )
    pairs = [(a, b) for a, b, _ in found]
    assert len(pairs) == len(set(pairs))
    first, second = near_hash_pairs(hashes, max_hamming)
    expected = {(keys[i], keys[j]) for i, j in zip(first.tolist(), second.tolist(), strict=True)}
    assert len(expected) > 50
    assert set(pairs) == expected
    for a, b, similarity in found:
        distance = (int(hashes[keys.index(a)]) ^ int(hashes[keys.index(b)])).bit_count()
        assert similarity == 1.0 - distance / 64


def test_bucket_keys_follow_the_layout() -> None:
    tables, bits, flips = multihash_layout(1_000_000, 4)
    keys = bucket_keys(0x0123_4567_89AB_CDEF, tables, bits, flips)
    assert len(keys) == len(set(keys)) == tables * sum(comb(bits, k) for k in range(flips + 1))
    assert len(keys) == 66  # 3 chunks of 21 bits, each as is and with one of 21 bits flipped
    own = [keys[t * (1 + bits)] for t in range(tables)]
    assert own == [(t, (0x0123_4567_89AB_CDEF >> (21 * t)) & (2**21 - 1)) for t in range(3)]
    # Pigeonhole: 4 differing bits in 3 chunks leave one chunk within 1 bit.
    a = np.array([0, 0, 0], dtype=np.uint64)
    b = np.array([0b1111, 0b11 | (0b11 << 21), (1 << 21) | (1 << 42) | 0b11], dtype=np.uint64)
    table, _ = first_meeting(a, b, tables, bits, flips)
    assert table.tolist() == [1, 2, 1]
