"""Run the CapFilt job: validate everything, run the Beam pipeline, finalize, write the manifest."""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from curation.config import RunConfig
from curation.finalize import STAGE_DIR, finalize_run, summarize
from curation.schemas import (
    CLEAN_SCHEMA,
    DECISIONS_SCHEMA,
    DUPLICATES_SCHEMA,
    IMAGES_SCHEMA,
    SYNTHETIC_SCHEMA,
    with_passthrough,
)
from curation.score_cache import CACHE_DIR, cache_files, fingerprint
from models.loading import check_model
from pipelines.progress import PROGRESS_DIR, ProgressDisplay, read_progress
from pipelines.transforms import NAMESPACE, build_pipeline


@dataclass
class RunResult:
    """What a finished run produced."""

    out_dir: Path
    run_id: str
    rows: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    images_scored: int = 0
    images_cached: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)


def pipeline_options(config: RunConfig) -> tuple[PipelineOptions, Any]:
    """Beam options from ``--beam-arg``s; without ``--runner``, the local FnApiRunner.

    The local runner is the in-process FnApiRunner (one worker) or its multi-processing
    mode (``workers > 1``); it never tries the Prism runner, which needs a download.
    """
    args = list(config.beam_args)
    options = PipelineOptions(args)
    if any(a == "--runner" or a.startswith("--runner=") for a in args):
        return options, None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    direct = options.view_as(DirectOptions)
    if config.workers > 1:
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = config.workers
    else:
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
    return options, FnApiRunner()


def beam_counters(result: Any) -> dict[str, int]:
    """The pipeline's ``curation`` counters (rows read, decisions per reason, ...)."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(counter.committed or counter.attempted or 0)
    return dict(sorted(totals.items()))


def passthrough_schema(files: list[str], layout: Any) -> pa.Schema:
    """Arrow fields of the input's passthrough columns (all nullable)."""
    from curation.reader import open_parquet

    schema = open_parquet(files[0]).schema_arrow
    names = [n for n in layout.passthrough if n in schema.names]
    return pa.schema([schema.field(n).with_nullable(True) for n in names])


def prepare(config: RunConfig) -> dict[str, Any]:
    """Validate config, inputs and models before any work starts (raises UsageError)."""
    from curation.reader import check_inputs, open_parquet, resolve_inputs

    config.validate()
    files = resolve_inputs(config.input)
    layout = check_inputs(
        files,
        image_column=config.image_column,
        text_column=config.text_column,
        key_column=config.key_column,
    )
    filter_size = check_model(
        config.filter, revision=config.filter_revision, allow_pickle=config.allow_pickle
    )
    caption_size = (
        check_model(
            config.captioner, revision=config.captioner_revision, allow_pickle=config.allow_pickle
        )
        if config.captions_per_image > 0
        else None
    )
    if config.dedup_against:
        from curation.dedup.index_store import load_index

        load_index(config.dedup_against)  # a wrong folder fails now, not after the models ran
    metadata = [open_parquet(path).metadata for path in files]
    units = [
        (path, index)
        for path, meta in zip(files, metadata, strict=True)
        for index in range(meta.num_row_groups)
    ]
    total_rows = sum(meta.num_rows for meta in metadata)
    starts: dict[str, list[int]] = {}
    for path, meta in zip(files, metadata, strict=True):
        offsets = [0]
        for index in range(meta.num_row_groups):
            offsets.append(offsets[-1] + meta.row_group(index).num_rows)
        starts[path] = offsets[:-1]
    return {
        "files": files,
        "layout": layout,
        "sizes": (caption_size, filter_size),
        "units": units,
        "row_group_starts": starts,
        "total_rows": total_rows,
    }


def run_pipeline(config: RunConfig, stream: TextIO | None = None) -> RunResult:
    """Run the whole job into ``config.out``; a re-run reuses the cached model outputs."""
    from curation.manifest import write_manifest

    stream = stream or sys.stderr
    started = time.monotonic()
    plan = prepare(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    stage = out / STAGE_DIR
    progress_dir = out / PROGRESS_DIR
    for folder in (stage, progress_dir):
        shutil.rmtree(folder, ignore_errors=True)
    cache_dir = out / CACHE_DIR / fingerprint(config.to_dict())
    cached_before = len(cache_files(cache_dir))
    passthrough = passthrough_schema(plan["files"], plan["layout"])
    schemas = {
        "decisions": DECISIONS_SCHEMA,
        "clean": with_passthrough(CLEAN_SCHEMA, passthrough),
        "synthetic": SYNTHETIC_SCHEMA,
        "duplicates": DUPLICATES_SCHEMA,
        "images": IMAGES_SCHEMA,
    }
    options, runner = pipeline_options(config)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(
        pipeline,
        config=config,
        run_id=run_id,
        units=plan["units"],
        row_group_starts=plan["row_group_starts"],
        layout=plan["layout"],
        sizes=plan["sizes"],
        stage_dir=str(stage),
        cache_dir=str(cache_dir),
        progress_dir=str(progress_dir),
        schemas=schemas,
    )
    if cached_before:
        stream.write(
            f"resuming: {cached_before} cache file(s) of model outputs found in {cache_dir}\n"
        )
    t0 = time.monotonic()
    if config.progress and runner is not None:
        with ProgressDisplay(progress_dir, plan["total_rows"], stream=stream):
            beam_result = pipeline.run()
            beam_result.wait_until_finish()
    else:
        beam_result = pipeline.run()
        beam_result.wait_until_finish()
    counters = beam_counters(beam_result)
    pipeline_seconds = time.monotonic() - t0
    t1 = time.monotonic()
    result = finalize_run(
        out, near_threshold=config.near_threshold, dedup_against=config.dedup_against, run_id=run_id
    )
    finalize_seconds = time.monotonic() - t1
    progress = read_progress(progress_dir)
    shutil.rmtree(progress_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    counts = summarize(result)
    manifest = write_manifest(
        out / "manifest.json",
        config=config.to_dict(),
        inputs=plan["files"],
        counts=result.reasons,
        timings={"total": seconds, "pipeline": pipeline_seconds, "finalize": finalize_seconds},
        models={
            "captioner": {"name": config.captioner, "revision": config.captioner_revision},
            "filter": {"name": config.filter, "revision": config.filter_revision},
        },
        extra={
            "run_id": run_id,
            "rows": plan["total_rows"],
            "layout": plan["layout"].kind,
            "tables": counts,
            "images_scored": progress.get("images_scored", 0),
            "images_cached": progress.get("images_cached", 0),
            "cache": str(cache_dir.relative_to(out)),
            "beam_counters": counters,
        },
    )
    return RunResult(
        out_dir=out,
        run_id=run_id,
        rows=plan["total_rows"],
        seconds=seconds,
        counts=result.reasons,
        images_scored=progress.get("images_scored", 0),
        images_cached=progress.get("images_cached", 0),
        manifest=manifest,
    )
