"""Writing a table as numbered Parquet shards, each one appearing atomically.

A shard is written under a temporary name and renamed when complete, so a reader (or a
resumed run) never sees a half-written ``part-NNNNN.parquet``. Usable by any stage, with or
without Beam; works on local folders and on ``pyarrow.fs`` URLs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.filesystems import filesystem_for, join


class ParquetShardWriter:
    """Buffer rows and write them as ``{prefix}-00000.parquet``, ``{prefix}-00001.parquet``, ...

    ``start`` numbers the first shard (a resumed writer continues after the last one). Use
    as a context manager or call :meth:`close` to write the last, partial shard.
    """

    def __init__(
        self,
        folder: str,
        schema: pa.Schema,
        rows_per_shard: int = 10_000,
        *,
        prefix: str = "part",
        start: int = 0,
    ) -> None:
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.folder = str(folder)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.paths: list[str] = []  # shards written so far, in order
        self._next = start
        self._buffer: list[Mapping[str, Any]] = []
        self._filesystem, inner = filesystem_for(self.folder)
        self._filesystem.create_dir(inner, recursive=True)

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add rows; every full shard is written out at once."""
        self._buffer.extend(rows)
        while len(self._buffer) >= self.rows_per_shard:
            chunk = self._buffer[: self.rows_per_shard]
            self._buffer = self._buffer[self.rows_per_shard :]
            self._flush(chunk)

    def close(self) -> list[str]:
        """Write the remaining rows (if any) and return every shard path written."""
        if self._buffer:
            chunk, self._buffer = self._buffer, []
            self._flush(chunk)
        return self.paths

    def __enter__(self) -> ParquetShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()

    def _flush(self, rows: Sequence[Mapping[str, Any]]) -> None:
        table = pa.Table.from_pylist(list(rows), schema=self.schema)
        name = f"{self.prefix}-{self._next:05d}.parquet"
        final = join(self.folder, name)
        temporary = join(self.folder, f".{name}.tmp")
        _, final_inner = filesystem_for(final)
        _, temporary_inner = filesystem_for(temporary)
        with self._filesystem.open_output_stream(temporary_inner) as sink:
            pq.write_table(table, sink)
        self._filesystem.move(temporary_inner, final_inner)
        self.paths.append(final)
        self._next += 1
