"""The model-output cache that makes runs resumable.

Every scored image group's captions, scores and embedding are appended to
``<run>/_cache/<fingerprint>/`` in small Parquet files written atomically (temp name, then
rename) right after the models produce them. A re-run with the same models and settings
reads them back and sends only the remaining images to the models. Captions are seeded per
key, so cached and freshly computed results are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.records import GroupScores

CACHE_DIR = "_cache"

CACHE_SCHEMA = pa.schema(
    [
        pa.field("cache_key", pa.string(), nullable=False),
        pa.field("texts", pa.list_(pa.string()), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("text_itm", pa.list_(pa.float32()), nullable=False),
        pa.field("text_itc", pa.list_(pa.float32()), nullable=False),
        pa.field("caption_itm", pa.list_(pa.float32()), nullable=False),
        pa.field("caption_itc", pa.list_(pa.float32()), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)

#: Settings that change model outputs (and so invalidate the cache).
MODEL_SETTINGS = (
    "captioner",
    "captioner_revision",
    "filter",
    "filter_revision",
    "captions_per_image",
    "first_token",
    "prompt",
    "sample",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_length",
    "min_length",
    "num_beams",
    "seed",
    "dtype",
)


def cache_key(image_key: str, sha256: str) -> str:
    """Identity of an image group in the cache: its key and its image's content."""
    return f"{image_key}|{sha256}"


def _folder_digest(path: Path) -> str:
    """A cheap digest of a local model folder: names, sizes and edges of every file."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 16))
            if stat.st_size > 1 << 17:
                handle.seek(-(1 << 16), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of the model identities and generation settings in ``settings``."""
    parts: dict[str, Any] = {name: settings.get(name) for name in MODEL_SETTINGS}
    for name in ("captioner", "filter"):
        source = Path(str(settings.get(name)))
        if source.is_dir():
            parts[f"{name}_files"] = _folder_digest(source)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cache_row(key: str, texts: list[str], scores: GroupScores) -> dict[str, Any]:
    """One cache row for an image group."""
    return {
        "cache_key": key,
        "texts": list(texts),
        "captions": list(scores.captions),
        "text_itm": [float(x) for x in scores.text_itm],
        "text_itc": [float(x) for x in scores.text_itc],
        "caption_itm": [float(x) for x in scores.caption_itm],
        "caption_itc": [float(x) for x in scores.caption_itc],
        "embedding": [float(x) for x in scores.embedding],
    }


def scores_from_row(row: Mapping[str, Any]) -> GroupScores:
    """The :class:`GroupScores` stored in a cache row."""
    return GroupScores(
        captions=list(row["captions"]),
        text_itm=list(row["text_itm"]),
        text_itc=list(row["text_itc"]),
        caption_itm=list(row["caption_itm"]),
        caption_itc=list(row["caption_itc"]),
        embedding=list(row["embedding"]),
    )


def write_cache_rows(folder: str | Path, rows: list[dict[str, Any]]) -> Path | None:
    """Append rows as one new Parquet file, atomically; returns its path (None if no rows)."""
    if not rows:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = folder / f".{name}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), tmp)
    final = folder / f"{name}.parquet"
    os.replace(tmp, final)
    return final


def cache_files(folder: str | Path) -> list[str]:
    """Finished cache files (never a half-written one)."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else []


def read_cache_file(path: str) -> Iterator[dict[str, Any]]:
    """Rows of one cache file."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def iter_cache(folder: str | Path) -> Iterable[dict[str, Any]]:
    """Every cached row of a cache folder."""
    for path in cache_files(folder):
        yield from read_cache_file(path)
