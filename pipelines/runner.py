"""Run the CapFilt job: check everything, run one Beam job, publish.

1. :func:`prepare` checks the configuration, the inputs (every file's schema), the models
   (their configs only), the previous-round index and the runner options, and fixes the
   exact model identities, before any work. Every problem is a :class:`UsageError`.
2. The run folder's lock is taken and what a killed command left is repaired.
3. :func:`build_pipeline` wires one job: read -> screen -> copies -> cache -> models ->
   decide -> write the staged tables to a new ``_stage/<generation>/`` -> commit the stage
   (:mod:`pipelines.stage`) -> finalize (:mod:`pipelines.finalize`): final tables, index.
4. The manifest commits the result (:func:`pipelines.publish.publish_run`): written by this
   command when the job ends, or, for a detached run (``--detach``, Flex Templates), by the
   job's last step, which also releases the lock.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import apache_beam as beam
import pyarrow as pa

from curation.config import RunConfig, check_dtype
from curation.errors import ConfigError
from curation.footers import read_footers
from curation.inputs import InputFile, resolve_inputs
from curation.layout import Layout, check_inputs
from curation.model_cache import CACHE_SCHEMA, ModelCache, fingerprint
from curation.reader import ImageFiles
from curation.run_folder import RunFolder, new_generation
from curation.schemas import DECISIONS_SCHEMA, run_schemas, schema_to_text
from curation.screen import ScreenSettings
from curation.storage import Location, check_writable_folder
from pipelines.cache import CountCachedFn, JournalFn, read_cached, route, to_cache_row
from pipelines.copies import GroupCopies
from pipelines.decide import TABLES, CountDecisionFn, DecideFn
from pipelines.finalize import Finalize, FinalizeSettings
from pipelines.guarded import ERRORS
from pipelines.inference import CaptionAndScore
from pipelines.options import RunnerChoice, accelerator, accelerator_memory, choose_runner
from pipelines.progress import LiveLine, beam_counters
from pipelines.publish import RunCommit, final_listing, publish_in_job, publish_run
from pipelines.read import FetchImagesFn, ReadPairs, Unit
from pipelines.screen import REJECTED, Screen
from pipelines.stage import CommitStage, StageSettings, read_stage
from pipelines.write import WriteTable

#: Images per GPU batch when the GPU's memory is not known before the run.
GPU_FALLBACK_BATCH = 64


@dataclass(frozen=True)
class RunPlan:
    """Everything checked and fixed before a run starts."""

    config: RunConfig
    run: RunFolder
    files: list[InputFile]
    layout: Layout
    units: list[Unit]
    total_rows: int
    sizes: tuple[int | None, int]  # captioner's and filter's image sizes
    embedding_dim: int
    models: dict[str, dict[str, Any]]  # exact identities
    fingerprint: str
    device: str
    batch_size: int
    runner: RunnerChoice
    schemas: dict[str, pa.Schema]

    @property
    def row_group_starts(self) -> dict[str, list[int]]:
        starts: dict[str, list[int]] = {}
        for unit in self.units:
            starts.setdefault(unit.item.url, []).append(unit.first_row)
        return starts


@dataclass
class RunResult:
    """What a finished run produced."""

    out_dir: str
    run_id: str
    rows: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    job: str | None = None  # the runner's job id of a detached run still running

    @property
    def submitted(self) -> bool:
        """A detached run whose job has not ended yet (no manifest to show)."""
        return not self.manifest

    @property
    def error_rate(self) -> float:
        errors = self.counts.get("error", 0)
        return errors / self.rows if self.rows else 0.0


def _device(config: RunConfig, runner: RunnerChoice) -> str:
    """The device the models will run on: ``auto`` resolved here for local runners."""
    if config.device != "auto":
        if config.device.startswith("cuda") and runner.local:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    f"device {config.device!r} asked for, but CUDA is not available here"
                )
        return config.device
    if not runner.local:
        return "cuda" if accelerator(config.beam_args) is not None else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _batch_size(config: RunConfig, device: str, runner: RunnerChoice, infos: list[Any]) -> int:
    """Images per model batch: ``--batch-size``, else by device (CPU: a fixed size; GPU: as
    many as the memory left by the weights holds, for this machine's GPU on local runners and
    the ``worker_accelerator`` type on remote ones)."""
    from models.batching import CPU_BATCH, batch_size_for

    if config.batch_size:
        return config.batch_size
    if not device.startswith("cuda"):
        return CPU_BATCH
    import torch

    from models.loading import DTYPES

    if runner.local:
        memory: int | None = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        memory = accelerator_memory(config.beam_args)
    if memory is None:
        return GPU_FALLBACK_BATCH
    weights = sum(info.weight_bytes or 0 for info in infos)
    return batch_size_for(
        [info.config for info in infos],
        DTYPES[config.dtype],
        torch.device("cuda"),
        max(1, config.captions_per_image),
        free_bytes=max(0, memory - weights),
    )


def _check_models(
    config: RunConfig,
) -> tuple[tuple[int | None, int], int, dict[str, dict[str, Any]], list[Any]]:
    from models.captioner import check_prompt, prompt_token_ids
    from models.loading import check_model, load_tokenizer, model_identity

    filt = check_model(
        config.filter,
        revision=config.filter_revision,
        allow_pickle=config.allow_pickle,
        role="filter",
    )
    models = {"filter": model_identity(config.filter, config.filter_revision)}
    infos = [filt]
    caption_size = None
    if config.captions_per_image > 0:
        cap = check_model(
            config.captioner,
            revision=config.captioner_revision,
            allow_pickle=config.allow_pickle,
            role="captioner",
        )
        if config.max_length > cap.max_positions:
            raise ConfigError(
                f"max_length {config.max_length} is beyond the captioner's {cap.max_positions} "
                "positions; lower --max-length"
            )
        tokenizer = load_tokenizer(config.captioner, revision=config.captioner_revision)
        try:
            check_prompt(
                prompt_token_ids(tokenizer, config.prompt, 0).shape[1], config.caption_settings()
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
        caption_size = cap.image_size
        models["captioner"] = model_identity(config.captioner, config.captioner_revision)
        infos.append(cap)
    return (caption_size, filt.image_size), filt.embedding_dim, models, infos


def _check_previous(config: RunConfig, run: RunFolder, dimension: int) -> None:
    if not config.dedup_against:
        return
    from curation.dedup.index_store import read_info

    against = Location(config.dedup_against)
    if run.root.contains(against):
        raise ConfigError(
            f"--dedup-against {config.dedup_against!r} is this run's own index; give a previous "
            "round's index (or '' to clear the setting)"
        )
    info = read_info(against)  # a wrong folder fails now, not after the models ran
    if info["count"] and info["dimension"] != dimension:
        raise ConfigError(
            f"{config.dedup_against}: the previous index holds {info['dimension']}-d embeddings, "
            f"the filter gives {dimension}-d; dedup against an index of the same filter"
        )


def prepare(config: RunConfig) -> RunPlan:
    """Check config, inputs, models, index and runner before any work (raises UsageError)."""
    runner = choose_runner(
        config.beam_args,
        config.workers,
        [
            ("--out", config.out),
            *(("input", i) for i in config.input),
            *(("--dedup-against", a) for a in [config.dedup_against] if a),
        ],
    )
    run = RunFolder.at(config.out)
    files = resolve_inputs(list(config.input), exclude=run.root)
    footers = read_footers(files)
    layout = check_inputs(
        files,
        config.image_column,
        config.text_column,
        config.key_column,
        config.drop_columns,
        footers,
    )
    sizes, dimension, models, infos = _check_models(config)
    _check_previous(config, run, dimension)
    device = _device(config, runner)
    try:
        check_dtype(config.dtype, device)
    except ValueError as err:
        raise ConfigError(f"{err} (--device {config.device} resolved to {device})") from None
    check_writable_folder(run.root, "--out")
    run.check_may_run_into([item.url for item in files])
    units = []
    for item in files:
        footer = footers[item.url]
        for index, (first, rows) in enumerate(zip(footer.starts, footer.row_counts, strict=True)):
            units.append(Unit(item, index, first, rows))
    schemas = run_schemas(layout.output_passthrough())
    return RunPlan(
        config=config,
        run=run,
        files=files,
        layout=layout,
        units=units,
        total_rows=sum(u.rows for u in units),
        sizes=sizes,
        embedding_dim=dimension,
        models=models,
        fingerprint=fingerprint(config.to_dict(), models),
        device=device,
        batch_size=_batch_size(config, device, runner, infos),
        runner=runner,
        schemas=schemas,
    )


def build_pipeline(
    pipeline: beam.Pipeline,
    plan: RunPlan,
    settings: FinalizeSettings,
    cache_files: list[str],
) -> beam.PCollection:
    """Wire the whole CapFilt job into ``pipeline``; the output is the URL of the finalize
    step's listing, once everything is written."""
    c = plan.config
    run_id = settings.run_id
    images = ImageFiles(tuple(c.image_roots), c.max_image_bytes)
    read = pipeline | "ReadPairs" >> ReadPairs(plan.units, plan.layout, images, run_id, c.threshold)
    file_order = {item.url: i for i, item in enumerate(plan.files)}
    screened = read.pairs | "Screen" >> Screen(
        ScreenSettings.of(c), file_order if plan.layout.key_column else None, run_id, c.threshold
    )
    grouped = screened["hashed"] | "GroupCopies" >> GroupCopies(
        c.phash_distance, run_id, c.threshold
    )
    routed = _routed(grouped.groups, read_cached(pipeline, cache_files), plan, images, run_id)
    models = routed.todo | "Models" >> CaptionAndScore(c, plan.sizes, plan.batch_size, run_id)
    fresh = models["scored"]
    reused = routed.cached | "CountCached" >> beam.ParDo(CountCachedFn())
    stage = plan.run.stage_generation(settings.generation)
    shards, decide_errors = _staged_tables(plan, stage, fresh, reused, run_id)
    rejected = screened[REJECTED] | "RejectionRows" >> beam.Map(
        _rejection_row, run_id=run_id, threshold=c.threshold
    )
    errors = (
        read[ERRORS],
        screened[ERRORS],
        grouped[ERRORS],
        routed[ERRORS],
        *models[ERRORS],
        *decide_errors,
    ) | "AllErrors" >> beam.Flatten()
    for name, rows in (("Rejected", rejected), ("Errors", errors)):
        shards.append(
            rows
            | f"Count{name}" >> beam.ParDo(CountDecisionFn())
            | f"Write{name}" >> WriteTable("decisions", (stage / "decisions").url, DECISIONS_SCHEMA)
        )
    committed = _commit_stage(plan, settings, shards, _image_counts(plan, fresh, reused))
    target = final_listing(plan.run, settings.generation).url
    return read_stage(committed, plan.run.url) | "Finalize" >> Finalize(settings, target)


def _routed(
    groups: beam.PCollection,
    cached: beam.PCollection,
    plan: RunPlan,
    images: ImageFiles,
    run_id: str,
) -> Any:
    """Image groups joined with their cached model outputs: ``todo`` (with pixels, for the
    models), ``cached`` (no model runs) and errors."""
    items = {item.url: item for item in plan.files}
    return (
        {
            "group": groups | "KeyGroups" >> beam.Map(lambda g: (_cache_key(g), g)),
            "cached": cached,
        }
        | "JoinCache" >> beam.CoGroupByKey()
        | "ByRowGroup" >> beam.FlatMap(route, starts=plan.row_group_starts)
        | "GroupByRowGroup" >> beam.GroupByKey()
        | "FetchImages"
        >> beam.ParDo(
            FetchImagesFn(items, plan.layout, images, run_id, plan.config.threshold)
        ).with_outputs("cached", ERRORS, main="todo")
    )


def _staged_tables(
    plan: RunPlan, stage: Location, fresh: beam.PCollection, reused: beam.PCollection, run_id: str
) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Decide the scored and the cached groups and write the stage tables and the cache:
    their shards, and the errors of deciding."""
    cache_folder = plan.run.cache(plan.fingerprint).url
    shards, errors = [], []
    for branch, scored in (("Scored", fresh), ("Cached", reused)):
        decided = scored | f"Decide{branch}" >> beam.ParDo(
            DecideFn(plan.schemas, run_id, plan.config.thresholds())
        ).with_outputs(*TABLES, ERRORS)
        for name in TABLES:
            shards.append(
                decided[name]
                | f"Write{branch}{name.title()}"
                >> WriteTable(name, (stage / name).url, plan.schemas[name])
            )
        shards.append(
            scored
            | f"CacheRows{branch}" >> beam.Map(to_cache_row)
            | f"Compact{branch}" >> WriteTable("cache", cache_folder, CACHE_SCHEMA)
        )
        errors.append(decided[ERRORS])
    return shards, errors


def _image_counts(
    plan: RunPlan, fresh: beam.PCollection, reused: beam.PCollection
) -> list[beam.PCollection]:
    """The stage listing's entries of images scored, reused from the cache and journaled."""
    cache_folder = plan.run.cache(plan.fingerprint).url
    journaled = fresh | "Journal" >> beam.ParDo(JournalFn(cache_folder, plan.batch_size))
    return [
        journaled | "JournalEntries" >> beam.Map(lambda n: ("journaled", n)),
        fresh | "ScoredImages" >> beam.combiners.Count.Globally()
        | "ScoredEntry" >> beam.Map(lambda n: ("images_scored", n)),
        reused | "CachedImages" >> beam.combiners.Count.Globally()
        | "CachedEntry" >> beam.Map(lambda n: ("images_cached", n)),
    ]  # fmt: skip


def _commit_stage(
    plan: RunPlan,
    settings: FinalizeSettings,
    shards: list[beam.PCollection],
    entries: list[beam.PCollection],
) -> beam.PCollection:
    """Commit the stage generation once every shard and count is written."""
    tagged = shards | "AllShards" >> beam.Flatten() | "Tag" >> beam.Map(lambda s: ("shard", s))
    return (
        (tagged, *entries)
        | "AllEntries" >> beam.Flatten()
        | "Stage"
        >> CommitStage(
            StageSettings(
                run_url=plan.run.url,
                generation=settings.generation,
                run_id=settings.run_id,
                fingerprint=plan.fingerprint,
                clean_schema=schema_to_text(plan.schemas["clean"]),
            )
        )
    )


def _cache_key(group: Any) -> str:
    from curation.model_cache import cache_key

    return cache_key(group)


def _rejection_row(rejection: Any, run_id: str, threshold: float) -> dict[str, Any]:
    from curation.decide import rejection_row

    return rejection_row(rejection, run_id, threshold)


def _run_beam(plan: RunPlan, pipeline: beam.Pipeline, stream: TextIO) -> Any:
    line = LiveLine(plan.total_rows, stream)
    if plan.runner.runner is not None:  # local: the job runs inside run()
        if plan.config.progress:
            with line.local(plan.config.workers):
                result = pipeline.run()
        else:
            result = pipeline.run()
    else:
        result = pipeline.run()
        if plan.config.progress:
            line.poll(result)
    result.wait_until_finish()
    return result


def _detached_by_options(runner: RunnerChoice) -> bool:
    """Whether the options only describe the job (a template launch): nothing can wait."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    return bool(runner.options.view_as(GoogleCloudOptions).template_location)


def run_pipeline(config: RunConfig, stream: TextIO | None = None) -> RunResult:
    """Run the whole job into ``config.out``; a re-run reuses the cached model outputs.

    Detached (``config.detach``, or a template launch), the job commits its own result and
    this returns once it is submitted (the local runner still runs it to the end first).
    """
    stream = stream or sys.stderr
    started_at, started = time.time(), time.monotonic()
    plan = prepare(config)
    run = plan.run
    detach = config.detach or _detached_by_options(plan.runner)
    lock = run.lock("run")
    notes = lock.acquire(detached=detach)
    submitted = False
    try:
        notes += run.repair()
        cache_files, warnings = ModelCache(run.cache(plan.fingerprint)).check()
        notes += warnings
        _announce(notes, cache_files, stream)
        run_commit = _run_commit(plan, started_at, lock.token)
        settings = run_commit.finalize
        pipeline = beam.Pipeline(runner=plan.runner.runner, options=plan.runner.options)
        final = build_pipeline(pipeline, plan, settings, cache_files)
        if detach:
            final | "Publish" >> beam.Map(publish_in_job, run_commit=run_commit)
            beam_result = pipeline.run()
            submitted = True
            if plan.runner.runner is None:  # the runner has the job (or, templated, its file)
                return RunResult(
                    out_dir=run.url,
                    run_id=settings.run_id,
                    rows=plan.total_rows,
                    seconds=time.monotonic() - started,
                    notes=notes,
                    job=_job_id(beam_result),
                )
            beam_result.wait_until_finish()
            manifest = run.read_manifest() or {}
        else:
            beam_result = _run_beam(plan, pipeline, stream)
            manifest = publish_run(run_commit, beam_counters(beam_result))
    finally:
        if not submitted:
            lock.release()
    return RunResult(
        out_dir=run.url,
        run_id=settings.run_id,
        rows=plan.total_rows,
        seconds=time.monotonic() - started,
        counts=manifest["counts"],
        counters=beam_counters(beam_result),
        manifest=manifest,
        notes=notes,
    )


def _announce(notes: list[str], cache_files: list[str], stream: TextIO) -> None:
    for note in notes:
        stream.write(f"note: {note}\n")
    if cache_files:
        stream.write(f"resuming: {len(cache_files)} cache file(s) of model outputs found\n")


def _run_commit(plan: RunPlan, started_at: float, lock_token: str) -> RunCommit:
    """What publishing this run needs: a new run id and generation, and the run's facts."""
    config = plan.config
    return RunCommit(
        finalize=FinalizeSettings(
            run_url=plan.run.url,
            generation=new_generation(),
            run_id=uuid.uuid4().hex[:12],
            thresholds=config.thresholds(),
            near_threshold=config.near_threshold,
            dedup_against=config.dedup_against,
            dimension=plan.embedding_dim,
            schemas=plan.schemas,
        ),
        config=config.to_dict(),
        facts=_run_facts(plan),
        changes={
            "threshold": config.threshold,
            "synthetic_threshold": config.thresholds().synthetic,
            "near_threshold": config.near_threshold,
        },
        started_at=started_at,
        lock_token=lock_token,
    )


def _job_id(result: Any) -> str | None:
    has_job = getattr(result, "has_job", False)
    return str(result.job_id()) if has_job else None


def _run_facts(plan: RunPlan) -> dict[str, Any]:
    """What a run's manifest records about its inputs, models, device and runner."""
    config = plan.config
    return {
        "rows": plan.total_rows,
        "inputs": [
            {"path": item.url, "bytes": item.location.size(), "rows": rows}
            for item, rows in _rows_per_file(plan)
        ],
        "layout": plan.layout.to_dict(),
        "models": plan.models,
        "device": {"device": plan.device, "dtype": config.dtype, "batch_size": plan.batch_size},
        "runner": plan.runner.name,
        "cache": plan.run.relative(plan.run.cache(plan.fingerprint)),
    }


def _rows_per_file(plan: RunPlan) -> list[tuple[InputFile, int]]:
    rows: dict[str, int] = {}
    for unit in plan.units:
        rows[unit.item.url] = rows.get(unit.item.url, 0) + unit.rows
    return [(item, rows.get(item.url, 0)) for item in plan.files]
