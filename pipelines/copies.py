"""Copy grouping on the engine: pairs whose images are exact or perceptual copies become one
image group, without any list of all images on one worker.

The steps (:mod:`curation.dedup.copies`, :mod:`curation.dedup.copy_buckets`): images are
grouped by their group key (perceptual hash, or sha256 with perceptual grouping off) and
each group's best image by :func:`~curation.dedup.keep.copy_rank` stands for it; those heads
meet in the multi-hash buckets of their hashes, where the links within ``max_hamming`` bits
are found (each link in one bucket); the greedy keep per connected component
(:mod:`pipelines.components`) picks the representatives; every image is mapped to its
head's representative (:func:`~curation.dedup.copies.copy_link`). The result equals
:func:`curation.dedup.copies.group_copies` over all images at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from curation.dedup.copies import copy_group_key, copy_link, multihash_layout
from curation.dedup.copy_buckets import bucket_keys, bucket_links
from curation.dedup.keep import CopyCandidate, choose_copy, copy_rank
from curation.grouping import build_group
from curation.reasons import DuplicateKind, Stage
from curation.records import HashedPair, ImageGroup, Pair
from pipelines.components import KeepPerComponent
from pipelines.guarded import ERRORS, GuardedDoFn


def candidate_key(hashed: HashedPair) -> str:
    """Orders candidates by user key, then by uid (which is unique)."""
    return f"{hashed.pair.key}\x00{hashed.uid}"


def candidate(hashed: HashedPair) -> CopyCandidate:
    return CopyCandidate(
        candidate_key(hashed), hashed.sha256, hashed.phash, hashed.width, hashed.height
    )


def _heads(
    element: tuple[Any, Iterable[CopyCandidate]],
) -> Iterator[Any]:
    """A group of equal group keys: its head, and each member's head."""
    from apache_beam.pvalue import TaggedOutput

    members = list(element[1])
    head = choose_copy(members)
    yield TaggedOutput("heads", head)
    for member in members:
        yield member.key, head.key


def _buckets(
    head: CopyCandidate, layout: tuple[int, int, int]
) -> Iterator[tuple[tuple[int, int], tuple[str, int]]]:
    for bucket in bucket_keys(head.phash, *layout):
        yield bucket, (head.key, head.phash)


def _links(
    element: tuple[tuple[int, int], Iterable[tuple[str, int]]],
    layout: tuple[int, int, int],
    max_hamming: int,
) -> list[tuple[str, str, float]]:
    bucket, entries = element
    entries = list(entries)
    if len(entries) < 2:
        return []
    keys = [e[0] for e in entries]
    hashes = [e[1] for e in entries]
    return bucket_links(bucket, keys, hashes, *layout, max_hamming)


def _head_rep(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, str]]:
    """``(head key, representative key)``: its leader's key when the keep removed it."""
    key, parts = element
    if parts["head"]:
        removed = parts["removed"]
        yield key, (removed[0][0] if removed else key)


def _member_rep(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, str]]:
    """``(representative key, member key)`` for every member of one head."""
    _, parts = element
    for rep in parts["rep"]:
        for member in parts["members"]:
            yield rep, member


def _with_rep(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, CopyCandidate]]:
    """``(member key, representative)`` for every member a representative stands for."""
    _, parts = element
    for rep in parts["rep"]:
        for member in parts["members"]:
            yield member, rep


def _to_rep(
    element: tuple[str, dict[str, list[Any]]],
) -> Iterator[tuple[str, tuple[HashedPair, DuplicateKind | None, float]]]:
    """A pair with its copy link, keyed by its representative."""
    _, parts = element
    for rep in parts["rep"]:
        for hashed in parts["pair"]:
            link = copy_link(candidate(hashed), rep)
            yield link.rep_key, (hashed, link.kind, link.similarity)


class GroupCopies(beam.PTransform):
    """Hashed pairs -> image groups (with ``errors`` for groups that could not be built)."""

    def __init__(self, max_hamming: int, run_id: str, threshold: float) -> None:
        super().__init__()
        self._max_hamming = max_hamming
        self._build = BuildGroupFn(run_id, threshold)

    def expand(self, hashed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        max_hamming = self._max_hamming
        grouped = (
            hashed
            | "Candidates" >> beam.Map(candidate)
            | "ByGroupKey" >> beam.Map(lambda c: (copy_group_key(c, max_hamming), c))
            | "Groups" >> beam.GroupByKey()
            | "Heads" >> beam.FlatMap(_heads).with_outputs("heads", main="member_heads")
        )
        heads = grouped.heads
        links = self._links(heads)
        ranks = heads | "HeadRanks" >> beam.Map(lambda h: (h.key, copy_rank(h)))
        removed = {"links": links, "ranks": ranks} | "Keep" >> KeepPerComponent()
        keyed_heads = heads | "KeyHeads" >> beam.Map(lambda h: (h.key, h))
        head_rep = (
            {"head": keyed_heads, "removed": removed}
            | "JoinRemoved" >> beam.CoGroupByKey()
            | "HeadRep" >> beam.FlatMap(_head_rep)
        )
        members = grouped.member_heads | "ByHead" >> beam.Map(lambda mh: (mh[1], mh[0]))
        rep_members = (
            {"rep": head_rep, "members": members}
            | "JoinHeads" >> beam.CoGroupByKey()
            | "MemberRep" >> beam.FlatMap(_member_rep)
        )
        member_reps = (
            {"rep": keyed_heads, "members": rep_members}
            | "JoinReps" >> beam.CoGroupByKey()
            | "WithRep" >> beam.FlatMap(_with_rep)
        )
        keyed = hashed | "KeyByCandidate" >> beam.Map(lambda h: (candidate_key(h), h))
        return (
            {"pair": keyed, "rep": member_reps}
            | "JoinLinks" >> beam.CoGroupByKey()
            | "ToRepresentative" >> beam.FlatMap(_to_rep)
            | "ByImage" >> beam.GroupByKey()
            | "Build" >> beam.ParDo(self._build).with_outputs(ERRORS, main="groups")
        )

    def _links(self, heads: beam.PCollection) -> beam.PCollection:
        """Links between heads within ``max_hamming`` bits, each from one multi-hash bucket."""
        max_hamming = self._max_hamming
        if max_hamming <= 0:
            return heads | "NoLinks" >> beam.FlatMap(lambda _: ())
        layout = beam.pvalue.AsSingleton(
            heads
            | "CountHeads" >> beam.combiners.Count.Globally()
            | "Layout" >> beam.Map(lambda n: multihash_layout(n, max_hamming))
        )
        return (
            heads
            | "BucketKeys" >> beam.FlatMap(_buckets, layout=layout)
            | "Buckets" >> beam.GroupByKey()
            | "BucketLinks" >> beam.FlatMap(_links, layout=layout, max_hamming=max_hamming)
        )


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
