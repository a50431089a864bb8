"""The index folder that feeds the next round's dedup: kept images' embeddings with stable ids.

A folder (local or object storage) holds

- ``<generation>.faiss``: ``IndexIDMap2`` over ``IndexFlatIP`` (fewer than
  ``IVF_MIN_VECTORS`` vectors) or ``IndexIVFFlat`` (inner product, ``nlist`` about
  ``n / IVF_CELL_SIZE``, ``nprobe`` stored in the file); ids are int64 and stable across
  rounds, and ``index.reconstruct(id)`` returns a stored vector. Plain ``faiss.read_index``
  reads it.
- ``<generation>.ids.parquet``: id -> key, sha256, run id
  (:data:`curation.schemas.INDEX_IDS_SCHEMA`).
- ``index.json``: the two file names (``files``), dimension, metric, count, vectors this
  round added, max id, index layout, dedup threshold, runs. It is written last: the files
  it names are complete.

Extending a previous round keeps its vectors and ids; new ids continue after its max id.
An IVF index is extended in place (its trained cells are kept); a flat one is rebuilt,
as IVF once the total reaches ``IVF_MIN_VECTORS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.near import as_normalised
from curation.errors import InputError
from curation.schemas import INDEX_IDS_SCHEMA
from curation.storage import Location

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
IVF_MIN_VECTORS = 100_000
IVF_CELL_SIZE = 1024
IVF_NPROBE = 8
IVF_TRAIN_POINTS_PER_CELL = 40
TRAIN_SEED = 1234


@dataclass
class PreviousIndex:
    """An index folder loaded for querying: the FAISS index and its id -> key table."""

    folder: Location
    index: Any  # faiss.IndexIDMap2
    ids: pa.Table  # INDEX_IDS_SCHEMA rows
    info: dict[str, Any]
    keys_by_id: dict[int, str] = field(repr=False)

    @property
    def max_id(self) -> int:
        """The largest stored id, -1 when empty."""
        return int(self.info["max_id"])

    def key_of(self, index_id: int) -> str:
        """The key stored under ``index_id``."""
        return self.keys_by_id[int(index_id)]


def _new_index(vectors: np.ndarray) -> Any:
    """An empty, trained ``IndexIDMap2`` sized for ``vectors`` (flat below ``IVF_MIN_VECTORS``)."""
    import faiss

    n, dim = vectors.shape
    if n < IVF_MIN_VECTORS:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = int(np.clip(round(n / IVF_CELL_SIZE), 1, 65536))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True
    ivf.cp.seed = TRAIN_SEED
    ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_CELL
    sample_size = min(n, nlist * IVF_TRAIN_POINTS_PER_CELL)
    sample = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, sample_size, replace=False))
    ivf.train(vectors[sample])
    ivf.nprobe = IVF_NPROBE
    ivf.make_direct_map()
    return faiss.IndexIDMap2(ivf)


def describe(index: Any) -> dict[str, Any]:
    """Layout of a stored index: ``{"layout": "IDMap2,IVF977,Flat", "nlist": ..., "nprobe": ...}``."""
    import faiss

    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        return {
            "layout": f"IDMap2,IVF{inner.nlist},Flat",
            "nlist": inner.nlist,
            "nprobe": inner.nprobe,
        }
    return {"layout": "IDMap2,Flat", "nlist": None, "nprobe": None}


def _stored_vectors(previous: PreviousIndex) -> tuple[np.ndarray, np.ndarray]:
    """All ``(ids, vectors)`` of a previous index, in storage order."""
    import faiss

    ids = faiss.vector_to_array(previous.index.id_map).astype(np.int64)
    inner = faiss.downcast_index(previous.index.index)
    return ids, inner.reconstruct_n(0, inner.ntotal)


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
    ``generation``; with ``point``, ``index.json`` is written last and names them (a run
    publishing several things at once writes it when it commits). Returns ``index.json``'s
    content.
    """
    import faiss

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
        raise ValueError(f"embeddings have dimension {x.shape[1]}, the index {dim}")
    first_id = previous.max_id + 1 if previous is not None else 0
    new_ids = np.arange(first_id, first_id + n, dtype=np.int64)

    prev_inner = faiss.downcast_index(previous.index.index) if previous is not None else None
    if previous is not None and isinstance(prev_inner, faiss.IndexIVF):
        index = faiss.clone_index(previous.index)
        if n:
            index.add_with_ids(x, new_ids)
    else:
        old_ids, old_vectors = (
            _stored_vectors(previous)
            if previous is not None
            else (np.empty(0, np.int64), np.empty((0, dim), np.float32))
        )
        all_vectors = np.concatenate([old_vectors, x.reshape(-1, dim)])
        all_ids = np.concatenate([old_ids, new_ids])
        index = _new_index(all_vectors)
        if all_ids.size:
            index.add_with_ids(all_vectors, all_ids)

    rows = pa.Table.from_pydict(
        {
            "id": new_ids,
            "key": list(keys),
            "sha256": list(sha256) if sha256 is not None else [None] * n,
            "run_id": [run_id] * n,
        },
        schema=INDEX_IDS_SCHEMA,
    )
    table = pa.concat_tables([previous.ids, rows]) if previous is not None else rows
    runs = list(previous.info.get("runs", [])) if previous is not None else []
    if run_id is not None:
        runs.append(run_id)
    files = {"index": f"{generation}.faiss", "ids": f"{generation}.ids.parquet"}
    info = {
        "dimension": int(dim),
        "metric": "inner_product",
        "count": int(index.ntotal),
        "added": n,
        "max_id": int(table["id"].to_numpy().max()) if table.num_rows else -1,
        **describe(index),
        "threshold": threshold
        if threshold is not None
        else (previous.info.get("threshold") if previous else None),
        "threshold_rule": "a new image duplicates a stored one when their cosine similarity is above threshold",
        "runs": runs,
        "files": files,
    }
    out = Location(folder)
    (out / files["index"]).write_bytes(faiss.serialize_index(index).tobytes())
    (out / files["ids"]).write_with(lambda handle: pq.write_table(table, handle))
    if point:
        (out / INFO_FILE).write_json(info)
    return info


def load_index(folder: str | Location) -> PreviousIndex:
    """Load an index folder written by :func:`write_index`; ``InputError`` if it is not one."""
    import faiss

    path = Location(folder)
    if not path.is_dir():
        raise InputError(f"index folder {path.url!r} does not exist or is not a folder")
    if not (path / INFO_FILE).is_file():
        raise InputError(f"{path.url!r} is not an index folder: missing {INFO_FILE}")
    try:
        info = (path / INFO_FILE).read_json()
        files = info.get("files", {"index": INDEX_FILE, "ids": IDS_FILE})
        data = (path / files["index"]).read_bytes()
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        with (path / files["ids"]).open("rb") as handle:
            ids = pq.read_table(handle)
    except (OSError, ValueError, RuntimeError, KeyError, pa.ArrowException) as exc:
        raise InputError(f"index folder {path.url!r} is unreadable: {exc}") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise InputError(f"{path.url!r} does not hold an IndexIDMap2 index")
    absent = [name for name in INDEX_IDS_SCHEMA.names if name not in ids.column_names]
    if absent:
        raise InputError(f"the ids of {path.url!r} lack column(s) {', '.join(absent)}")
    ids = ids.select(INDEX_IDS_SCHEMA.names).cast(INDEX_IDS_SCHEMA)
    if ids.num_rows != index.ntotal or info.get("count") != index.ntotal:
        raise InputError(
            f"index folder {path.url!r} is inconsistent: {index.ntotal} vectors, "
            f"{ids.num_rows} ids, count {info.get('count')}"
        )
    keys_by_id = dict(zip(ids["id"].to_pylist(), ids["key"].to_pylist(), strict=True))
    return PreviousIndex(folder=path, index=index, ids=ids, info=info, keys_by_id=keys_by_id)
