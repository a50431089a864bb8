"""Copy grouping: pairs whose images are exact or perceptual copies become one image group."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from curation.grouping import build_group
from curation.reasons import DuplicateKind
from curation.records import HashedPair, ImageGroup, Pair
from pipelines.guarded import ERRORS, GuardedDoFn, Stage


def _candidate_key(hashed: HashedPair) -> str:
    """Orders candidates by user key, then by uid (which is unique)."""
    return f"{hashed.pair.key}\x00{hashed.uid}"


def _candidate(hashed: HashedPair) -> Any:
    from curation.dedup.keep import CopyCandidate

    return CopyCandidate(
        _candidate_key(hashed), hashed.sha256, hashed.phash, hashed.width, hashed.height
    )


def _link_all(
    candidates: list[Any], max_hamming: int
) -> Iterator[tuple[str, tuple[str, DuplicateKind | None, float]]]:
    from curation.dedup.copies import group_copies

    kinds = {"self": None, "exact": DuplicateKind.EXACT, "perceptual": DuplicateKind.PERCEPTUAL}
    for key, link in group_copies(candidates, max_hamming=max_hamming).items():
        yield key, (link.rep_key, kinds[link.kind], link.similarity)


def _to_rep(
    joined: tuple[str, dict[str, list[Any]]],
) -> Iterator[tuple[str, tuple[HashedPair, DuplicateKind | None, float]]]:
    _, parts = joined
    rep_key, kind, similarity = parts["link"][0]
    for hashed in parts["pair"]:
        yield rep_key, (hashed, kind, similarity)


class BuildGroupFn(GuardedDoFn):
    """One image group from the members linked to one representative."""

    stage = Stage.GROUP

    def apply(
        self, element: tuple[str, Iterable[tuple[HashedPair, Any, float]]]
    ) -> Iterator[ImageGroup]:
        yield build_group(element[1])

    def rows_of(
        self, element: tuple[str, Iterable[tuple[HashedPair, Any, float]]]
    ) -> Iterable[tuple[Pair, str | None]]:
        for hashed, _, _ in element[1]:
            yield hashed.pair, None


class GroupCopies(beam.PTransform):
    """Groups pairs whose images are exact (sha256) or perceptual (pHash) copies.

    The copy links are computed once over all images' hashes (a model-free global step
    whose FAISS multi-hash search grows near-linearly), then joined back by key.
    """

    def __init__(self, max_hamming: int, run_id: str, threshold: float) -> None:
        super().__init__()
        self._max_hamming = max_hamming
        self._build = BuildGroupFn(run_id, threshold)

    def expand(self, hashed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        links = (
            hashed
            | "Candidates" >> beam.Map(_candidate)
            | "AllCandidates" >> beam.combiners.ToList()
            | "Link" >> beam.FlatMap(_link_all, max_hamming=self._max_hamming)
        )
        keyed = hashed | "KeyByCandidate" >> beam.Map(lambda h: (_candidate_key(h), h))
        return (
            {"pair": keyed, "link": links}
            | "JoinLinks" >> beam.CoGroupByKey()
            | "ToRepresentative" >> beam.FlatMap(_to_rep)
            | "ByImage" >> beam.GroupByKey()
            | "Build" >> beam.ParDo(self._build).with_outputs(ERRORS, main="groups")
        )
