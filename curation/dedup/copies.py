"""Group copies of an image before the models: same bytes (sha256) or a close perceptual hash.

Exact copies are grouped by sha256 first. Among the remaining distinct images, perceptual
hashes within ``max_hamming`` bits are linked with FAISS's multi-index hashing
(``IndexBinaryMultiHash``): by the pigeonhole principle, two 64-bit hashes that differ in at
most ``r`` bits agree, in at least one of ``m`` disjoint chunks, to within ``r // m`` bits,
so probing every chunk's hash table with up to ``r // m`` flipped bits finds every pair,
at a cost that grows with the bucket sizes instead of with all pairs (a flat binary range
search is quadratic: hours at a million hashes). Images are then visited in the order of
:func:`curation.dedup.keep.copy_rank` (largest first): an image linked to a kept
representative becomes its copy, any other is a representative itself
(:func:`curation.dedup.leaders.leaders`), so every copy is within ``max_hamming`` bits
of its representative and links never chain.

:func:`group_copies` does this on one machine over every image's hashes (about 1 KiB of
Python objects per image). As distributed stages the same steps are: per element
:func:`copy_group_key`, per group key :func:`~curation.dedup.keep.choose_copy` (the
group's head); per head the bucket keys of :mod:`curation.dedup.copy_buckets`, per bucket
its links; once the connected components of the links and per component the greedy keep
(:mod:`curation.dedup.components`); per element :func:`copy_link` with its representative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from curation.dedup.keep import CopyCandidate, copy_rank
from curation.dedup.leaders import leaders
from curation.hashing import hamming
from curation.reasons import DuplicateKind

HASH_BITS = 64
_QUERY_SHARD = 65536


@dataclass(frozen=True)
class CopyLink:
    """Where a key's image went: itself (kind None) or the representative it copies."""

    key: str
    rep_key: str
    kind: DuplicateKind | None  # None: itself; else EXACT or PERCEPTUAL
    similarity: float  # 1.0 for itself and exact; 1 - hamming / 64 for perceptual


def _hash_codes(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes as FAISS binary codes: 8 bytes each, big-endian (``int.to_bytes(8, "big")``)."""
    return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


def multihash_layout(n: int, max_hamming: int) -> tuple[int, int, int]:
    """``(tables, bits_per_table, flips)`` for a multi-index hash over ``n`` 64-bit codes.

    Chooses, among layouts that are exact for ``max_hamming`` (``flips = max_hamming //
    tables``), the one with the fewest expected bucket probes plus candidates per query
    for uniformly spread hashes.
    """
    best: tuple[float, int, int, int] | None = None
    for tables in range(1, max_hamming + 2):
        bits = HASH_BITS // tables
        flips = max_hamming // tables
        probes = tables * sum(comb(bits, k) for k in range(flips + 1))
        cost = probes * (1.0 + n / 2.0**bits)
        if best is None or cost < best[0]:
            best = (cost, tables, bits, flips)
    assert best is not None
    return best[1], best[2], best[3]


def near_hash_pairs(hashes: np.ndarray, max_hamming: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of distinct 64-bit hashes within ``max_hamming`` bits."""
    import faiss

    n = hashes.shape[0]
    if n < 2 or max_hamming == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    codes = _hash_codes(hashes)
    tables, bits, flips = multihash_layout(n, max_hamming)
    index = faiss.IndexBinaryMultiHash(HASH_BITS, tables, bits)
    index.nflip = flips
    index.add(codes)
    firsts, seconds = [], []
    for start in range(0, n, _QUERY_SHARD):
        lims, _, found = index.range_search(codes[start : start + _QUERY_SHARD], max_hamming + 1)
        query = start + np.repeat(np.arange(lims.size - 1), np.diff(lims).astype(np.int64))
        keep = query < found
        firsts.append(query[keep])
        seconds.append(found[keep])
    return np.concatenate(firsts), np.concatenate(seconds)


def group_copies(items: Sequence[CopyCandidate], max_hamming: int = 4) -> dict[str, CopyLink]:
    """Map every key to its copy group's representative.

    Images with the same sha256 are exact copies; distinct images whose perceptual hashes
    differ in at most ``max_hamming`` of 64 bits are perceptual copies. Representatives
    (kind None) are kept greedily by :func:`~curation.dedup.keep.copy_rank` (module
    docstring); a member whose sha256 equals its representative's is ``exact`` (similarity
    1.0), any other ``perceptual`` with similarity ``1 - hamming(member, representative) /
    64``. The result does not depend on input order.
    ``max_hamming=-1`` turns perceptual grouping off (exact copies only), for domains where
    distinct images share hashes (flat synthetic renders, icons).
    """
    if not -1 <= max_hamming < HASH_BITS:
        raise ValueError(f"max_hamming must be in [-1, {HASH_BITS}), got {max_hamming}")
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            raise ValueError(f"duplicate key in copy grouping: {item.key!r}")
        if not 0 <= item.phash < 2**HASH_BITS:
            raise ValueError(f"perceptual hash of {item.key!r} is not a 64-bit unsigned int")
        seen.add(item.key)

    group_keys = [copy_group_key(item, max_hamming) for item in items]
    best: dict[object, int] = {}
    for i, group_key in enumerate(group_keys):
        j = best.setdefault(group_key, i)
        if copy_rank(items[i]) < copy_rank(items[j]):
            best[group_key] = i
    heads = np.fromiter(best.values(), dtype=np.int64, count=len(best))
    group_of = {group_key: g for g, group_key in enumerate(best)}
    if max_hamming > 0:
        values = np.fromiter((items[i].phash for i in heads), dtype=np.uint64, count=heads.size)
        a, b = near_hash_pairs(values, max_hamming)
        weight = 1.0 - np.bitwise_count(values[a] ^ values[b]).astype(np.float64) / HASH_BITS
    else:
        a = b = np.empty(0, dtype=np.int64)
        weight = np.empty(0, dtype=np.float64)
    order = sorted(range(heads.size), key=lambda g: copy_rank(items[heads[g]]))
    leader, _ = leaders(heads.size, a, b, weight, np.asarray(order, dtype=np.int64))
    return {
        item.key: copy_link(item, items[heads[leader[group_of[group_key]]]])
        for item, group_key in zip(items, group_keys, strict=True)
    }


def copy_group_key(item: CopyCandidate, max_hamming: int) -> object:
    """The key an image is grouped under before perceptual linking (per element).

    Identical bytes have identical hashes, so an image's fate is decided per group of equal
    keys: its perceptual hash, or its sha256 when perceptual grouping is off
    (``max_hamming < 0``). The group's best image by :func:`~curation.dedup.keep.copy_rank`
    (:func:`~curation.dedup.keep.choose_copy`) stands for it.
    """
    return item.sha256 if max_hamming < 0 else item.phash


def copy_link(item: CopyCandidate, rep: CopyCandidate) -> CopyLink:
    """Where ``item`` went, given its representative ``rep`` (per element): itself, an exact
    copy (same sha256) or a perceptual copy (similarity ``1 - hamming / 64``)."""
    if rep.key == item.key:
        return CopyLink(item.key, item.key, None, 1.0)
    if rep.sha256 == item.sha256:
        return CopyLink(item.key, rep.key, DuplicateKind.EXACT, 1.0)
    distance = hamming(item.phash, rep.phash)
    return CopyLink(item.key, rep.key, DuplicateKind.PERCEPTUAL, 1.0 - distance / HASH_BITS)
