"""Writing tables through the storage layer, and the listing of what was written.

Each bundle buffers its rows and writes complete shards (:mod:`curation.shards`) under
unique names; it outputs a :class:`~curation.shards.Shard` for each. Only shards output by
bundles that committed are listed at the end, so shards of a retried bundle's failed
attempt are never read (they are removed when the run folder is repaired).
"""

from __future__ import annotations

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

    def __init__(self, table: str, folder: str, schema: pa.Schema) -> None:
        self._table = table
        self._folder = folder
        self._schema = schema

    def setup(self) -> None:
        self._location = Location(self._folder)

    def start_bundle(self) -> None:
        self._buffer = ShardBuffer()

    def process(self, row: dict[str, Any]) -> Iterator[tuple[str, Shard]]:
        full = self._buffer.add(row)
        if full:
            yield self._table, write_shard(self._location, full, self._schema)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        rows = self._buffer.take()
        if rows:
            shard = write_shard(self._location, rows, self._schema)
            yield WindowedValue(
                (self._table, shard), GlobalWindow().max_timestamp(), [GlobalWindow()]
            )


class WriteTable(beam.PTransform):
    """Rows -> shards of one table in ``folder``; the output is the written shards."""

    def __init__(self, table: str, folder: str, schema: pa.Schema) -> None:
        super().__init__()
        self._fn = WriteShardsFn(table, folder, schema)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | beam.ParDo(self._fn)


def listing(shards: list[tuple[str, Shard]]) -> dict[str, list[dict[str, Any]]]:
    """Written shards grouped by table, in a stable order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, shard in sorted(shards, key=lambda s: (s[0], s[1].url)):
        out.setdefault(table, []).append({"url": shard.url, "rows": shard.rows})
    return out


class WriteListing(beam.PTransform):
    """Collects every written shard and writes the listing as JSON to ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self._target = target

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        target = self._target

        def write(items: list[tuple[str, Shard]]) -> str:
            Location(target).write_json(listing(items))
            return target

        return shards | "AllShards" >> beam.combiners.ToList() | "WriteListing" >> beam.Map(write)
