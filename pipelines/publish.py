"""Finalize a run on the engine and commit the result: after `curation run`'s pipeline, and
for `curation dedup` / `rethreshold`, which finalize the staged tables again with other
settings (:func:`republish`), without models.

The launcher only reads listings and writes the manifest: its memory does not grow with the
number of images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TextIO

import apache_beam as beam
import pyarrow.parquet as pq

from curation.errors import ConfigError
from curation.finalize import FinalizeResult, TableFiles
from curation.manifest import rebuild_manifest
from curation.run_folder import FINAL_TABLES, STAGE_TABLES, RunFolder, new_generation
from curation.schemas import run_schemas, schema_from_text
from curation.shards import read_rows
from curation.storage import Location
from curation.thresholds import Thresholds
from pipelines.finalize import Finalize, FinalizeSettings
from pipelines.options import RunnerChoice, choose_runner
from pipelines.progress import beam_counters


def read_stage(pipeline: beam.Pipeline, run: RunFolder, listing: dict[str, Any]) -> dict[str, Any]:
    """The staged tables of ``listing`` as PCollections of rows (read per shard)."""
    return {
        name: pipeline
        | f"Stage{name.title()}" >> beam.Create(run.stage_files(name, listing), reshuffle=True)
        | f"Read{name.title()}" >> beam.FlatMap(read_rows)
        for name in STAGE_TABLES
    }


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


def finalize(
    run: RunFolder, listing: dict[str, Any], settings: FinalizeSettings, runner: RunnerChoice
) -> FinalizeResult:
    """Run the finalize pipeline over the staged tables of ``listing``; its result."""
    target = run.stage / f"final-{settings.generation}.json"
    pipeline = beam.Pipeline(runner=runner.runner, options=runner.options)
    read_stage(pipeline, run, listing) | "Finalize" >> Finalize(settings, target.url)
    result = pipeline.run()
    result.wait_until_finish()
    written = target.read_json()
    target.remove()
    return FinalizeResult.of(_table_files(run, written, settings), beam_counters(result), written)


def _unit(name: str, value: float, low_open: bool = False) -> float:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(
            f"invalid value for {name!r}: {value!r} (expected a number in {interval})"
        )
    return value


def republish(
    run_dir: str,
    command: str,
    *,
    threshold: float | None = None,
    synthetic_threshold: float | None = None,
    near_threshold: float | None = None,
    dedup_against: str | None = None,
    workers: int = 1,
    beam_args: Sequence[str] = (),
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Finalize ``run_dir`` again with the given settings and commit it; returns the manifest.

    ``dedup_against=""`` clears the previous-round index; ``synthetic_threshold`` defaults to
    the run's own (which defaults to the web threshold). A setting not given keeps the
    run's value.
    """
    run = RunFolder.at(run_dir)
    with run.lock(command):
        run.repair()
        manifest = run.read_manifest()
        if manifest is None:
            raise ConfigError(f"{run.url} is not a finished run folder (no manifest.json)")
        listing = run.read_stage_listing()
        config = manifest.get("config", {})
        web = _unit("threshold", threshold if threshold is not None else config["threshold"])
        if synthetic_threshold is None:
            synthetic_threshold = (
                web if threshold is not None else config.get("synthetic_threshold")
            )
        thresholds = Thresholds.of(web, synthetic_threshold)
        _unit("synthetic_threshold", thresholds.synthetic)
        near = _unit(
            "near_threshold",
            near_threshold if near_threshold is not None else config.get("near_threshold", 0.95),
            low_open=True,
        )
        against = config.get("dedup_against") if dedup_against is None else (dedup_against or None)
        if against and run.root.contains(Location(against)):
            raise ConfigError(f"--dedup-against {against!r} is this run's own index")
        places = [("the run folder", run.url)] + ([("--dedup-against", against)] if against else [])
        runner = choose_runner(beam_args, workers, places)
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
        result = finalize(run, listing, settings, runner)
        changes = {
            "threshold": thresholds.web,
            "synthetic_threshold": thresholds.synthetic,
            "near_threshold": near,
            "dedup_against": against,
        }
        new = rebuild_manifest(
            manifest,
            command=command,
            generation=generation,
            changes=changes,
            result=result,
            timings={command: time.monotonic() - started},
        )
        run.publish(new)
    return new
