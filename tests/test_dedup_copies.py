"""Copy grouping on real photos (skimage.data) and keep rules.

Perceptual hashes come from the decode stage itself (``decode_image(data).phash``), so the
tests see the hashes the pipeline groups on.
"""

from __future__ import annotations

import random
from itertools import combinations

import numpy as np
import pytest
from images import jpeg_bytes, photo
from PIL import Image

from curation.decode import decode_image
from curation.dedup.copies import group_copies, multihash_layout, near_hash_pairs
from curation.dedup.keep import CopyCandidate, NearCandidate, choose_copy, near_rank
from curation.hashing import hamming

#: Photos whose variants below stay within 4 bits of the original's pHash.
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "immunohistochemistry", "clock")


def _candidate(key: str, data: bytes) -> CopyCandidate:
    decoded = decode_image(data)
    return CopyCandidate(key, decoded.sha256, decoded.phash, decoded.width, decoded.height)


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(fraction * w), round(fraction * h)
    return image.crop((dx, dy, w - dx, h - dy))


def _variants(name: str) -> list[CopyCandidate]:
    """An original and its copies: same bytes, half size, JPEG q=50, 2% border cropped."""
    image = Image.fromarray(photo(name))
    w, h = image.size
    original = jpeg_bytes(image, quality=90)
    return [
        _candidate(f"{name}/0-original", original),
        _candidate(f"{name}/1-same-bytes", original),
        _candidate(f"{name}/2-half", jpeg_bytes(image.resize((w // 2, h // 2), Image.BICUBIC))),
        _candidate(f"{name}/3-q50", jpeg_bytes(image, quality=50)),
        _candidate(f"{name}/4-cropped", jpeg_bytes(_crop(image, 0.01))),
    ]


@pytest.fixture(scope="module")
def photo_items() -> list[CopyCandidate]:
    return [item for name in PHOTOS for item in _variants(name)]


def test_copies_grouped_with_their_original(photo_items: list[CopyCandidate]) -> None:
    links = group_copies(photo_items)
    assert set(links) == {item.key for item in photo_items}
    by_key = {item.key: item for item in photo_items}
    for name in PHOTOS:
        rep = f"{name}/0-original"  # largest, ties (same-bytes copy, q50) broken by key
        assert links[rep].kind is None and links[rep].rep_key == rep
        same = links[f"{name}/1-same-bytes"]
        assert (same.rep_key, same.kind, same.similarity) == (rep, "exact", 1.0)
        for suffix in ("2-half", "3-q50", "4-cropped"):
            link = links[f"{name}/{suffix}"]
            assert link.rep_key == rep and link.kind == "perceptual", (name, suffix, link)
            distance = hamming(by_key[link.key].phash, by_key[rep].phash)
            assert link.similarity == 1.0 - distance / 64


def test_distinct_photos_stay_apart(photo_items: list[CopyCandidate]) -> None:
    reps = {link.rep_key for link in group_copies(photo_items).values()}
    assert reps == {f"{name}/0-original" for name in PHOTOS}
    originals = [item for item in photo_items if item.key.endswith("0-original")]
    assert min(hamming(a.phash, b.phash) for a, b in combinations(originals, 2)) > 12
    # Heavier crops (3% each side) move the pHash further; a wider radius groups them
    # while distinct photos remain apart.
    image = Image.fromarray(photo("astronaut"))
    heavy = _candidate("astronaut/5-cropped-3pct", jpeg_bytes(_crop(image, 0.03)))
    wide = group_copies([*originals, heavy], max_hamming=12)
    assert wide[heavy.key].rep_key == "astronaut/0-original"
    assert len({link.rep_key for link in wide.values()}) == len(PHOTOS)


def test_grouping_independent_of_input_order(photo_items: list[CopyCandidate]) -> None:
    expected = group_copies(photo_items)
    rng = random.Random(7)
    for _ in range(3):
        shuffled = list(photo_items)
        rng.shuffle(shuffled)
        assert group_copies(shuffled) == expected


def test_largest_copy_is_kept_and_exact_kind_follows_representative() -> None:
    base = 0x0123_4567_89AB_CDEF
    items = [
        CopyCandidate("a", "sha-small", base, 100, 100),
        CopyCandidate("b", "sha-small", base, 100, 100),
        CopyCandidate("z", "sha-large", base ^ 0b11, 400, 300),
        CopyCandidate("y", "sha-large", base ^ 0b11, 400, 300),
    ]
    links = group_copies(items)
    assert links["y"].kind is None  # largest; "y" < "z"
    assert (links["z"].rep_key, links["z"].kind) == ("y", "exact")
    assert (links["a"].rep_key, links["a"].kind, links["a"].similarity) == (
        "y",
        "perceptual",
        1 - 2 / 64,
    )


def test_perceptual_links_do_not_chain() -> None:
    h0 = 0xFFFF_0000_FFFF_0000
    h1 = h0 ^ 0b111  # 3 bits from h0
    h2 = h1 ^ (0b111 << 20)  # 3 bits from h1, 6 from h0
    items = [
        CopyCandidate("k0", "s0", h0, 64, 64),
        CopyCandidate("k1", "s1", h1, 32, 32),
        CopyCandidate("k2", "s2", h2, 32, 32),
        CopyCandidate("k3", "s3", h0 ^ 0xFFFF_FFFF, 64, 64),
    ]
    links = group_copies(items, max_hamming=4)
    assert (links["k1"].rep_key, links["k1"].similarity) == ("k0", 1 - 3 / 64)
    # k2 is 3 bits from the copy k1 but 6 from the representative k0: its own representative.
    assert links["k2"].kind is None
    assert links["k3"].kind is None
    # Once k1 outranks k0 (larger), both others are its copies, 3 bits away each.
    items[1] = CopyCandidate("k1", "s1", h1, 128, 128)
    links = group_copies(items, max_hamming=4)
    assert [(links[k].rep_key, links[k].similarity) for k in ("k0", "k2")] == [
        ("k1", 1 - 3 / 64),
        ("k1", 1 - 3 / 64),
    ]
    assert group_copies(items, max_hamming=2)["k1"].kind is None


@pytest.mark.parametrize("max_hamming", [1, 4, 7])
def test_multihash_pairs_match_brute_force(max_hamming: int) -> None:
    rng = np.random.default_rng(max_hamming)
    base = rng.integers(0, 2**64, 1500, dtype=np.uint64)
    near = base[:500].copy()
    for row in range(near.size):
        for bit in rng.choice(64, rng.integers(1, 9), replace=False):
            near[row] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.unique(np.concatenate([base, near]))
    first, second = near_hash_pairs(hashes, max_hamming)
    ints = [int(h) for h in hashes]
    expected = {
        (i, j)
        for i in range(len(ints))
        for j in range(i + 1, len(ints))
        if (ints[i] ^ ints[j]).bit_count() <= max_hamming
    }
    assert len(expected) > 30
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected


def test_multihash_layout_is_exact_and_cheapest() -> None:
    tables, bits, flips = multihash_layout(1_000_000, 4)
    assert (tables, bits, flips) == (3, 21, 1)  # 4 errors in 3 chunks: one chunk has <= 1
    assert tables * (flips + 1) > 4


def test_invalid_input_is_refused() -> None:
    item = CopyCandidate("k", "s", 1, 10, 10)
    with pytest.raises(ValueError, match="duplicate key"):
        group_copies([item, item])
    with pytest.raises(ValueError, match="64-bit"):
        group_copies([CopyCandidate("k", "s", 2**64, 10, 10)])
    with pytest.raises(ValueError, match="max_hamming"):
        group_copies([item], max_hamming=64)


def test_keep_rules_are_total_orders() -> None:
    copies = [
        CopyCandidate("b", "s1", 0, 200, 100),
        CopyCandidate("a", "s2", 0, 100, 200),
        CopyCandidate("c", "s3", 0, 300, 50),
    ]
    near = [
        NearCandidate("d", kept_texts=2, best_itm=0.7),
        NearCandidate("c", kept_texts=3, best_itm=0.6),
        NearCandidate("b", kept_texts=3, best_itm=0.9),
        NearCandidate("a", kept_texts=3, best_itm=0.9),
    ]
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(copies)
        rng.shuffle(near)
        assert choose_copy(copies).key == "a"  # 20000 px ties with "b"; smaller key
        assert min(near, key=near_rank).key == "a"  # most texts, best ITM, then smallest key
    with pytest.raises(ValueError):
        choose_copy([])


def test_perceptual_grouping_can_be_turned_off() -> None:
    items = [
        CopyCandidate("a", "s1", 0b1011, 10, 10),
        CopyCandidate("b", "s2", 0b1011, 10, 10),  # same perceptual hash, other bytes
        CopyCandidate("c", "s1", 0b1011, 10, 10),  # same bytes as a
    ]
    on = group_copies(items, max_hamming=0)
    off = group_copies(items, max_hamming=-1)
    assert on["b"].kind == "perceptual"
    assert off["b"].kind is None and off["c"].kind == "exact" and off["c"].rep_key == "a"
