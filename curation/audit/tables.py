"""The one way the audit side reads a run folder: its tables, its manifest, its report file.

Every table is opened as a ``pyarrow.dataset`` (streamed batch by batch, columns
projected), so aggregates never hold a whole table as Python objects. Paths may be local
folders or URLs that ``pyarrow.fs`` understands (``gs://``, ``s3://``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs as pafs

from curation.errors import UsageError
from curation.filesystems import filesystem_for, join

MANIFEST = "manifest.json"
#: Rows per streamed batch of the narrow (no image bytes) audit scans.
SCAN_ROWS = 65_536
#: Batches read ahead of the one being processed (bounds memory on wide scans).
READAHEAD = 2


class RunTables:
    """A finished run folder, read-only except for the report files written into it."""

    def __init__(self, run_dir: str) -> None:
        self.path = str(run_dir).rstrip("/") or "/"
        self._fs, self._inner = filesystem_for(self.path)
        if self._kind(self._inner) != pafs.FileType.Directory:
            raise UsageError(f"{self.path}: run folder not found")
        if self._kind(self._path_of("decisions")) != pafs.FileType.Directory:
            raise UsageError(f"{self.path} is not a finished run folder (no decisions/ table)")
        self._manifest: dict[str, Any] | None = None

    def _kind(self, inner: str) -> pafs.FileType:
        return self._fs.get_file_info(inner).type

    def _path_of(self, name: str) -> str:
        return f"{self._inner.rstrip('/')}/{name}"

    def location(self, name: str) -> str:
        """The path or URL of an entry of the run folder, as a user would type it."""
        return join(self.path, name)

    def manifest(self) -> dict[str, Any]:
        """The run's ``manifest.json`` (an empty dict when the run has none)."""
        if self._manifest is None:
            inner = self._path_of(MANIFEST)
            if self._kind(inner) != pafs.FileType.File:
                self._manifest = {}
            else:
                with self._fs.open_input_stream(inner) as stream:
                    try:
                        self._manifest = json.loads(stream.read())
                    except json.JSONDecodeError as err:
                        raise UsageError(
                            f"{self.location(MANIFEST)}: not valid JSON ({err})"
                        ) from None
        return self._manifest

    def dataset(self, name: str) -> ds.Dataset | None:
        """A table folder as a dataset, or None when the run has no such table."""
        inner = self._path_of(name)
        if self._kind(inner) != pafs.FileType.Directory:
            return None
        selector = pafs.FileSelector(inner, recursive=False)
        files = sorted(
            info.path
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(".parquet")
        )
        if not files:
            return None
        return ds.dataset(files, format="parquet", filesystem=self._fs)

    def batches(
        self,
        name: str,
        columns: list[str],
        where: pc.Expression | None = None,
        batch_size: int = SCAN_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the projected columns of a table (nothing when the table is absent or empty)."""
        dataset = self.dataset(name)
        if dataset is None:
            return
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise UsageError(
                f"{self.location(name)}: column(s) {', '.join(missing)} missing; "
                f"it has {', '.join(dataset.schema.names)}"
            )
        yield from dataset.to_batches(
            columns=columns,
            filter=where,
            batch_size=batch_size,
            batch_readahead=READAHEAD,
            fragment_readahead=1,
        )

    def write_text(self, name: str, text: str) -> str:
        """Write a text file into the run folder (atomically where the filesystem allows)."""
        target = self._path_of(name)
        temporary = self._path_of(f".{name}.tmp")
        with self._fs.open_output_stream(temporary) as stream:
            stream.write(text.encode("utf-8"))
        self._fs.move(temporary, target)
        return self.location(name)
