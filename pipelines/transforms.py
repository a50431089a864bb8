"""Composite PTransforms of the CapFilt pipeline: read -> decode -> group copies -> caption
-> score -> decide -> write. Each step delegates to a plain function of ``curation/`` or a
model of ``models/``; this module only wires and scales them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.pvalue import TaggedOutput

from curation.config import RunConfig
from curation.decide import decide_group
from curation.grouping import build_group
from curation.reasons import Reason
from curation.records import GroupScores, HashedPair, ImageGroup, Pair
from curation.rejections import rejection_row
from curation.score_cache import (
    cache_files,
    cache_key,
    cache_row,
    read_cache_file,
    scores_from_row,
    write_cache_rows,
)
from pipelines.handlers import CaptionHandler, ModelInput, ScoreHandler
from pipelines.progress import ProgressCounter

NAMESPACE = "curation"
REJECTED = "rejected"
#: Bytes of rows a Parquet writer buffers before writing a row group (Beam's default is 64 MiB
#: per open file, and every table of every bundle has one).
ROW_GROUP_BYTES = 8 * 2**20
TABLES = ("decisions", "clean", "synthetic", "duplicates", "images")


def _count(reason: str, decision: str) -> None:
    Metrics.counter(NAMESPACE, f"decision_{decision}").inc()
    Metrics.counter(NAMESPACE, f"reason_{reason}").inc()


class ProgressFn(beam.DoFn):
    """A DoFn that reports to the live progress display (see ``pipelines/progress.py``)."""

    def __init__(self, progress_dir: str):
        super().__init__()
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._progress = ProgressCounter(self._progress_dir)

    def finish_bundle(self) -> None:
        self._progress.flush()


class ReadPairsFn(ProgressFn):
    """Reads one (file, row group) unit into pairs."""

    def __init__(self, layout: Any, progress_dir: str):
        self._layout = layout
        super().__init__(progress_dir)

    def process(self, unit: tuple[str, int]) -> Iterator[Pair]:
        from curation.reader import read_row_group

        path, index = unit
        pairs = read_row_group(path, self._layout, index)
        Metrics.counter(NAMESPACE, "rows_read").inc(len(pairs))
        self._progress.add("rows_read", len(pairs))
        yield from pairs


class ReadPairs(beam.PTransform):
    """Every input row as a :class:`Pair`, split by Parquet row group."""

    def __init__(self, units: list[tuple[str, int]], layout: Any, progress_dir: str):
        super().__init__()
        self._units = units
        self._layout = layout
        self._progress_dir = progress_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Units" >> beam.Create(self._units)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadPairsFn(self._layout, self._progress_dir))
        )


class DecodeFn(ProgressFn):
    """Validates and hashes an image; a bad image or failed download becomes a decision."""

    def __init__(self, config: RunConfig, run_id: str, progress_dir: str):
        self._config = config
        self._run_id = run_id
        super().__init__(progress_dir)

    def process(self, pair: Pair) -> Iterator[Any]:
        from curation.decode import DecodeError, decode_image

        uid = f"{pair.source_file}:{pair.source_row}"
        reason: Reason | None = None
        detail: str | None = None
        if pair.status is not None and pair.status != "success":
            reason, detail = Reason.DOWNLOAD_FAILED, pair.error or pair.status
        else:
            try:
                image = decode_image(
                    pair.image,
                    None,
                    min_side=self._config.min_side,
                    max_pixels=self._config.max_pixels,
                )
            except DecodeError as exc:
                reason, detail = exc.reason, str(exc)
        if reason is not None:
            _count(reason.value, "dropped")
            self._progress.add("rows_decided")
            self._progress.add("dropped")
            row = rejection_row(pair, reason, detail, self._run_id, self._config.threshold)
            yield TaggedOutput(REJECTED, row)
            return
        pair.image = None  # bytes are fetched again for the one kept copy (FetchImages)
        yield HashedPair(uid, pair, image.sha256, image.phash, image.width, image.height)


def _candidate_key(hashed: HashedPair) -> str:
    """Orders candidates by user key, then by uid (which is unique)."""
    return f"{hashed.pair.key}\x00{hashed.uid}"


def _link_all(
    candidates: list[Any], max_hamming: int
) -> Iterator[tuple[str, tuple[str, str, float]]]:
    from curation.dedup.copies import group_copies

    for key, link in group_copies(candidates, max_hamming=max_hamming).items():
        yield key, (link.rep_key, link.kind, link.similarity)


def _candidate(hashed: HashedPair) -> Any:
    from curation.dedup.keep import CopyCandidate

    return CopyCandidate(
        _candidate_key(hashed), hashed.sha256, hashed.phash, hashed.width, hashed.height
    )


def _to_rep(
    joined: tuple[str, dict[str, list[Any]]],
) -> Iterator[tuple[str, tuple[HashedPair, str, float]]]:
    _, parts = joined
    for hashed in parts["pair"]:
        rep_key, kind, similarity = parts["link"][0]
        yield rep_key, (hashed, kind, similarity)


class GroupCopies(beam.PTransform):
    """Groups pairs whose images are exact (sha256) or perceptual (pHash) copies.

    The copy links are computed once over all images' hashes (a model-free global step
    whose FAISS multi-hash search grows near-linearly), then joined back by key.
    """

    def __init__(self, max_hamming: int):
        super().__init__()
        self._max_hamming = max_hamming

    def expand(self, hashed: beam.PCollection) -> beam.PCollection:
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
            | "Build" >> beam.MapTuple(lambda _, members: build_group(members))
        )


def _route(
    joined: tuple[str, dict[str, list[Any]]], starts: dict[str, list[int]]
) -> Iterator[tuple[tuple[str, int], tuple[ImageGroup, GroupScores | None]]]:
    """Keys a group by the row group holding its image, with its cached scores if any."""
    _, parts = joined
    for group in parts["group"]:
        hit = next((r for r in parts["cached"] if list(r["texts"]) == list(group.texts)), None)
        pair = group.rep.pair
        index = bisect.bisect_right(starts[pair.source_file], pair.source_row) - 1
        yield (pair.source_file, index), (group, scores_from_row(hit) if hit else None)


class FetchImagesFn(beam.DoFn):
    """Reads each kept image's bytes back from its row group (read once for all its groups).

    Only hashes and keys cross the shuffles; image bytes are read where they are used, so
    memory does not grow with the input. Groups with cached scores go out tagged ``cached``.
    """

    def __init__(self, layout: Any):
        self._layout = layout

    def process(
        self, element: tuple[tuple[str, int], Iterable[tuple[ImageGroup, GroupScores | None]]]
    ) -> Iterator[Any]:
        from curation.reader import read_row_group

        (path, index), items = element
        items = list(items)
        wanted = {group.rep.pair.source_row for group, _ in items}
        images = {
            p.source_row: p.image
            for p in read_row_group(path, self._layout, index)
            if p.source_row in wanted
        }
        for group, scores in items:
            group.rep.pair.image = images[group.rep.pair.source_row]
            if scores is None:
                yield group
            else:
                yield TaggedOutput("cached", (group, scores))


class PreparePixelsFn(beam.DoFn):
    """Decodes a group's image at each model's input size."""

    def __init__(self, caption_size: int | None, filter_size: int):
        self._caption_size = caption_size
        self._filter_size = filter_size

    def process(self, group: ImageGroup) -> Iterator[tuple[str, ModelInput]]:
        from curation.decode import decode_image

        data = group.rep.pair.image
        filt = decode_image(data, self._filter_size).pixels
        if self._caption_size is None:
            cap = None
        elif self._caption_size == self._filter_size:
            cap = filt
        else:
            cap = decode_image(data, self._caption_size).pixels
        yield cache_key(group.key, group.rep.sha256), ModelInput(group, cap, filt)


class WriteCacheFn(ProgressFn):
    """Persists model outputs every ``flush_every`` images, so a killed run can resume."""

    def __init__(self, folder: str, flush_every: int, progress_dir: str):
        self._folder = folder
        self._flush_every = flush_every
        super().__init__(progress_dir)

    def start_bundle(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def process(
        self, element: tuple[ImageGroup, GroupScores]
    ) -> Iterator[tuple[ImageGroup, GroupScores]]:
        group, scores = element
        self._rows.append(cache_row(cache_key(group.key, group.rep.sha256), group.texts, scores))
        self._progress.add("images_scored")
        if len(self._rows) >= self._flush_every:
            self._flush()
        yield element

    def _flush(self) -> None:
        write_cache_rows(self._folder, self._rows)
        self._rows = []

    def finish_bundle(self) -> None:
        self._flush()
        super().finish_bundle()


class CaptionAndScore(beam.PTransform):
    """RunInference with the captioner, then the filter; results are cached as they come."""

    def __init__(
        self, config: RunConfig, sizes: tuple[int | None, int], cache_dir: str, progress_dir: str
    ):
        super().__init__()
        self._config = config
        self._sizes = sizes
        self._cache_dir = cache_dir
        self._progress_dir = progress_dir

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        items = groups | "Pixels" >> beam.ParDo(PreparePixelsFn(*self._sizes))
        if self._config.captions_per_image > 0:
            items = items | "Caption" >> RunInference(
                KeyedModelHandler(CaptionHandler(self._config))
            )
        scored = items | "Score" >> RunInference(KeyedModelHandler(ScoreHandler(self._config)))
        return (
            scored
            | "DropKey" >> beam.Values()
            | "Cache"
            >> beam.ParDo(
                WriteCacheFn(self._cache_dir, self._config.batch_size, self._progress_dir)
            )
        )


class DecideFn(ProgressFn):
    """Applies the threshold and emits rows for every output table (tagged by table)."""

    def __init__(self, threshold: float, run_id: str, progress_dir: str):
        self._threshold = threshold
        self._run_id = run_id
        super().__init__(progress_dir)

    def process(self, element: tuple[ImageGroup, GroupScores]) -> Iterator[Any]:
        group, scores = element
        outcome = decide_group(group, scores, threshold=self._threshold, run_id=self._run_id)
        for row in outcome.decisions:
            _count(row["reason"], row["decision"])
            self._progress.add(row["decision"])
        self._progress.add("rows_decided", len(group.members))
        for table in ("decisions", "clean", "synthetic", "duplicates"):
            for row in getattr(outcome, table):
                yield TaggedOutput(table, row)
        yield TaggedOutput("images", outcome.image)


def read_cached(pbegin: beam.pvalue.PBegin, cache_dir: str) -> beam.PCollection:
    """The cache's rows keyed by cache key (empty when nothing is cached yet)."""
    files = cache_files(cache_dir)
    return (
        pbegin
        | "CacheFiles" >> beam.Create(files)
        | "ReadCache" >> beam.FlatMap(read_cache_file)
        | "KeyCache" >> beam.Map(lambda row: (row["cache_key"], row))
    )


class WriteTables(beam.PTransform):
    """Writes each tagged table as Parquet shards ``<folder>/<table>/<prefix>-*.parquet``.

    Every branch of the pipeline writes its own shards (distinct prefixes) instead of
    flattening branches into one writer: the local runner materialises a Flatten's inputs,
    which would hold every image of the run in memory.
    """

    def __init__(self, folder: str, schemas: dict[str, Any], prefix: str):
        super().__init__()
        self._folder = folder
        self._schemas = schemas
        self._prefix = prefix

    def expand(self, tables: dict[str, beam.PCollection]) -> beam.pvalue.PDone:
        for name, pcoll in tables.items():
            path = str(Path(self._folder) / name / self._prefix)
            pcoll | f"Write{name.title()}" >> beam.io.WriteToParquet(
                path,
                self._schemas[name],
                file_name_suffix=".parquet",
                row_group_buffer_size=ROW_GROUP_BYTES,
                record_batch_size=64,
            )
        return beam.pvalue.PDone(next(iter(tables.values())).pipeline)


def build_pipeline(
    pipeline: beam.Pipeline,
    *,
    config: RunConfig,
    run_id: str,
    units: list[tuple[str, int]],
    row_group_starts: dict[str, list[int]],
    layout: Any,
    sizes: tuple[int | None, int],
    stage_dir: str,
    cache_dir: str,
    progress_dir: str,
    schemas: dict[str, Any],
) -> None:
    """Wire the whole CapFilt job into ``pipeline``."""
    pairs = pipeline | "ReadPairs" >> ReadPairs(units, layout, progress_dir)
    decoded = pairs | "Decode" >> beam.ParDo(DecodeFn(config, run_id, progress_dir)).with_outputs(
        REJECTED, main="ok"
    )
    groups = decoded.ok | "GroupCopies" >> GroupCopies(config.phash_distance)
    cached = read_cached(pipeline, cache_dir)
    routed = (
        {
            "group": groups
            | "KeyGroups" >> beam.Map(lambda g: (cache_key(g.key, g.rep.sha256), g)),
            "cached": cached,
        }
        | "JoinCache" >> beam.CoGroupByKey()
        | "ByRowGroup" >> beam.FlatMap(_route, starts=row_group_starts)
        | "GroupByRowGroup" >> beam.GroupByKey()
        | "FetchImages" >> beam.ParDo(FetchImagesFn(layout)).with_outputs("cached", main="todo")
    )
    fresh = routed.todo | "Models" >> CaptionAndScore(config, sizes, cache_dir, progress_dir)
    reused = routed.cached | "CountCached" >> beam.ParDo(CountCachedFn(progress_dir))
    for branch, scored in (("scored", fresh), ("cached", reused)):
        outputs = scored | f"Decide{branch.title()}" >> beam.ParDo(
            DecideFn(config.threshold, run_id, progress_dir)
        ).with_outputs(*TABLES)
        tables = {name: outputs[name] for name in TABLES}
        tables | f"Write{branch.title()}" >> WriteTables(stage_dir, schemas, branch)
    rejected = {"decisions": decoded[REJECTED]}
    rejected | "WriteRejected" >> WriteTables(stage_dir, schemas, "rejected")


class CountCachedFn(ProgressFn):
    """Counts groups whose model outputs came from the cache."""

    def __init__(self, progress_dir: str):
        super().__init__(progress_dir)

    def process(
        self, element: tuple[ImageGroup, GroupScores]
    ) -> Iterator[tuple[ImageGroup, GroupScores]]:
        self._progress.add("images_cached")
        Metrics.counter(NAMESPACE, "images_cached").inc()
        yield element
