"""Finalize a run: near-duplicate and previous-round removal, final tables, the index.

Reads the staged tables of the last complete pipeline (``_stage/``) and writes the run's
final ``decisions/``, ``clean/``, ``synthetic/``, ``duplicates/`` and the index, as files of
a new generation; :meth:`curation.run_folder.RunFolder.publish` then commits them. Because
the staged tables are kept, ``curation dedup`` can re-run this step with other settings
without any model. Tables are streamed batch by batch; only the image embeddings (one
vector per unique image) are held in memory.

Texts are decided here, from their stored scores, at the thresholds given (the staged
clean and synthetic tables hold every scored candidate), so ``curation rethreshold`` gives
what a fresh run at that threshold gives. The steps: :func:`load_images` ->
:func:`count_kept_texts` -> :func:`find_removals` -> :func:`rewrite_tables` (counts as it
streams) -> :func:`write_round_index`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.decide import duplicate_row
from curation.errors import UsageError
from curation.reasons import Decision, DuplicateKind, Reason, TextOrigin
from curation.run_folder import FINAL_TABLES, RunFolder
from curation.schemas import DUPLICATES_SCHEMA
from curation.shards import ROW_GROUP_ROWS, iter_batches
from curation.storage import Location
from curation.thresholds import Thresholds, keeps_all

#: ``error`` decisions quoted in the manifest and summary.
ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class Removal:
    """An image removed after scoring, and the image it duplicates."""

    dup_of: str
    similarity: float
    kind: DuplicateKind


@dataclass(frozen=True)
class ImageSet:
    """The scored unique images of a run: keys, embeddings and near-duplicate ranks."""

    keys: list[str]
    embeddings: np.ndarray  # N x D float32, L2-normalised
    sha256: list[str]
    kept_texts: np.ndarray
    best_itm: np.ndarray


@dataclass(frozen=True)
class TableFiles:
    """The files of one final table and its row count."""

    files: list[str]  # relative to the run folder
    rows: int


@dataclass
class FinalizeResult:
    """What finalize wrote and counted (what the manifest records)."""

    tables: dict[str, TableFiles] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    texts: dict[str, dict[str, int]] = field(default_factory=dict)  # origin -> decision -> n
    duplicates: dict[str, int] = field(default_factory=dict)
    error_examples: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)


def load_images(urls: list[str]) -> ImageSet:
    """Keys, embeddings, sha256s, kept-text counts and best ITM of the staged images."""
    keys: list[str] = []
    shas: list[str] = []
    kept: list[np.ndarray] = []
    best: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for batch in iter_batches(urls, batch_rows=4096):
        keys.extend(batch.column("key").to_pylist())
        shas.extend(batch.column("sha256").to_pylist())
        kept.append(batch.column("kept_texts").to_numpy(zero_copy_only=False))
        best.append(batch.column("best_itm").to_numpy(zero_copy_only=False))
        flat = batch.column("embedding").values.to_numpy(zero_copy_only=False)
        vectors.append(flat.astype(np.float32).reshape(len(batch), -1))
    if not keys:
        empty = np.zeros(0, np.float32)
        return ImageSet([], np.zeros((0, 0), np.float32), [], np.zeros(0, np.int32), empty)
    return ImageSet(keys, np.vstack(vectors), shas, np.concatenate(kept), np.concatenate(best))


def find_removals(
    images: ImageSet, *, near_threshold: float, previous: Any | None
) -> dict[str, Removal]:
    """Images that duplicate a previous round's image or another image of this run.

    ``previous`` is a loaded previous-round index (:class:`~curation.dedup.index_store.
    PreviousIndex`) or None.
    """
    from curation.dedup.keep import NearCandidate
    from curation.dedup.near import find_near_duplicates, query_previous

    removed: dict[str, Removal] = {}
    keys = images.keys
    if not keys:
        return removed
    if previous is not None and previous.index.ntotal:
        matches = query_previous(previous.index, images.embeddings, near_threshold)
        for row, prev_id, similarity in matches:
            removed[keys[row]] = Removal(
                previous.key_of(prev_id), float(similarity), DuplicateKind.PREVIOUS_ROUND
            )
    remaining = [i for i, key in enumerate(keys) if key not in removed]
    if len(remaining) > 1:
        candidates = [
            NearCandidate(keys[i], int(images.kept_texts[i]), float(images.best_itm[i]))
            for i in remaining
        ]
        for dup in find_near_duplicates(
            [keys[i] for i in remaining],
            images.embeddings[remaining],
            candidates,
            threshold=near_threshold,
        ):
            removed[dup.key] = Removal(dup.dup_of, float(dup.similarity), DuplicateKind.NEAR)
    return removed


Transform = Callable[[pa.RecordBatch], pa.RecordBatch]
_SCORED = pa.array([Reason.KEPT.value, Reason.LOW_ITM.value])


def redecide(batch: pa.RecordBatch, thresholds: Thresholds) -> pa.RecordBatch:
    """Decisions of scored texts made again at ``thresholds``; every row gets its origin's
    threshold. Rows dropped for other reasons keep them."""
    origin = batch.column("text_origin")
    threshold = pc.if_else(
        pc.equal(origin, TextOrigin.WEB.value), thresholds.web, thresholds.synthetic
    )
    scored = pc.and_(
        pc.is_in(batch.column("reason"), value_set=_SCORED), pc.is_valid(batch.column("itm"))
    )
    kept = pc.fill_null(keeps_all(batch.column("itm"), threshold), False)
    reason = pc.if_else(
        scored, pc.if_else(kept, Reason.KEPT.value, Reason.LOW_ITM.value), batch.column("reason")
    )
    decision = pc.if_else(
        pc.equal(reason, Reason.KEPT.value), Decision.KEPT.value, Decision.DROPPED.value
    )
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    columns.update(reason=reason, decision=decision, threshold=threshold.cast(pa.float32()))
    return pa.RecordBatch.from_arrays([columns[n] for n in batch.schema.names], schema=batch.schema)


def count_kept_texts(decision_urls: list[str], thresholds: Thresholds) -> dict[str, int]:
    """Texts kept per image key at ``thresholds`` (before duplicate removal)."""
    counts: dict[str, int] = {}
    for batch in iter_batches(
        decision_urls,
        ["image_key", "text_origin", "itm", "reason", "detail", "decision", "threshold"],
        batch_rows=65_536,
    ):
        decided = redecide(batch, thresholds)
        kept = decided.filter(pc.equal(decided.column("decision"), Decision.KEPT.value))
        for key in kept.column("image_key").to_pylist():
            counts[key] = counts.get(key, 0) + 1
    return counts


def _write_table(
    run: RunFolder, name: str, generation: str, schema: pa.Schema, batches: Any
) -> TableFiles:
    """Stream record batches into one shard ``<name>/part-<generation>-00000.parquet``.

    A table without rows still gets that shard (empty, with the schema), so readers of the
    folder always find the table's columns.
    """
    relative = f"{name}/part-{generation}-00000.parquet"
    rows = 0

    def write(handle: Any) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema) as writer:
            for batch in batches:
                if len(batch):
                    writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                    rows += len(batch)

    run.resolve(relative).write_with(write)
    return TableFiles([relative], rows)


def _stage_schema(urls: list[str], fallback: pa.Schema) -> pa.Schema:
    if not urls:
        return fallback
    with Location(urls[0]).open("rb") as handle:
        return pq.ParquetFile(handle).schema_arrow


def _mark_duplicates(batch: pa.RecordBatch, removed: dict[str, Removal]) -> pa.RecordBatch:
    """Turn kept decisions of removed images into ``duplicate`` drops with the reason's detail."""
    if not removed:
        return batch
    hit = pc.and_(
        pc.is_in(batch.column("image_key"), value_set=pa.array(sorted(removed), pa.string())),
        pc.equal(batch.column("decision"), Decision.KEPT.value),
    )
    if not pc.any(hit).as_py():
        return batch
    rows = batch.to_pylist()
    for row, flag in zip(rows, hit.to_pylist(), strict=True):
        if flag:
            removal = removed[row["image_key"]]
            row["decision"] = Decision.DROPPED.value
            row["reason"] = Reason.DUPLICATE.value
            row["detail"] = (
                f"{removal.kind.value} duplicate of {removal.dup_of} "
                f"(similarity {removal.similarity:.4f})"
            )
    return pa.RecordBatch.from_pylist(rows, schema=batch.schema)


def _keep_kept(column: str, removed: dict[str, Removal], threshold: float) -> Transform:
    """Candidates the threshold keeps whose image was not removed."""
    dropped = pa.array(sorted(removed), pa.string())

    def step(batch: pa.RecordBatch) -> pa.RecordBatch:
        mask = pc.fill_null(keeps_all(batch.column("itm"), threshold), False)
        if removed:
            mask = pc.and_(mask, pc.invert(pc.is_in(batch.column(column), value_set=dropped)))
        return batch.filter(mask)

    return step


def rewrite_tables(
    run: RunFolder,
    listing: dict[str, Any],
    removed: dict[str, Removal],
    generation: str,
    schemas: dict[str, pa.Schema],
    thresholds: Thresholds,
) -> FinalizeResult:
    """Write the final tables from the staged ones, counting decisions as they stream."""
    result = FinalizeResult()
    reasons: Counter[str] = Counter()
    texts: Counter[tuple[str, str]] = Counter()
    dup_counts: Counter[str] = Counter()

    def decisions(batch: pa.RecordBatch) -> pa.RecordBatch:
        out = _mark_duplicates(redecide(batch, thresholds), removed)
        reasons.update(out.column("reason").to_pylist())
        texts.update(
            zip(
                out.column("text_origin").to_pylist(),
                out.column("decision").to_pylist(),
                strict=True,
            )
        )
        if (
            len(result.error_examples) < ERROR_EXAMPLES
            and pc.any(pc.equal(out.column("reason"), Reason.ERROR.value)).as_py()
        ):
            errors = out.filter(pc.equal(out.column("reason"), Reason.ERROR.value))
            for row in errors.select(["key", "source_file", "source_row", "detail"]).to_pylist():
                if len(result.error_examples) < ERROR_EXAMPLES:
                    result.error_examples.append(row)
        return out

    def duplicates(batch: pa.RecordBatch) -> pa.RecordBatch:
        dup_counts.update(batch.column("kind").to_pylist())
        return batch

    steps: dict[str, Transform] = {
        "decisions": decisions,
        "clean": _keep_kept("image_key", removed, thresholds.web),
        "synthetic": _keep_kept("key", removed, thresholds.synthetic),
        "duplicates": duplicates,
    }
    for name in FINAL_TABLES:
        urls = run.stage_files(name, listing)
        schema = _stage_schema(urls, schemas[name])
        batches = (steps[name](b) for b in iter_batches(urls))
        if name == "duplicates":
            extra = [
                duplicate_row(key, r.dup_of, r.kind, r.similarity)
                for key, r in sorted(removed.items())
            ]
            dup_counts.update(r.kind.value for r in removed.values())
            tail = pa.RecordBatch.from_pylist(extra, schema=DUPLICATES_SCHEMA) if extra else None
            batches = _chain(batches, tail)
        result.tables[name] = _write_table(run, name, generation, schema, batches)
    result.reasons = {r.value: reasons.get(r.value, 0) for r in Reason}
    result.texts = {
        origin: {d.value: texts.get((origin, d.value), 0) for d in Decision}
        for origin in ("web", "synthetic")
    }
    result.duplicates = dict(dup_counts)
    return result


def _chain(batches: Any, tail: pa.RecordBatch | None) -> Any:
    yield from batches
    if tail is not None:
        yield tail


def write_round_index(
    run: RunFolder,
    images: ImageSet,
    removed: dict[str, Removal],
    *,
    previous: Any | None,
    dimension: int,
    near_threshold: float,
    run_id: str,
    generation: str,
) -> dict[str, Any]:
    """The index of this round's kept images (extending ``previous``); its ``index.json``."""
    from curation.dedup.index_store import write_index

    survivors = [
        i for i, key in enumerate(images.keys) if key not in removed and images.kept_texts[i] > 0
    ]
    vectors = images.embeddings[survivors] if survivors else np.zeros((0, dimension), np.float32)
    return write_index(
        run.index,
        [images.keys[i] for i in survivors],
        vectors,
        dimension=dimension,
        sha256=[images.sha256[i] for i in survivors],
        run_id=run_id,
        previous=previous,
        threshold=near_threshold,
        generation=generation,
        point=False,
    )


def finalize_run(
    run: RunFolder,
    *,
    thresholds: Thresholds,
    near_threshold: float,
    dedup_against: str | None,
    run_id: str,
    generation: str,
    dimension: int,
    schemas: dict[str, pa.Schema],
) -> FinalizeResult:
    """Write the final tables and index of a run (as a new generation) from its staged tables."""
    from curation.dedup.index_store import load_index

    listing = run.read_stage_listing()
    images = load_images(run.stage_files("images", listing))
    kept = count_kept_texts(run.stage_files("decisions", listing), thresholds)
    images = replace(images, kept_texts=np.asarray([kept.get(k, 0) for k in images.keys], np.int64))
    previous = load_index(dedup_against) if dedup_against else None
    if previous is not None and previous.index.ntotal and previous.index.d != dimension:
        raise UsageError(
            f"{dedup_against}: the previous index holds {previous.index.d}-d embeddings, this "
            f"run's filter gives {dimension}-d; dedup against an index of the same filter"
        )
    removed = find_removals(images, near_threshold=near_threshold, previous=previous)
    result = rewrite_tables(run, listing, removed, generation, schemas, thresholds)
    result.index = write_round_index(
        run,
        images,
        removed,
        previous=previous,
        dimension=dimension,
        near_threshold=near_threshold,
        run_id=run_id,
        generation=generation,
    )
    return result
