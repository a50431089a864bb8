"""The index folder that feeds the next round's dedup: kept images' embeddings with stable ids.

A folder (local or object storage) holds

- ``<generation>.faiss``: below ``IVF_MIN_VECTORS`` vectors an exact ``IndexIDMap2`` over
  ``IndexFlatIP`` (``index.reconstruct(id)`` returns a stored vector); from there on the
  compressed ``IVF{nlist}_HNSW32,SQ8`` of :mod:`curation.dedup.compressed_index`, ids in
  its inverted lists, ``nprobe`` stored in the file. Ids are int64 and stable across
  rounds. Plain ``faiss.read_index`` reads either; the compressed one can be
  memory-mapped (:func:`open_index`).
- ``<generation>.ids.parquet``: id -> key, sha256, run id
  (:data:`curation.schemas.INDEX_IDS_SCHEMA`), in row groups of ``IDS_ROW_GROUP`` ids, so a
  worker reads only the groups it needs (:func:`keys_for_ids`).
- ``index.json``: format, the two file names (``files``), dimension, metric, count, vectors
  this round added, max id, index layout, dedup threshold, runs. It is written after the
  files it names, so they are complete; a run writes it when it commits
  (:mod:`curation.run_folder`).

Folders of earlier versions (no ``files`` in ``index.json``: ``index.faiss`` and
``ids.parquet``; an ``IndexIDMap2`` over a flat index or an ``IndexIVFFlat``) are read and
extended as they are.

Extending a previous round keeps its vectors and ids; new ids continue after its max id.
An inverted-file index is extended in place (its trained cells and codec are kept); a flat
one is rebuilt, as the compressed index once the total reaches ``IVF_MIN_VECTORS``.

What runs where: :func:`write_index` and :func:`load_index` once (the launcher or one
worker); per shard, :func:`open_index` (memory-mapped, shared by a worker's processes)
with :func:`curation.dedup.near.query_previous`, then :func:`keys_for_ids` for the matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
from curation.storage import Location

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

    folder: Location
    index: Any  # faiss.IndexIDMap2 or faiss.IndexIVF
    ids: pa.Table  # INDEX_IDS_SCHEMA rows
    info: dict[str, Any]

    @property
    def max_id(self) -> int:
        """The largest stored id, -1 when empty."""
        return int(self.info["max_id"])


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


def write_index(
    folder: str | Location,
    keys: Sequence[str],
    embeddings: np.ndarray,
    *,
    dimension: int | None = None,
    sha256: Sequence[str] | None = None,
    run_id: str | None = None,
    previous: PreviousIndex | None = None,
    threshold: float | None = None,
    generation: str = "index",
    point: bool = True,
) -> dict[str, Any]:
    """Write (or extend ``previous`` into) an index of ``keys`` and their embeddings.

    ``embeddings`` are L2-normalised float32 rows in the order of ``keys`` (``dimension``
    gives the size when there are none); ``sha256``, if given, is stored beside each key;
    ``threshold`` is the near-duplicate similarity the index is meant to be queried with
    (kept from ``previous`` when not given). The index and id files are named after
    ``generation``; with ``point``, ``index.json`` is written last and names them. Returns
    ``index.json``'s content.
    """
    dim = previous.index.d if previous is not None else dimension
    if dim is None:
        dim = embeddings.shape[1] if embeddings.ndim == 2 and embeddings.shape[0] else None
    if dim is None:
        raise ValueError("an empty index needs its dimension")
    x = as_normalised(embeddings.reshape(-1, dim) if embeddings.size == 0 else embeddings)
    n = x.shape[0]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} embeddings")
    if sha256 is not None and len(sha256) != n:
        raise ValueError(f"{len(sha256)} sha256 values for {n} embeddings")
    if n and x.shape[1] != dim:
        raise ValueError(f"embeddings have dimension {x.shape[1]}, the previous index {dim}")
    first_id = previous.max_id + 1 if previous is not None else 0
    new_ids = np.arange(first_id, first_id + n, dtype=np.int64)

    if previous is not None and _is_ivf(previous.index):
        index = filled_index(previous.index, previous)
        _add(index, x, new_ids)
    else:
        old_ids, old_vectors = (
            _stored_vectors(previous)
            if previous is not None
            else (np.empty(0, np.int64), np.empty((0, dim), np.float32))
        )
        all_vectors = np.concatenate([old_vectors, x.reshape(-1, dim)])
        all_ids = np.concatenate([old_ids, new_ids])
        index = _new_index(all_vectors)
        _add(index, all_vectors, all_ids)

    rows = id_rows(new_ids, keys, sha256, run_id)
    return save_index(
        folder,
        index,
        rows,
        previous=previous,
        run_id=run_id,
        threshold=threshold,
        generation=generation,
        point=point,
    )


Texts = Sequence[str | None] | pa.ChunkedArray


def id_rows(ids: np.ndarray, keys: Texts, sha256: Texts | None, run_id: str | None) -> pa.Table:
    """Rows of the id table for new entries (columns given as sequences or Arrow columns)."""
    n = len(keys)
    return pa.Table.from_pydict(
        {
            "id": np.asarray(ids, dtype=np.int64),
            "key": keys,
            "sha256": sha256 if sha256 is not None else pa.nulls(n, pa.string()),
            "run_id": pc.fill_null(pa.nulls(n, pa.string()), run_id),
        },
        schema=INDEX_IDS_SCHEMA,
    )


#: the id-table columns a part file carries beside the codes (the run id is added once)
PART_ROWS_SCHEMA = pa.schema([INDEX_IDS_SCHEMA.field(n) for n in ("id", "key", "sha256")])


def write_codes_part(
    location: Location, ids: np.ndarray, codes: np.ndarray, keys: Sequence[str],
    sha256: Sequence[str | None],
) -> None:  # fmt: skip
    """One shard of a compressed index as a Parquet file: ids, keys, sha256 and each
    vector's code (fixed-size binary), for :func:`read_codes_part` on the merging worker."""
    n, size = codes.shape
    code = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), n, [None, pa.py_buffer(np.ascontiguousarray(codes).tobytes())]
    )
    rows = pa.Table.from_pydict(
        {"id": np.asarray(ids, dtype=np.int64), "key": keys, "sha256": sha256},
        schema=PART_ROWS_SCHEMA,
    )
    table = rows.append_column("code", code)
    location.write_with(lambda handle: pq.write_table(table, handle))


def read_codes_part(location: Location) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """``(ids, codes, rows)`` of a part written by :func:`write_codes_part`; ``rows`` has
    ``id``, ``key`` and ``sha256``."""
    with location.open() as handle:
        table = pq.read_table(handle)
    code = table["code"].combine_chunks()
    size = code.type.byte_width
    codes = np.frombuffer(
        code.buffers()[1], dtype=np.uint8, count=len(code) * size, offset=code.offset * size
    ).reshape(len(code), size)
    return (
        table["id"].to_numpy(),
        codes,
        table.select(PART_ROWS_SCHEMA.names).cast(PART_ROWS_SCHEMA),
    )


def save_index(
    folder: str | Location,
    index: Any,
    rows: pa.Table,
    *,
    previous: PreviousIndex | None,
    run_id: str | None,
    threshold: float | None,
    generation: str,
    point: bool,
) -> dict[str, Any]:
    """Write a filled index and its new id rows (after ``previous``'s) as ``generation``'s
    files; with ``point`` also ``index.json``. Returns ``index.json``'s content (once)."""
    import faiss

    table = pa.concat_tables([previous.ids, rows]) if previous is not None else rows
    runs = list(previous.info.get("runs", [])) if previous is not None else []
    if run_id is not None:
        runs.append(run_id)
    files = {"index": f"{generation}.faiss", "ids": f"{generation}.ids.parquet"}
    info = {
        "format": FORMAT,
        "files": files,
        "dimension": int(index.d),
        "metric": "inner_product",
        "count": int(index.ntotal),
        "added": rows.num_rows,
        "max_id": int(table["id"].to_numpy().max()) if table.num_rows else -1,
        **describe(index),
        "threshold": threshold
        if threshold is not None
        else (previous.info.get("threshold") if previous else None),
        "threshold_rule": "a new image duplicates a stored one when their cosine similarity is above threshold",
        "runs": runs,
    }
    out = Location(folder)
    (out / files["index"]).write_bytes(faiss.serialize_index(index).tobytes())
    (out / files["ids"]).write_with(
        lambda handle: pq.write_table(table, handle, row_group_size=IDS_ROW_GROUP)
    )
    if point:
        (out / INFO_FILE).write_json(info)
    return info


def trained_index(previous: PreviousIndex | None, sample: np.ndarray, total: int) -> Any:
    """The empty compressed index vectors are encoded with (once): the previous round's
    structure when it has one, else trained on ``sample`` (unit rows, random over the
    vectors)."""
    import faiss

    if previous is not None and _is_ivf(previous.index):
        index = faiss.clone_index(previous.index)
        index.reset()
        return index
    return train_index(sample, total, CODEC, TRAIN_SEED)


def filled_index(trained: Any, previous: PreviousIndex | None) -> Any:
    """``trained`` holding ``previous``'s vectors under their ids, for new codes to be
    added to (once, on the worker that merges)."""
    import faiss

    if previous is None:
        return trained
    if _is_ivf(previous.index):
        return faiss.clone_index(previous.index)
    ids, vectors = _stored_vectors(previous)
    _add(trained, vectors, ids)
    return trained


def _check_folder(folder: str | Location) -> tuple[Location, dict[str, Any], dict[str, str]]:
    """The folder, its ``index.json`` and its file names; ``InputError`` if it is not an
    index folder."""
    path = Location(folder)
    if not path.is_dir():
        raise InputError(f"index folder {path.url!r} does not exist or is not a folder")
    if not (path / INFO_FILE).is_file():
        raise InputError(f"{path.url!r} is not an index folder: missing {INFO_FILE}")
    try:
        info = (path / INFO_FILE).read_json()
    except (OSError, ValueError) as exc:
        raise InputError(f"index folder {path.url!r} is unreadable: {exc}") from exc
    if not isinstance(info, dict):
        raise InputError(f"{(path / INFO_FILE).url!r} is not a JSON object")
    if not isinstance(info.get("format", 1), int) or info.get("format", 1) > FORMAT:
        raise InputError(
            f"{(path / INFO_FILE).url!r} describes index format {info.get('format')!r}; "
            f"this version reads formats up to {FORMAT}"
        )
    files = info.get("files", {"index": INDEX_FILE, "ids": IDS_FILE})
    missing = [name for name in files.values() if not (path / name).is_file()]
    if missing:
        raise InputError(f"{path.url!r} is not an index folder: missing {', '.join(missing)}")
    return path, info, files


def _read_faiss(location: Location, flags: int = 0) -> Any:
    import faiss

    try:
        index = faiss.read_index(location.local_path(), flags)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"index folder {location.parent.url!r} is unreadable: {exc}") from exc
    if not (isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF))):
        raise InputError(f"{location.url!r} is neither an IndexIDMap2 nor an IndexIVF")
    return index


def load_index(folder: str | Location) -> PreviousIndex:
    """Load an index folder written by :func:`write_index`; ``InputError`` if it is not one."""
    path, info, files = _check_folder(folder)
    index = _read_faiss(path / files["index"])
    try:
        with (path / files["ids"]).open("rb") as handle:
            ids = pq.read_table(handle)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"index folder {path.url!r} is unreadable: {exc}") from exc
    absent = [name for name in INDEX_IDS_SCHEMA.names if name not in ids.column_names]
    if absent:
        raise InputError(f"the ids of {path.url!r} lack column(s) {', '.join(absent)}")
    ids = ids.select(INDEX_IDS_SCHEMA.names).cast(INDEX_IDS_SCHEMA)
    if ids.num_rows != index.ntotal or info.get("count") != index.ntotal:
        raise InputError(
            f"index folder {path.url!r} is inconsistent: {index.ntotal} vectors, "
            f"{ids.num_rows} ids, count {info.get('count')}"
        )
    return PreviousIndex(folder=path, index=index, ids=ids, info=info)


def read_info(folder: str | Location) -> dict[str, Any]:
    """An index folder's ``index.json`` (count, max id, dimension, layout), checked, without
    reading the index itself."""
    return _check_folder(folder)[1]


def info_is_compressed(info: dict[str, Any]) -> bool:
    """Whether the index ``info`` describes is an inverted file (extended in place)."""
    return "IVF" in str(info.get("layout", ""))


def open_index(folder: str | Location) -> Any:
    """The FAISS index of a folder for querying only (per worker): inverted lists are
    memory-mapped, not read, so the page cache holds them once for all processes."""
    import faiss

    path, _, files = _check_folder(folder)
    return _read_faiss(path / files["index"], faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def keys_for_ids(folder: str | Location, ids: Iterable[int]) -> dict[int, str]:
    """``{id: key}`` for ``ids`` (per shard), reading only the row groups of the id table
    whose id range holds one of them."""
    wanted = np.unique(np.fromiter(ids, dtype=np.int64))
    if wanted.size == 0:
        return {}
    path, _, files = _check_folder(folder)
    found: dict[int, str] = {}
    with (path / files["ids"]).open("rb") as handle:
        source = pq.ParquetFile(handle)
        column = source.schema_arrow.get_field_index("id")
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
