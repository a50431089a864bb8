"""Perceptual-copy links as distributed stages: multi-index hashing with bucket keys.

The 64-bit perceptual hash is cut into ``tables`` chunks of ``bits = 64 // tables`` bits
(:func:`curation.dedup.copies.multihash_layout`; leftover bits belong to no chunk). If two
hashes differ in at most ``r = max_hamming`` bits, their chunks together differ in at most
``r`` bits, so one chunk differs in at most ``flips = r // tables`` bits (if every chunk
differed in ``flips + 1`` or more, that would be ``tables * (flips + 1) > r`` bits). An
image's bucket keys are therefore ``(t, chunk_t XOR e)`` for every chunk ``t`` and every
``e`` of at most ``flips`` set bits, its own chunk (``e = 0``) included: with the layout
of ``r = 4`` at a million images, 3 chunks of 21 bits and one flip, 3 * 22 = 66 keys.
Two hashes within ``r`` bits meet in the bucket of one's own chunk where the other's
flipped chunk lands; a bucket only pairs an entry whose own chunk it is with the others.

A pair can meet in several buckets (every chunk within ``flips`` bits, and for a chunk
differing in 1 to ``flips`` bits, at each hash's own chunk). It is taken only from its
first meeting (:func:`first_meeting`: the first such chunk, at the smaller of the two chunk
values), which every bucket can tell from the two hashes alone, so the links of all
buckets need no global de-duplication.

What runs where:

- once: :func:`multihash_layout` from the number of distinct hashes;
- per distinct hash (element): :func:`bucket_keys`;
- per bucket (key): :func:`bucket_links`; memory is the bucket's entries, work is its
  owners times its entries (a few entries per bucket for spread hashes, more where many
  hashes crowd into one chunk value).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from curation.dedup.copies import HASH_BITS

_PAIR_BLOCK = 1 << 22


def sub_hashes(hashes: np.ndarray, tables: int, bits: int) -> np.ndarray:
    """The ``tables`` chunks of ``bits`` bits of each 64-bit hash, shape ``(n, tables)``."""
    h = np.asarray(hashes, dtype=np.uint64).reshape(-1, 1)
    shifts = (np.arange(tables, dtype=np.uint64) * np.uint64(bits)).reshape(1, -1)
    return (h >> shifts) & np.uint64((1 << bits) - 1)


def bucket_keys(phash: int, tables: int, bits: int, flips: int) -> list[tuple[int, int]]:
    """Every bucket key ``(chunk, value)`` of a 64-bit hash: each chunk with at most
    ``flips`` bits flipped, its own value first."""
    keys = []
    for t, value in enumerate(sub_hashes(np.array([phash]), tables, bits)[0].tolist()):
        keys.append((t, value))
        for count in range(1, flips + 1):
            for positions in combinations(range(bits), count):
                e = sum(1 << p for p in positions)
                keys.append((t, value ^ e))
    return keys


def first_meeting(
    a: np.ndarray, b: np.ndarray, tables: int, bits: int, flips: int
) -> tuple[np.ndarray, np.ndarray]:
    """The bucket ``(chunk, value)`` where each pair of hashes ``(a[i], b[i])`` is taken:
    the first chunk within ``flips`` bits, at the smaller chunk value (chunk -1: none)."""
    sa, sb = sub_hashes(a, tables, bits), sub_hashes(b, tables, bits)
    close = np.bitwise_count(sa ^ sb) <= flips
    table = np.where(close.any(axis=1), close.argmax(axis=1), -1)
    rows = np.arange(table.size)
    first = np.maximum(table, 0)
    value = np.minimum(sa[rows, first], sb[rows, first])
    return table, value


def bucket_links(
    bucket: tuple[int, int],
    keys: Sequence[str],
    hashes: Sequence[int] | np.ndarray,
    tables: int,
    bits: int,
    flips: int,
    max_hamming: int,
) -> list[tuple[str, str, float]]:
    """Links ``(key_a, key_b, similarity)``, ``key_a < key_b``, taken in ``bucket``.

    ``keys`` and ``hashes`` are the bucket's entries (distinct keys); a pair is linked when
    its hashes differ in at most ``max_hamming`` bits and ``bucket`` is its
    :func:`first_meeting`. Similarity is ``1 - hamming / 64``.
    """
    table, value = bucket
    h = np.asarray(hashes, dtype=np.uint64)
    names = np.asarray(keys)
    own = np.flatnonzero(sub_hashes(h, tables, bits)[:, table] == np.uint64(value))
    links: list[tuple[str, str, float]] = []
    step = max(1, _PAIR_BLOCK // max(1, h.size))
    for lo in range(0, own.size, step):
        i = np.repeat(own[lo : lo + step], h.size)
        j = np.tile(np.arange(h.size), min(step, own.size - lo))
        # Two owners meet twice here (each as the other's partner): take the smaller key.
        both_own = sub_hashes(h[j], tables, bits)[:, table] == np.uint64(value)
        keep = (i != j) & (~both_own | (names[i] < names[j]))
        i, j = i[keep], j[keep]
        distance = np.bitwise_count(h[i] ^ h[j])
        near = distance <= max_hamming
        i, j, distance = i[near], j[near], distance[near]
        t, v = first_meeting(h[i], h[j], tables, bits, flips)
        mine = (t == table) & (v == np.uint64(value))
        i, j, distance = i[mine], j[mine], distance[mine]
        for x, y, d in zip(names[i].tolist(), names[j].tolist(), distance.tolist(), strict=True):
            a, b = (x, y) if x < y else (y, x)
            links.append((a, b, 1.0 - d / HASH_BITS))
    return links
