"""The model-output cache that makes runs resumable.

Every scored image group's captions, scores and embedding are kept under
``<run>/_cache/<fingerprint>/``. The fingerprint hashes the exact model identities (the hub
commit of a hub model, the SHA-256 of every file of a local folder: see
:func:`models.loading.model_identity`), every setting that changes model outputs and the
version of the decoding rules, so a re-finetuned model, another setting or a decoder that
gives other pixels never reuses old outputs.

While a run works, results are appended as small journal files (``j-*.parquet``, one per
model batch, each written atomically), so a killed run loses at most a batch. At the end of
a successful run the pipeline writes every result it used as a few large compacted shards,
``cache.json`` lists them, and the journal files are deleted: the cache never grows into
millions of tiny files. A re-run reads the listed shards and any journal files.

A cache file that cannot be read (a truncated upload, a disk error) is moved aside to
``_bad/`` with a warning, and its images are computed again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.decode import PIXEL_RULES
from curation.records import GroupScores, ImageGroup
from curation.shards import iter_batches
from curation.storage import Location

JOURNAL_PREFIX = "j-"
LISTING = "cache.json"
BAD = "_bad"

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

#: Settings that change model outputs (and so invalidate the cache), besides the models.
OUTPUT_SETTINGS = (
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


def cache_key(group: ImageGroup) -> str:
    """Identity of an image group in the cache: its key and its image's content."""
    return f"{group.key}|{group.rep.sha256}"


def fingerprint(settings: Mapping[str, Any], models: Mapping[str, Any]) -> str:
    """A short hash of the exact model identities, the output-changing settings and the
    version of the decoding rules (:data:`curation.decode.PIXEL_RULES`)."""
    parts = {name: settings.get(name) for name in OUTPUT_SETTINGS}
    parts["models"] = dict(models)
    parts["pixel_rules"] = PIXEL_RULES
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cache_row(key: str, texts: tuple[str, ...], scores: GroupScores) -> dict[str, Any]:
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
        captions=tuple(row["captions"]),
        text_itm=tuple(row["text_itm"]),
        text_itc=tuple(row["text_itc"]),
        caption_itm=tuple(row["caption_itm"]),
        caption_itc=tuple(row["caption_itc"]),
        embedding=tuple(row["embedding"]),
    )


def read_cache_file(url: str) -> Iterator[dict[str, Any]]:
    """Rows of one cache file."""
    for batch in iter_batches([url], batch_rows=1024):
        yield from batch.to_pylist()


@dataclass(frozen=True)
class ModelCache:
    """One fingerprint's cache folder."""

    folder: Location

    def files(self) -> list[Location]:
        """The compacted shards ``cache.json`` lists, then any journal files."""
        listing = self.folder / LISTING
        listed = (
            [self.folder / name for name in listing.read_json()["files"]]
            if listing.is_file()
            else []
        )
        journals = [c for c in self.folder.children() if c.name.startswith(JOURNAL_PREFIX)]
        return listed + journals

    def check(self) -> tuple[list[str], list[str]]:
        """URLs of the readable cache files, and warnings for those moved aside."""
        good: list[str] = []
        warnings: list[str] = []
        for item in self.files():
            try:
                with item.open("rb") as handle:
                    schema = pq.ParquetFile(handle).schema_arrow
                if not set(CACHE_SCHEMA.names) <= set(schema.names):
                    raise ValueError("not a cache file (columns differ)")
            except (OSError, ValueError, pa.ArrowException) as err:
                target = self.folder / BAD / item.name
                try:
                    target.write_bytes(item.read_bytes())
                    item.remove()
                except OSError:
                    pass
                warnings.append(
                    f"cache file {item.url} is unreadable ({err}); moved to {target.url}, "
                    "its images are computed again"
                )
                continue
            good.append(item.url)
        return good, warnings

    def journal(self, rows: list[dict[str, Any]]) -> None:
        """Append rows as one new journal file (atomic)."""
        from curation.shards import write_shard

        if rows:
            write_shard(
                self.folder, rows, CACHE_SCHEMA, name=f"{JOURNAL_PREFIX}{uuid.uuid4().hex}.parquet"
            )

    def commit(self, compacted: list[str]) -> None:
        """List the compacted shards of a finished run and delete everything else."""
        names = sorted(Location(url).name for url in compacted)
        (self.folder / LISTING).write_json({"files": names})
        keep = set(names) | {LISTING, BAD}
        for child in self.folder.children():
            if child.name not in keep:
                child.remove()
