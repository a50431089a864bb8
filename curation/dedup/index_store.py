"""The index folder that feeds the next round's dedup: kept images' embeddings with stable ids.

A folder holds

- ``index.faiss``: below ``IVF_MIN_VECTORS`` vectors an exact ``IndexIDMap2`` over
  ``IndexFlatIP`` (``index.reconstruct(id)`` returns a stored vector); from there on the
  compressed ``IVF{nlist}_HNSW32,SQ8`` of :mod:`curation.dedup.compressed_index`, ids in
  its inverted lists, ``nprobe`` stored in the file. Ids are int64 and stable across
  rounds. Plain ``faiss.read_index`` reads either; the compressed one can be
  memory-mapped (:func:`open_index`).
- ``ids.parquet``: id -> key, sha256, run id (:data:`curation.schemas.INDEX_IDS_SCHEMA`),
  in row groups of ``IDS_ROW_GROUP`` ids, so a worker reads only the groups it needs
  (:func:`keys_for_ids`).
- ``index.json``: format, dimension, metric, count, max id, index layout, dedup threshold,
  runs.

Format 1 folders (no ``format`` in ``index.json``; an ``IndexIDMap2`` over a flat index or
an ``IndexIVFFlat``) are read and extended as they are.

Extending a previous round keeps its vectors and ids; new ids continue after its max id.
An inverted-file index is extended in place (its trained cells and codec are kept); a flat
one is rebuilt, as the compressed index once the total reaches ``IVF_MIN_VECTORS``.

What runs where: :func:`write_index` and :func:`load_index` once (the launcher or one
worker); per shard, :func:`open_index` (memory-mapped, shared by a worker's processes)
with :func:`curation.dedup.near.query_previous`, then :func:`keys_for_ids` for the matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.dedup.compressed_index import (
    CODEC,
    add_codes,
    encode_shard,
    train_index,
    train_size,
)
from curation.dedup.compressed_index import describe as describe_compressed
from curation.dedup.near import as_normalised
from curation.errors import InputError
from curation.schemas import INDEX_IDS_SCHEMA

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
FORMAT = 2
IVF_MIN_VECTORS = 100_000
IDS_ROW_GROUP = 65_536
ADD_ROWS = 65_536
TRAIN_SEED = 1234


@dataclass
class PreviousIndex:
    """An index folder loaded for querying: the FAISS index and its id -> key table."""

    folder: Path
    index: Any  # faiss.IndexIDMap2 or faiss.IndexIVF
    ids: pa.Table  # INDEX_IDS_SCHEMA rows
    info: dict[str, Any]

    @property
    def max_id(self) -> int:
        """The largest stored id, -1 when empty."""
        return int(self.info["max_id"])

    @cached_property
    def _sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids["id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        return ids[order], order

    def key_of(self, index_id: int) -> str:
        """The key stored under ``index_id``."""
        ids, order = self._sorted_ids
        at = int(np.searchsorted(ids, index_id))
        if at == ids.size or ids[at] != index_id:
            raise KeyError(index_id)
        return self.ids["key"][int(order[at])].as_py()


def _is_ivf(index: Any) -> bool:
    import faiss

    inner = index.index if isinstance(index, faiss.IndexIDMap2) else index
    return isinstance(faiss.downcast_index(inner), faiss.IndexIVF)


def describe(index: Any) -> dict[str, Any]:
    """Layout of a stored index: ``{"layout": ..., "nlist": ..., "nprobe": ...}``."""
    import faiss

    if not isinstance(index, faiss.IndexIDMap2):
        return describe_compressed(faiss.downcast_index(index))
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        return {
            "layout": f"IDMap2,IVF{inner.nlist},Flat",
            "nlist": inner.nlist,
            "nprobe": inner.nprobe,
        }
    return {"layout": "IDMap2,Flat", "nlist": None, "nprobe": None}


def _stored_vectors(previous: PreviousIndex) -> tuple[np.ndarray, np.ndarray]:
    """All ``(ids, vectors)`` of a previous flat index, in storage order."""
    import faiss

    ids = faiss.vector_to_array(previous.index.id_map).astype(np.int64)
    inner = faiss.downcast_index(previous.index.index)
    return ids, inner.reconstruct_n(0, inner.ntotal)


def _add(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add ``vectors`` under ``ids``, shard by shard for a compressed index."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        if ids.size:
            index.add_with_ids(vectors, ids)
        return
    for lo in range(0, ids.size, ADD_ROWS):
        add_codes(index, encode_shard(index, vectors[lo : lo + ADD_ROWS]), ids[lo : lo + ADD_ROWS])


def _new_index(vectors: np.ndarray) -> Any:
    """An empty index sized for ``vectors``: flat below ``IVF_MIN_VECTORS``, else compressed
    and trained on a sample of them."""
    import faiss

    n, dim = vectors.shape
    if n < IVF_MIN_VECTORS:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    sample = np.random.default_rng(TRAIN_SEED).choice(n, train_size(n), replace=False)
    return train_index(vectors[sample], n, CODEC, TRAIN_SEED)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_index(
    folder: str | Path,
    keys: Sequence[str],
    embeddings: np.ndarray,
    sha256: Sequence[str] | None = None,
    run_id: str | None = None,
    previous: str | Path | None = None,
    threshold: float | None = None,
) -> Path:
    """Write (or extend ``previous`` into) an index folder of ``keys`` and their embeddings.

    ``embeddings`` are L2-normalised float32 rows in the order of ``keys``; ``sha256``, if
    given, is stored beside each key; ``threshold`` is the near-duplicate similarity the
    index is meant to be queried with (kept from ``previous`` when not given). Returns the
    folder. ``folder`` may be ``previous`` itself: files are replaced atomically, ``index.json``
    last.
    """
    import faiss

    x = as_normalised(embeddings)
    n = x.shape[0]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} embeddings")
    if sha256 is not None and len(sha256) != n:
        raise ValueError(f"{len(sha256)} sha256 values for {n} embeddings")
    prev = load_index(previous) if previous is not None else None
    if prev is not None and n and prev.index.d != x.shape[1]:
        raise ValueError(
            f"embeddings have dimension {x.shape[1]}, the previous index {prev.index.d}"
        )
    dim = prev.index.d if prev is not None else x.shape[1]
    first_id = prev.max_id + 1 if prev is not None else 0
    new_ids = np.arange(first_id, first_id + n, dtype=np.int64)

    if prev is not None and _is_ivf(prev.index):
        index = prev.index
        _add(index, x, new_ids)
    else:
        old_ids, old_vectors = (
            _stored_vectors(prev)
            if prev is not None
            else (np.empty(0, np.int64), np.empty((0, dim), np.float32))
        )
        all_vectors = np.concatenate([old_vectors, x.reshape(-1, dim)])
        all_ids = np.concatenate([old_ids, new_ids])
        index = _new_index(all_vectors)
        _add(index, all_vectors, all_ids)

    rows = pa.Table.from_pydict(
        {
            "id": new_ids,
            "key": list(keys),
            "sha256": list(sha256) if sha256 is not None else [None] * n,
            "run_id": [run_id] * n,
        },
        schema=INDEX_IDS_SCHEMA,
    )
    table = pa.concat_tables([prev.ids, rows]) if prev is not None else rows
    runs = list(prev.info.get("runs", [])) if prev is not None else []
    if run_id is not None:
        runs.append(run_id)
    info = {
        "format": FORMAT,
        "dimension": int(dim),
        "metric": "inner_product",
        "count": int(index.ntotal),
        "max_id": int(table["id"].to_numpy().max()) if table.num_rows else -1,
        **describe(index),
        "threshold": threshold
        if threshold is not None
        else (prev.info.get("threshold") if prev else None),
        "threshold_rule": "a new image duplicates a stored one when their cosine similarity is above threshold",
        "runs": runs,
    }

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / INDEX_FILE, lambda p: faiss.write_index(index, str(p)))
    _atomic_write(out / IDS_FILE, lambda p: pq.write_table(table, p, row_group_size=IDS_ROW_GROUP))
    _atomic_write(out / INFO_FILE, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return out


def _check_folder(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder's path and ``index.json``; ``InputError`` if it is not an index folder."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"index folder {str(path)!r} does not exist or is not a folder")
    missing = [name for name in (INDEX_FILE, IDS_FILE, INFO_FILE) if not (path / name).is_file()]
    if missing:
        raise InputError(f"{str(path)!r} is not an index folder: missing {', '.join(missing)}")
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"index folder {str(path)!r} is unreadable: {exc}") from exc
    if not isinstance(info, dict):
        raise InputError(f"{str(path / INFO_FILE)!r} is not a JSON object")
    if not isinstance(info.get("format", 1), int) or info.get("format", 1) > FORMAT:
        raise InputError(
            f"{str(path / INFO_FILE)!r} describes index format {info.get('format')!r}; "
            f"this version reads formats up to {FORMAT}"
        )
    return path, info


def _read_faiss(path: Path, flags: int = 0) -> Any:
    import faiss

    try:
        index = faiss.read_index(str(path / INDEX_FILE), flags)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"index folder {str(path)!r} is unreadable: {exc}") from exc
    if not (isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF))):
        raise InputError(f"{str(path / INDEX_FILE)!r} is neither an IndexIDMap2 nor an IndexIVF")
    return index


def load_index(folder: str | Path) -> PreviousIndex:
    """Load an index folder written by :func:`write_index`; ``InputError`` if it is not one."""
    path, info = _check_folder(folder)
    index = _read_faiss(path)
    try:
        ids = pq.read_table(path / IDS_FILE)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"index folder {str(path)!r} is unreadable: {exc}") from exc
    absent = [name for name in INDEX_IDS_SCHEMA.names if name not in ids.column_names]
    if absent:
        raise InputError(f"{str(path / IDS_FILE)!r} lacks column(s) {', '.join(absent)}")
    ids = ids.select(INDEX_IDS_SCHEMA.names).cast(INDEX_IDS_SCHEMA)
    if ids.num_rows != index.ntotal or info.get("count") != index.ntotal:
        raise InputError(
            f"index folder {str(path)!r} is inconsistent: {index.ntotal} vectors, "
            f"{ids.num_rows} ids, count {info.get('count')}"
        )
    return PreviousIndex(folder=path, index=index, ids=ids, info=info)


def open_index(folder: str | Path) -> Any:
    """The FAISS index of a folder for querying only (per worker): inverted lists are
    memory-mapped, not read, so the page cache holds them once for all processes."""
    import faiss

    path, _ = _check_folder(folder)
    return _read_faiss(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def keys_for_ids(folder: str | Path, ids: Iterable[int]) -> dict[int, str]:
    """``{id: key}`` for ``ids`` (per shard), reading only the row groups of ``ids.parquet``
    whose id range holds one of them."""
    wanted = np.unique(np.fromiter(ids, dtype=np.int64))
    if wanted.size == 0:
        return {}
    path, _ = _check_folder(folder)
    source = pq.ParquetFile(path / IDS_FILE)
    column = source.schema_arrow.get_field_index("id")
    found: dict[int, str] = {}
    for group in range(source.num_row_groups):
        stats = source.metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max:
            lo, hi = np.searchsorted(wanted, [stats.min, stats.max + 1])
            if lo == hi:
                continue
        table = source.read_row_group(group, columns=["id", "key"])
        hit = table.filter(pc.is_in(table["id"], value_set=pa.array(wanted)))
        found.update(zip(hit["id"].to_pylist(), hit["key"].to_pylist(), strict=True))
    return found
