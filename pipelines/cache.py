"""The model-output cache in the pipeline: join cached results, journal fresh ones."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from curation.model_cache import (
    ModelCache,
    cache_key,
    cache_row,
    read_cache_file,
    scores_from_row,
)
from curation.records import GroupScores, ImageGroup
from curation.storage import Location
from pipelines.guarded import NAMESPACE


def read_cached(pbegin: beam.pvalue.PBegin, files: list[str]) -> beam.PCollection:
    """The cache's rows keyed by cache key (empty when nothing is cached yet)."""
    return (
        pbegin
        | "CacheFiles" >> beam.Create(files)
        | "ReadCache" >> beam.FlatMap(read_cache_file)
        | "KeyCache" >> beam.Map(lambda row: (row["cache_key"], row))
    )


def route(
    joined: tuple[str, dict[str, list[Any]]], starts: dict[str, list[int]]
) -> Iterator[tuple[tuple[str, int], tuple[ImageGroup, GroupScores | None]]]:
    """Keys a group by the row group holding its image, with its cached scores if any."""
    _, parts = joined
    for group in parts["group"]:
        hit = next((r for r in parts["cached"] if tuple(r["texts"]) == group.texts), None)
        pair = group.rep.pair
        index = bisect.bisect_right(starts[pair.source_file], pair.source_row) - 1
        yield (pair.source_file, index), (group, scores_from_row(hit) if hit else None)


class CountCachedFn(beam.DoFn):
    """Counts groups whose model outputs came from the cache."""

    def __init__(self) -> None:
        self._cached = Metrics.counter(NAMESPACE, "images_cached")

    def process(
        self, element: tuple[ImageGroup, GroupScores]
    ) -> Iterator[tuple[ImageGroup, GroupScores]]:
        self._cached.inc()
        yield element


class JournalFn(beam.DoFn):
    """Persists fresh model outputs every ``flush_every`` images, so a killed run can resume.

    A journal write that fails is counted and logged; the run goes on (the results are in
    the pipeline and are written to the compacted cache at the end). Each bundle outputs
    the number of images it journaled, so that committing the cache can wait for them.
    """

    def __init__(self, folder: str, flush_every: int) -> None:
        self._folder = folder
        self._flush_every = flush_every
        self._failed = Metrics.counter(NAMESPACE, "cache_journal_write_failures")

    def setup(self) -> None:
        self._cache = ModelCache(Location(self._folder))

    def start_bundle(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._seen = 0

    def process(self, element: tuple[ImageGroup, GroupScores]) -> Iterator[int]:
        group, scores = element
        self._seen += 1
        self._rows.append(cache_row(cache_key(group), group.texts, scores))
        if len(self._rows) >= self._flush_every:
            self._flush()
        return iter(())

    def _flush(self) -> None:
        import logging

        rows, self._rows = self._rows, []
        try:
            self._cache.journal(rows)
        except OSError as error:
            self._failed.inc()
            logging.getLogger(__name__).warning("cache journal write failed: %s", error)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        self._flush()
        yield WindowedValue(self._seen, GlobalWindow().max_timestamp(), [GlobalWindow()])


def to_cache_row(element: tuple[ImageGroup, GroupScores]) -> dict[str, Any]:
    group, scores = element
    return cache_row(cache_key(group), group.texts, scores)
