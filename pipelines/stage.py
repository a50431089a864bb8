"""A run's staged tables: committed by the job once written, read back by finalize.

The pipeline writes every table as shards under ``_stage/<generation>/``. When all of them
(and every cache journal) are written, :class:`CommitStage`, a step of the same job, writes
``_stage/stage.json`` listing them, commits the compacted model-output cache and deletes
older generations. Finalize reads the tables back through :func:`read_stage`, in the same
job for ``curation run`` and in a job of its own for ``curation dedup`` and
``rethreshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from curation.model_cache import ModelCache
from curation.run_folder import STAGE_LISTING, STAGE_TABLES, RunFolder
from curation.shards import read_rows
from pipelines.write import listing


@dataclass(frozen=True)
class StageSettings:
    """What committing a run's staged tables needs."""

    run_url: str
    generation: str
    run_id: str
    fingerprint: str  # of the model-output cache
    clean_schema: str  # the clean table's schema as text


def commit_stage(entries: list[tuple[str, Any]], settings: StageSettings) -> dict[str, Any]:
    """Write the stage listing of the tagged ``entries`` (written shards, image counts),
    commit the compacted cache and delete older generations; returns the listing."""
    run = RunFolder.at(settings.run_url)
    written = listing(entries)
    shards = written["tables"]
    stage_listing = {
        "generation": settings.generation,
        "run_id": settings.run_id,
        "tables": {
            name: [run.relative(s["url"]) for s in shards.get(name, [])] for name in STAGE_TABLES
        },
        "rows": {name: sum(s["rows"] for s in shards.get(name, [])) for name in STAGE_TABLES},
        "clean_schema": settings.clean_schema,
        "images": {
            "scored": int(written.get("images_scored", 0)),
            "cached": int(written.get("images_cached", 0)),
        },
    }
    (run.stage / STAGE_LISTING).write_json(stage_listing)
    ModelCache(run.cache(settings.fingerprint)).commit([s["url"] for s in shards.get("cache", [])])
    for child in run.stage.children():
        if child.name not in (STAGE_LISTING, settings.generation):
            child.remove()
    return stage_listing


class CommitStage(beam.PTransform):
    """Tagged entries -> the committed stage listing (one element)."""

    def __init__(self, settings: StageSettings) -> None:
        super().__init__()
        self._settings = settings

    def expand(self, entries: beam.PCollection) -> beam.PCollection:
        return (
            entries
            | "StageEntries" >> beam.combiners.ToList()
            | "CommitStage" >> beam.Map(commit_stage, settings=self._settings)
        )


def _stage_files(stage_listing: dict[str, Any], run_url: str, table: str) -> list[str]:
    return RunFolder.at(run_url).stage_files(table, stage_listing)


def read_stage(listings: beam.PCollection, run_url: str) -> dict[str, beam.PCollection]:
    """The staged tables of a one-element PCollection of stage listings, as PCollections of
    rows read per shard."""
    return {
        name: listings
        | f"Stage{name.title()}" >> beam.FlatMap(_stage_files, run_url=run_url, table=name)
        | f"Spread{name.title()}" >> beam.Reshuffle()
        | f"Read{name.title()}" >> beam.FlatMap(read_rows)
        for name in STAGE_TABLES
    }
