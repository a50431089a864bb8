"""The one way the audit side reads a run folder: its tables, its manifest, its report file.

Tables are the files the committed manifest lists (:class:`curation.run_folder.RunFolder`),
opened as one ``pyarrow.dataset`` over the storage layer's filesystem (local, ``s3://``,
``gs://``), streamed batch by batch with columns projected, so aggregates never hold a whole
table as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from curation.errors import UsageError
from curation.run_folder import MANIFEST, RunFolder
from curation.shards import unreadable
from curation.storage import absent

#: Rows per streamed batch of the narrow (no image bytes) audit scans.
SCAN_ROWS = 65_536
#: Batches read ahead of the one being processed (bounds memory on wide scans).
READAHEAD = 2


class RunTables:
    """A finished run folder, read-only except for the report files written into it."""

    def __init__(self, run_dir: str) -> None:
        self.run = RunFolder.at(str(run_dir))
        self.path = self.run.url
        if not self.run.root.is_dir():
            raise UsageError(f"{self.path}: run folder not found")
        manifest = self.run.read_manifest()
        if manifest is None:
            raise UsageError(f"{self.path} is not a finished run folder (no {MANIFEST})")
        self._manifest: dict[str, Any] = manifest
        self._check_files()

    def _check_files(self) -> None:
        """Refuse a folder missing a table file its manifest lists (one listing per folder)."""
        listed = {
            name: self.run.table_files(name, self._manifest)
            for name in self._manifest.get("tables", {})
        }
        missing = {name: absent(files) for name, files in listed.items()}
        first = [self.run.relative(f) for files in missing.values() for f in files]
        if not first:
            return
        which = (
            f"{first[0]}, which is"
            if len(first) == 1
            else f"{first[0]} and {len(first) - 1} more, which are"
        )
        counts = ", ".join(
            f"{len(missing[name])} of {len(files)} {name} files"
            for name, files in listed.items()
            if missing[name]
        )
        raise UsageError(
            f"run folder {self.path} is incomplete: {MANIFEST} lists {which} missing ({counts})"
        )

    def _check_parquet(self, name: str, columns: list[str] | None = None) -> None:
        """Refuse a table whose files are missing, not readable Parquet, or hold pages of
        ``columns`` that do not decode (called after a failed read)."""
        self._check_files()
        for file in self.run.table_files(name, self._manifest):
            if problem := unreadable(file, columns):
                raise UsageError(
                    f"run folder {self.path} is damaged: {self.run.relative(file)} {problem}"
                )

    def location(self, name: str) -> str:
        """The path or URL of an entry of the run folder, as a user would type it."""
        return (self.run.root / name).url

    def manifest(self) -> dict[str, Any]:
        """The run's committed ``manifest.json``."""
        return self._manifest

    def dataset(self, name: str) -> ds.Dataset | None:
        """A table as a dataset of its committed files, or None when the run has no such table."""
        if name not in self._manifest.get("tables", {}):
            return None
        files = self.run.table_files(name, self._manifest)
        if not files:
            return None
        try:
            return ds.dataset([f.path for f in files], format="parquet", filesystem=files[0].fs)
        except (pa.ArrowException, OSError):
            self._check_parquet(name, [])
            raise

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
        try:
            yield from dataset.to_batches(
                columns=columns,
                filter=where,
                batch_size=batch_size,
                batch_readahead=READAHEAD,
                fragment_readahead=1,
            )
        except (pa.ArrowException, OSError):
            self._check_parquet(name, columns)
            raise

    def write_text(self, name: str, text: str) -> str:
        """Write a text file into the run folder (atomically); returns its location."""
        target = self.run.root / name
        try:
            target.write_text(text)
        except OSError as err:
            raise UsageError(f"{target.url} cannot be written: {err}") from None
        return target.url
