"""Writing tables through the storage layer, and the listing of what was written.

Each bundle buffers its rows and writes complete shards (:mod:`curation.shards`) under
unique names; it outputs a :class:`~curation.shards.Shard` for each. Only shards output by
bundles that committed are listed at the end, so shards of a retried bundle's failed
attempt are never read (they are removed when the run folder is repaired).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from curation.shards import Shard, ShardBuffer, write_shard
from curation.storage import Location


class WriteShardsFn(beam.DoFn):
    """Writes rows of one table as Parquet shards in a folder; outputs ``(table, Shard)``."""

    def __init__(self, table: str, folder: str, schema: pa.Schema, prefix: str = "part") -> None:
        self._table = table
        self._folder = folder
        self._schema = schema
        self._prefix = prefix

    def setup(self) -> None:
        self._location = Location(self._folder)

    def start_bundle(self) -> None:
        self._buffer = ShardBuffer()

    def process(self, row: dict[str, Any]) -> Iterator[tuple[str, Shard]]:
        full = self._buffer.add(row)
        if full:
            yield self._table, write_shard(self._location, full, self._schema, self._name())

    def _name(self) -> str:
        return f"{self._prefix}-{uuid.uuid4().hex}.parquet"

    def finish_bundle(self) -> Iterator[WindowedValue]:
        rows = self._buffer.take()
        if rows:
            shard = write_shard(self._location, rows, self._schema, self._name())
            yield WindowedValue(
                (self._table, shard), GlobalWindow().max_timestamp(), [GlobalWindow()]
            )


class WriteTable(beam.PTransform):
    """Rows -> shards of one table in ``folder``; the output is the written shards."""

    def __init__(self, table: str, folder: str, schema: pa.Schema, prefix: str = "part") -> None:
        super().__init__()
        self._fn = WriteShardsFn(table, folder, schema, prefix)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | beam.ParDo(self._fn)


def listing(entries: list[tuple[str, Any]]) -> dict[str, Any]:
    """A listing from tagged entries: ``("shard", (table, Shard))`` grouped by table in a
    stable order, and any other ``(name, value)`` as is."""
    out: dict[str, Any] = {"tables": {}}
    for name, value in entries:
        if name == "shard":
            table, shard = value
            out["tables"].setdefault(table, []).append({"url": shard.url, "rows": shard.rows})
        else:
            out[name] = value
    for shards in out["tables"].values():
        shards.sort(key=lambda s: s["url"])
    return out


class WriteListing(beam.PTransform):
    """Collects tagged entries (written shards and other results) and writes their
    :func:`listing` as JSON to ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self._target = target

    def expand(self, entries: beam.PCollection) -> beam.PCollection:
        target = self._target

        def write(items: list[tuple[str, Any]]) -> str:
            Location(target).write_json(listing(items))
            return target

        return entries | "AllEntries" >> beam.combiners.ToList() | "WriteListing" >> beam.Map(write)
