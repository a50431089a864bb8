"""Finalize a run: near-duplicate and previous-round removal, final tables, the index.

Reads the staged tables the scoring pipeline wrote (``<run>/_stage/``) and writes the
run's final ``decisions/``, ``clean/``, ``synthetic/``, ``duplicates/`` and ``index/``.
Because the staged tables are kept, ``curation dedup RUN_DIR`` can re-run this step with
other thresholds without any model. Tables are streamed batch by batch; only the image
embeddings (one vector per unique image) are held in memory.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import UsageError
from curation.reasons import Reason

STAGE_DIR = "_stage"
TABLES = ("decisions", "clean", "synthetic", "duplicates")
#: Rows per streamed batch: small enough that tables holding image bytes stay light.
BATCH_ROWS = 64


@dataclass
class Removal:
    """An image removed after scoring, and the image it duplicates."""

    dup_of: str
    similarity: float
    kind: str  # "near" | "previous-round"


@dataclass
class FinalizeResult:
    """Counts of the finalized run (what the manifest records)."""

    reasons: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    indexed_images: int = 0


def parquet_files(folder: Path) -> list[Path]:
    """The Parquet shards of a table folder, in name order (empty when it does not exist)."""
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def iter_batches(folder: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream every record batch of a table folder."""
    for path in parquet_files(folder):
        yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(
            batch_size=BATCH_ROWS, columns=columns
        )


def table_schema(folder: Path) -> pa.Schema | None:
    """Schema of the first shard of a table folder, or None when it has no shard."""
    files = parquet_files(folder)
    return pq.read_schema(files[0]) if files else None


def load_images(stage: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Keys, embeddings (N x D float32), sha256s, kept-text counts and best ITM of scored images."""
    keys: list[str] = []
    shas: list[str] = []
    kept: list[np.ndarray] = []
    best: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for batch in iter_batches(stage / "images"):
        keys.extend(batch.column("key").to_pylist())
        shas.extend(batch.column("sha256").to_pylist())
        kept.append(batch.column("kept_texts").to_numpy(zero_copy_only=False))
        best.append(batch.column("best_itm").to_numpy(zero_copy_only=False))
        emb = batch.column("embedding")
        flat = emb.values.to_numpy(zero_copy_only=False).astype(np.float32)
        vectors.append(flat.reshape(len(batch), -1) if len(batch) else flat.reshape(0, 0))
    if not keys:
        return [], np.zeros((0, 0), np.float32), [], np.zeros(0, np.int32), np.zeros(0, np.float32)
    return keys, np.vstack(vectors), shas, np.concatenate(kept), np.concatenate(best)


def find_removals(
    keys: list[str],
    embeddings: np.ndarray,
    kept_texts: np.ndarray,
    best_itm: np.ndarray,
    *,
    near_threshold: float,
    dedup_against: str | None,
) -> dict[str, Removal]:
    """Images that duplicate a previous round's image or another image of this run."""
    from curation.dedup.index_store import load_index
    from curation.dedup.keep import NearCandidate
    from curation.dedup.near import find_near_duplicates, query_previous

    removed: dict[str, Removal] = {}
    if not keys:
        return removed
    if dedup_against and (previous := load_index(dedup_against)).index.ntotal:
        if previous.index.d != embeddings.shape[1]:
            raise UsageError(
                f"{dedup_against}: the previous index holds {previous.index.d}-d embeddings, this "
                f"run's filter gives {embeddings.shape[1]}-d; dedup against an index of the same filter"
            )
        for row, prev_id, similarity in query_previous(previous.index, embeddings, near_threshold):
            removed[keys[row]] = Removal(
                previous.key_of(prev_id), float(similarity), "previous-round"
            )
    remaining = [i for i, key in enumerate(keys) if key not in removed]
    if len(remaining) > 1:
        candidates = [
            NearCandidate(keys[i], int(kept_texts[i]), float(best_itm[i])) for i in remaining
        ]
        for dup in find_near_duplicates(
            [keys[i] for i in remaining],
            embeddings[remaining],
            candidates,
            threshold=near_threshold,
        ):
            removed[dup.key] = Removal(dup.dup_of, float(dup.similarity), "near")
    return removed


def _rewrite(
    src: Path,
    dst: Path,
    transform: Callable[[pa.RecordBatch], pa.RecordBatch | None],
) -> int:
    """Stream a table folder through ``transform`` into ``dst`` (one shard per source shard)."""
    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for index, path in enumerate(parquet_files(src)):
        source = pq.ParquetFile(path, pre_buffer=False)
        writer: pq.ParquetWriter | None = None
        target = dst / f"part-{index:05d}.parquet"
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            out = transform(batch)
            if out is None or len(out) == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(target, out.schema)
            writer.write_batch(out)
            total += len(out)
        if writer is None:
            pq.write_table(source.schema_arrow.empty_table(), target)
        else:
            writer.close()
    return total


def _mark_duplicates(batch: pa.RecordBatch, removed: dict[str, Removal]) -> pa.RecordBatch:
    """Turn kept decisions of removed images into ``duplicate`` drops with the reason's detail."""
    rows = batch.to_pylist()
    changed = False
    for row in rows:
        removal = removed.get(row["image_key"] or "")
        if removal is not None and row["decision"] == "kept":
            row["decision"] = "dropped"
            row["reason"] = Reason.DUPLICATE.value
            row["detail"] = (
                f"{removal.kind} duplicate of {removal.dup_of} (similarity {removal.similarity:.4f})"
            )
            changed = True
    return pa.RecordBatch.from_pylist(rows, schema=batch.schema) if changed else batch


def finalize_run(
    run_dir: str | Path,
    *,
    near_threshold: float,
    dedup_against: str | None = None,
    run_id: str = "",
) -> FinalizeResult:
    """Write the final tables and index of ``run_dir`` from its staged tables."""
    from curation.dedup.index_store import write_index

    run = Path(run_dir)
    stage = run / STAGE_DIR
    keys, embeddings, shas, kept_texts, best_itm = load_images(stage)
    removed = find_removals(
        keys,
        embeddings,
        kept_texts,
        best_itm,
        near_threshold=near_threshold,
        dedup_against=dedup_against,
    )
    result = FinalizeResult()
    staging = run / "_final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    reasons: Counter[str] = Counter()
    decisions: Counter[str] = Counter()

    def decisions_step(batch: pa.RecordBatch) -> pa.RecordBatch:
        out = _mark_duplicates(batch, removed) if removed else batch
        reasons.update(out.column("reason").to_pylist())
        decisions.update(out.column("decision").to_pylist())
        return out

    def keep_images(column: str) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
        dropped = pa.array(sorted(removed), pa.string())

        def step(batch: pa.RecordBatch) -> pa.RecordBatch:
            if not removed:
                return batch
            mask = pc.invert(pc.is_in(batch.column(column), value_set=dropped))
            return batch.filter(mask)

        return step

    result.rows["decisions"] = _rewrite(stage / "decisions", staging / "decisions", decisions_step)
    result.rows["clean"] = _rewrite(stage / "clean", staging / "clean", keep_images("image_key"))
    result.rows["synthetic"] = _rewrite(
        stage / "synthetic", staging / "synthetic", keep_images("key")
    )
    dup_counts: Counter[str] = Counter()

    def copy_duplicates(batch: pa.RecordBatch) -> pa.RecordBatch:
        dup_counts.update(batch.column("kind").to_pylist())
        return batch

    result.rows["duplicates"] = _rewrite(
        stage / "duplicates", staging / "duplicates", copy_duplicates
    )
    if removed:
        from curation.schemas import DUPLICATES_SCHEMA

        extra = [
            {"key": key, "dup_of": r.dup_of, "kind": r.kind, "similarity": r.similarity}
            for key, r in sorted(removed.items())
        ]
        pq.write_table(
            pa.Table.from_pylist(extra, schema=DUPLICATES_SCHEMA),
            staging
            / "duplicates"
            / f"part-{len(parquet_files(staging / 'duplicates')):05d}.parquet",
        )
        dup_counts.update(r.kind for r in removed.values())
        result.rows["duplicates"] += len(extra)
    survivors = [i for i, key in enumerate(keys) if key not in removed and kept_texts[i] > 0]
    write_index(
        staging / "index",
        [keys[i] for i in survivors],
        embeddings[survivors]
        if survivors
        else np.zeros((0, max(embeddings.shape[1], 1)), np.float32),
        sha256=[shas[i] for i in survivors],
        run_id=run_id,
        previous=dedup_against,
        threshold=near_threshold,
    )
    result.indexed_images = len(survivors)
    for name in (*TABLES, "index"):
        target = run / name
        shutil.rmtree(target, ignore_errors=True)
        (staging / name).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    result.reasons = {r.value: reasons.get(r.value, 0) for r in Reason}
    result.decisions = dict(decisions)
    result.duplicates = dict(dup_counts)
    return result


def summarize(result: FinalizeResult) -> dict[str, Any]:
    """The counts section of the manifest."""
    return {
        "reasons": result.reasons,
        "decisions": result.decisions,
        "rows": result.rows,
        "duplicates": result.duplicates,
        "indexed_images": result.indexed_images,
    }
