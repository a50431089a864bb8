"""Parquet shards: rows written as complete files, each appearing atomically.

Used by every writer of a table (the pipeline's staged tables and cache, finalize's final
tables): a writer buffers rows and writes a shard when it holds enough rows or bytes; a
shard file appears whole or not at all (:meth:`curation.storage.Location.write_with`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.storage import Location

#: A shard is written once it holds this many rows or about this many bytes.
SHARD_ROWS = 50_000
SHARD_BYTES = 128 * 2**20
#: Rows per Parquet row group inside a shard (keeps image-bearing row groups small).
ROW_GROUP_ROWS = 256


@dataclass(frozen=True)
class Shard:
    """A written shard: where it is and how many rows it holds."""

    url: str
    rows: int


def write_shard(
    folder: Location, rows: list[dict[str, Any]], schema: pa.Schema, name: str | None = None
) -> Shard:
    """Write ``rows`` as one new shard in ``folder`` (named ``name`` or a fresh unique name)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    target = folder / (name or f"part-{uuid.uuid4().hex}.parquet")
    target.write_with(lambda handle: pq.write_table(table, handle, row_group_size=ROW_GROUP_ROWS))
    return Shard(target.url, table.num_rows)


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, bytes | str) else 8 for v in row.values())


class ShardBuffer:
    """Buffers rows of one table and hands out full batches of rows to write."""

    def __init__(self, max_rows: int = SHARD_ROWS, max_bytes: int = SHARD_BYTES) -> None:
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add a row; returns the buffered rows when the buffer is full (and empties it)."""
        self._rows.append(row)
        self._bytes += _row_bytes(row)
        if len(self._rows) >= self._max_rows or self._bytes >= self._max_bytes:
            return self.take()
        return None

    def take(self) -> list[dict[str, Any]]:
        rows, self._rows, self._bytes = self._rows, [], 0
        return rows


def iter_batches(
    urls: Iterable[str], columns: list[str] | None = None, batch_rows: int = 64
) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of shards in order."""
    for url in urls:
        location = Location(url)
        with location.open("rb") as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
            yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


def unreadable(location: Location, columns: list[str] | None = None) -> str | None:
    """Why ``location`` cannot be read as Parquet (its footer, then every page of
    ``columns``, or of all columns), or None when it reads whole."""
    with location.open("rb") as handle:
        try:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
        except (pa.ArrowException, OSError) as err:
            return f"is not readable Parquet ({_one_line(err)})"
        try:
            for _ in parquet.iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns):
                pass
        except (pa.ArrowException, OSError) as err:
            return f"cannot be read ({_one_line(err)})"
    return None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def read_rows(url: str) -> Iterator[dict[str, Any]]:
    """Every row of a shard as a dict, a row group at a time."""
    for batch in iter_batches([url], batch_rows=ROW_GROUP_ROWS):
        yield from batch.to_pylist()
