"""The global dedup steps on Beam (the in-process runner) equal the single-machine
functions: same representatives, kinds and similarities for copies; same removals for near
duplicates; on dense clusters whose links chain, in shuffled order."""

from __future__ import annotations

import random

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that
from test_dedup_copy_buckets import dense_items

from curation.dedup.copies import group_copies
from curation.records import HashedPair, Pair
from pipelines.copies import GroupCopies, candidate, candidate_key


def _hashed(items, seed: int) -> list[HashedPair]:
    pairs = [
        HashedPair(
            Pair(key=item.key, source_file="f", source_row=row, image=None, text=f"t{row}"),
            item.sha256,
            item.phash,
            item.width,
            item.height,
        )
        for row, item in enumerate(items)
    ]
    random.Random(seed).shuffle(pairs)
    return pairs


def _member_links(group) -> list[tuple]:  # noqa: ANN001
    rep = candidate_key(group.rep)
    return [(candidate_key(m.hashed), rep, m.kind, m.similarity) for m in group.members]


def _run(hashed: list[HashedPair], transform: beam.PTransform, check) -> None:  # noqa: ANN001
    """Run ``transform`` over ``hashed`` on the in-process runner; ``check`` gets its rows."""
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        out = pipeline | beam.Create(hashed, reshuffle=True) | transform
        assert_that(out.groups | beam.FlatMap(_member_links), check)


@pytest.mark.parametrize("max_hamming", [-1, 0, 4, 7])
def test_copy_grouping_on_beam_equals_group_copies(max_hamming: int) -> None:
    items = dense_items(6, 30, seed=max_hamming + 10)
    hashed = _hashed(items, seed=max_hamming)
    expected = group_copies([candidate(h) for h in hashed], max_hamming=max_hamming)

    def check(rows: list[tuple]) -> None:
        got = {key: (rep, kind, sim) for key, rep, kind, sim in rows}
        assert set(got) == set(expected) and len(rows) == len(got)
        for key, link in expected.items():
            rep, kind, sim = got[key]
            assert rep == link.rep_key and kind == link.kind, key
            assert sim == pytest.approx(link.similarity)

    _run(hashed, GroupCopies(max_hamming, run_id="r", threshold=0.5), check)
    assert len({link.rep_key for link in expected.values()}) < len(expected)  # copies found


@pytest.mark.parametrize("cells_on", [False, True], ids=["one-cell", "many-cells"])
def test_near_duplicates_on_beam_equal_find_near_duplicates(
    cells_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from test_dedup_cells import dense_clusters

    from curation.dedup import cells
    from curation.dedup.near import find_near_duplicates
    from curation.finalize import NearItem
    from pipelines.finalize import NearDuplicates

    if cells_on:  # cells of 100 vectors above 1,000 vectors: many cells, trained on samples
        monkeypatch.setattr(cells, "FLAT_MAX_VECTORS", 1000)
        monkeypatch.setattr(cells, "CELL_SIZE", 100)
    x = dense_clusters(4000, seed=3)
    rng = np.random.default_rng(4)
    items = [
        NearItem(f"img-{i:05d}", f"s{i}", x[i], int(rng.integers(0, 3)), float(rng.random()))
        for i in range(x.shape[0])
    ]
    keys = [it.key for it in items]
    expected = find_near_duplicates(keys, x, [it.candidate() for it in items], threshold=0.95)
    assert len(expected) > 300
    random.Random(5).shuffle(items)

    def check(rows: list[tuple]) -> None:
        got = sorted((key, r.dup_of, r.similarity) for key, r in rows)
        assert [(k, d) for k, d, _ in got] == [(e.key, e.dup_of) for e in expected]
        for (_, _, sim), e in zip(got, expected, strict=True):
            assert sim == pytest.approx(e.similarity, abs=1e-12)

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        removed = (
            pipeline
            | beam.Create(items, reshuffle=True)
            | NearDuplicates(0.95, x.shape[1], seed=0, nprobe=3)
        )
        assert_that(removed, check)
