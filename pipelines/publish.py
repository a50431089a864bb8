"""Finalize staged tables on the engine and commit the result: within `curation run`'s job,
and for `curation dedup` / `rethreshold`, which finalize the staged tables again with other
settings (:func:`republish`), without models.

The launcher (or, for a detached run, the job's last step) only reads listings and writes
the manifest: its memory does not grow with the number of images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq

from curation.config import RepublishSettings
from curation.errors import ConfigError
from curation.finalize import FinalizeResult, TableFiles
from curation.manifest import build_manifest, rebuild_manifest
from curation.run_folder import FINAL_TABLES, RunFolder, new_generation
from curation.schemas import run_schemas, schema_from_text
from curation.storage import Location
from curation.thresholds import Thresholds
from pipelines.finalize import Finalize, FinalizeSettings
from pipelines.options import RunnerChoice, choose_runner
from pipelines.stage import read_stage


def final_listing(run: RunFolder, generation: str) -> Location:
    """Where the finalize step of ``generation`` writes its listing."""
    return run.stage / f"final-{generation}.json"


def _table_files(
    run: RunFolder, written: dict[str, Any], settings: FinalizeSettings
) -> dict[str, TableFiles]:
    """The final tables' files; a table without rows gets one empty file with its columns."""
    tables = {}
    for name in FINAL_TABLES:
        shards = written["tables"].get(name, [])
        if not shards:
            empty = run.table(name) / f"part-{settings.generation}-empty.parquet"
            table = settings.schemas[name].empty_table()
            empty.write_with(lambda handle, t=table: pq.write_table(t, handle))
            shards = [{"url": empty.url, "rows": 0}]
        tables[name] = TableFiles(
            [run.relative(s["url"]) for s in shards], sum(s["rows"] for s in shards)
        )
    return tables


def finalize_result(run: RunFolder, settings: FinalizeSettings) -> FinalizeResult:
    """The result of the finalize step of ``settings.generation``, from its listing."""
    written = final_listing(run, settings.generation).read_json()
    return FinalizeResult.of(_table_files(run, written, settings), written)


def commit_manifest(run: RunFolder, manifest: dict[str, Any]) -> None:
    """Publish ``manifest`` and delete the finalize step's listing."""
    run.publish(manifest)
    final_listing(run, manifest["generation"]).remove()


def finalize(
    run: RunFolder, listing: dict[str, Any], settings: FinalizeSettings, runner: RunnerChoice
) -> FinalizeResult:
    """Run the finalize pipeline over the staged tables of ``listing``; its result."""
    pipeline = beam.Pipeline(runner=runner.runner, options=runner.options)
    listings = pipeline | "StageListing" >> beam.Create([listing])
    target = final_listing(run, settings.generation).url
    read_stage(listings, run.url) | "Finalize" >> Finalize(settings, target)
    pipeline.run().wait_until_finish()
    return finalize_result(run, settings)


@dataclass(frozen=True)
class RunCommit:
    """What a run's manifest needs besides the finalize result, fixed at launch (it travels
    to the job's last step when the job commits itself)."""

    finalize: FinalizeSettings
    config: dict[str, Any]
    facts: dict[str, Any]  # inputs, layout, models, device, runner...
    changes: dict[str, Any]
    started_at: float  # epoch seconds
    lock_token: str


def publish_run(run_commit: RunCommit, counters: dict[str, int] | None) -> dict[str, Any]:
    """Build and commit the manifest of a run whose job has finished (``counters``: the
    job's Beam counters, None when the job commits itself); returns it. A repeated call for
    the same generation returns the committed manifest."""
    settings = run_commit.finalize
    run = RunFolder.at(settings.run_url)
    previous = run.read_manifest() or {}
    if previous.get("generation") == settings.generation:
        return previous
    result = finalize_result(run, settings)
    images = run.read_stage_listing().get("images", {})
    manifest = build_manifest(
        run_id=settings.run_id,
        generation=settings.generation,
        command="run",
        config=run_commit.config,
        result=result,
        timings={"total": time.time() - run_commit.started_at},
        history=list(previous.get("history", [])),
        changes=run_commit.changes,
        extra={
            **run_commit.facts,
            "pipeline": counters,
            "images": {
                "scored": images.get("scored", 0),
                "cached": images.get("cached", 0),
                "indexed_this_round": result.index.get("added", 0),
                "index_total": result.index.get("count", 0),
            },
        },
    )
    commit_manifest(run, manifest)
    return manifest


def publish_in_job(_: str, run_commit: RunCommit) -> str:
    """The last step of a detached run's job: commit the manifest, release the run's lock."""
    publish_run(run_commit, None)
    RunFolder.at(run_commit.finalize.run_url).release_lock(run_commit.lock_token)
    return run_commit.finalize.generation


def republish(
    run_dir: str,
    command: str,
    changes: RepublishSettings | None = None,
) -> dict[str, Any]:
    """Finalize ``run_dir`` again with ``changes`` and commit it; returns the manifest.

    A setting not given keeps the run's value (:meth:`RepublishSettings.applied_to`).
    """
    run = RunFolder.at(run_dir)
    changes = changes or RepublishSettings()
    with run.lock(command):
        run.repair()
        manifest = run.read_manifest()
        if manifest is None:
            raise ConfigError(f"{run.url} is not a finished run folder (no manifest.json)")
        listing = run.read_stage_listing()
        applied = changes.applied_to(manifest.get("config", {}))
        thresholds = Thresholds.of(applied.threshold, applied.synthetic_threshold)
        near, against = applied.near_threshold, applied.dedup_against
        if against and run.root.contains(Location(against)):
            raise ConfigError(f"--dedup-against {against!r} is this run's own index")
        places = [("the run folder", run.url)] + ([("--dedup-against", against)] if against else [])
        runner = choose_runner(applied.beam_args, applied.workers, places)
        started = time.monotonic()
        generation = new_generation()
        settings = FinalizeSettings(
            run_url=run.url,
            generation=generation,
            run_id=manifest.get("run_id", ""),
            thresholds=thresholds,
            near_threshold=near,
            dedup_against=against,
            dimension=int(manifest["index"]["dimension"]),
            schemas=run_schemas(None) | {"clean": schema_from_text(listing["clean_schema"])},
        )
        try:
            result = finalize(run, listing, settings, runner)
        except Exception:
            run.check_staged(listing)
            raise
        recorded = {
            "threshold": thresholds.web,
            "synthetic_threshold": thresholds.synthetic,
            "near_threshold": near,
            "dedup_against": against,
        }
        new = rebuild_manifest(
            manifest,
            command=command,
            generation=generation,
            changes=recorded,
            result=result,
            timings={command: time.monotonic() - started},
        )
        commit_manifest(run, new)
    return new
