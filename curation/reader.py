"""Streaming input rows as :class:`~curation.records.Pair` records, one row group at a time.

Reading projects only the needed columns and goes through a row group in batches of about
:data:`READ_BATCH_BYTES` (from the footer's sizes), so memory follows the batch size and the
writer's page size, not the row group's or the input's. Values are taken as they are, with
these rules:

- keys: a key column of strings or integers is used as text; a null or empty key gets the
  derived key ``<prefix>_<row>`` (:mod:`curation.inputs`);
- texts (and every other string) are stored as they came, but for bytes that are not valid
  UTF-8 (:func:`curation.texts.stored_text`); the row is marked so its decision says so,
  instead of failing the whole file;
- passthrough columns are cast to the layout's unified types (null where a file lacks one,
  or its Hive partition folder's value);
- Hugging Face image structs with no bytes but a ``path``: the file is read when the path
  resolves inside the Parquet file's own folder or an allowed image root, is a regular file
  and is at most ``max_image_bytes`` long; otherwise the row has no image bytes and an image
  issue saying which rule refused it (see :class:`ImageFiles`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.inputs import InputFile
from curation.layout import Layout
from curation.reasons import Reason
from curation.records import Pair
from curation.storage import Location, is_url
from curation.texts import stored_text

#: Default size bound of an image file read through a Hugging Face image struct's path.
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20
#: Uncompressed bytes of the rows read at once from a row group (by the footer's sizes).
READ_BATCH_BYTES = 64 * 2**20
#: Most rows read at once.
READ_BATCH_ROWS = 1024
#: Read buffer of a column chunk: a chunk is read in pieces, not whole.
READ_BUFFER_BYTES = 2**20


@dataclass(frozen=True)
class ImageFiles:
    """Where images named by path (Hugging Face image structs) may be read from."""

    roots: tuple[str, ...] = ()  # allowed folders besides each Parquet file's own folder
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def read(self, path: str, parquet: Location) -> tuple[bytes | None, tuple[Reason, str] | None]:
        """The bytes of the image at ``path`` (relative to the Parquet file's folder), or
        ``None`` and the reason and detail of the rule that refused it."""
        if "\x00" in path:
            return None, (Reason.MISSING_IMAGE, f"image path {path!r} holds a NUL byte")
        folders = [parquet.parent, *(Location(r) for r in self.roots)]
        target = self._target(path, parquet, folders)
        if target is None:
            allowed = " or an --image-root" if not self.roots else ", nor under an --image-root"
            return None, (
                Reason.MISSING_IMAGE,
                f"image path {path!r} is outside the dataset folder {parquet.parent.url}{allowed}",
            )
        try:
            if not target.exists():
                return None, (Reason.MISSING_IMAGE, f"image file {target.url} not found")
            if not target.is_regular_file():
                return None, (Reason.MISSING_IMAGE, f"image path {path!r} is not a regular file")
            data = target.read_bytes(limit=self.max_bytes)
        except (OSError, ValueError) as err:
            return None, (Reason.MISSING_IMAGE, f"image file {target.url} unreadable: {err}")
        if len(data) > self.max_bytes:
            return None, (
                Reason.TOO_LARGE,
                f"image file {target.url} is larger than max_image_bytes={self.max_bytes}",
            )
        return data, None

    @staticmethod
    def _target(path: str, parquet: Location, folders: list[Location]) -> Location | None:
        """The location of ``path`` when it lies in one of ``folders``, else ``None``. A URL
        is checked as text first, so one elsewhere (another store, host or scheme) never
        gets a filesystem; a remote dataset naming a local path never reads this machine's
        files."""
        if not is_url(path) and path.startswith("/") and not parquet.is_local:
            return None
        url = parquet.parent.relative_url(path)
        if is_url(url) and not any(folder.contains_url(url) for folder in folders):
            return None
        target = Location(url)
        return target if any(folder.inside(target) for folder in folders) else None


@dataclass(frozen=True)
class Footer:
    """A file's parsed footer and what is derived from it once: rows per row group and the
    first row number of each."""

    metadata: pq.FileMetaData
    row_counts: tuple[int, ...]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, metadata: pq.FileMetaData) -> Footer:
        counts = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        return cls(metadata, counts, tuple(itertools.accumulate(counts, initial=0))[:-1])


def batch_rows(rows: int, size: int) -> int:
    """Rows of a row group of ``rows`` rows and ``size`` uncompressed bytes read at once."""
    per_row = max(1, size // max(1, rows))
    return max(1, min(READ_BATCH_ROWS, READ_BATCH_BYTES // per_row))


class Footers:
    """The footers of the files read last, so that reading a file one row group at a time
    parses its footer once: a file written with a row group per row has a footer as long
    as its rows, and parsing it for every row group would take time quadratic in them."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._footers: OrderedDict[str, Footer] = OrderedDict()

    def open(self, item: InputFile) -> ParquetInput:
        """``item`` opened, with its footer parsed at most once while it stays recent."""
        source = ParquetInput(item, self._footers.get(item.url))
        self._footers[item.url] = source.footer
        self._footers.move_to_end(item.url)
        while len(self._footers) > self._size:
            self._footers.popitem(last=False)
        return source


class ParquetInput:
    """An open input file: its row groups and their first row numbers."""

    def __init__(self, item: InputFile, footer: Footer | None = None) -> None:
        self.item = item
        self._handle = item.location.open_file()
        try:
            metadata = footer.metadata if footer else None
            self.parquet = pq.ParquetFile(
                self._handle, metadata=metadata, pre_buffer=False, buffer_size=READ_BUFFER_BYTES
            )
        except (pa.ArrowInvalid, OSError) as err:
            self._handle.close()
            raise InputError(f"{item.url}: not a Parquet file ({err})") from None
        self.footer = footer or Footer.of(self.parquet.metadata)
        self.row_counts = self.footer.row_counts
        self.starts = self.footer.starts

    def __enter__(self) -> ParquetInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def batches(self, index: int, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
        """Row group ``index`` in batches (:func:`batch_rows`), each with the file row
        number of its first row."""
        first = self.starts[index]
        group = self.footer.metadata.row_group(index)
        for batch in self.parquet.iter_batches(
            batch_size=batch_rows(group.num_rows, group.total_byte_size),
            row_groups=[index],
            columns=columns,
            use_threads=False,
        ):
            yield first, pa.Table.from_batches([batch])
            first += batch.num_rows

    def pair_batches(self, layout: Layout, index: int, images: ImageFiles) -> Iterator[list[Pair]]:
        """The pairs of row group ``index`` a batch at a time, rows numbered within the file."""
        columns = layout.columns(self.parquet.schema_arrow.names)
        for first, table in self.batches(index, columns):
            yield list(_pairs(table, self.item, layout, first, images))

    def image_batches(
        self, layout: Layout, index: int, rows: set[int], images: ImageFiles
    ) -> Iterator[dict[int, bytes | None]]:
        """The image bytes of ``rows`` (numbered within the file) of row group ``index``, a
        batch at a time: each batch's rows that are among ``rows``."""
        ordered = sorted(rows)
        for first, table in self.batches(index, [layout.image_column]):
            cells = _ImageCells(table.column(layout.image_column), layout)
            low = bisect.bisect_left(ordered, first)
            high = bisect.bisect_left(ordered, first + table.num_rows)
            yield {
                row: cells.image(row - first, self.item.location, images)[0]
                for row in ordered[low:high]
            }


def read_images(
    item: InputFile,
    layout: Layout,
    index: int,
    rows: set[int],
    images: ImageFiles | None = None,
    footers: Footers | None = None,
) -> dict[int, bytes | None]:
    """The image bytes of some rows (numbered within the file) of row group ``index``; rows
    outside the row group are left out."""
    with (footers or Footers()).open(item) as source:
        found: dict[int, bytes | None] = {}
        for batch in source.image_batches(layout, index, rows, images or ImageFiles()):
            found.update(batch)
        return found


def read_row_group(
    item: InputFile, layout: Layout, index: int, images: ImageFiles | None = None
) -> list[Pair]:
    """The pairs of one row group of one file."""
    with ParquetInput(item) as source:
        return [p for b in source.pair_batches(layout, index, images or ImageFiles()) for p in b]


def iter_rows(
    item: InputFile, layout: Layout, images: ImageFiles | None = None
) -> Iterator[tuple[Pair, Exception | None]]:
    """Every row of a file as ``(pair, None)``, reading a batch at a time; the rows of a
    row group that cannot be read from a batch on (a damaged page) come as
    :func:`unreadable_rows` with the exception, and the other row groups still follow."""
    with ParquetInput(item) as source:
        for index, rows in enumerate(source.row_counts):
            done = 0
            try:
                for pairs in source.pair_batches(layout, index, images or ImageFiles()):
                    yield from ((pair, None) for pair in pairs)
                    done += len(pairs)
            except Exception as err:  # one damaged row group does not hide the others
                first = source.starts[index] + done
                yield from ((pair, err) for pair in unreadable_rows(item, first, rows - done))


def derived_key(item: InputFile, row: int) -> str:
    """The key of a row without a key: the file's key prefix and the row, ``part-0_000123``."""
    return f"{item.key_prefix}_{row:06d}"


#: Notes of keys the data did not give as they are used.
DERIVED_KEY = "no key in the data: derived from the file and row"
UNREAD_KEY = "its row group could not be read: key derived from the file and row"
ESCAPED_KEY = "invalid UTF-8 in the key was escaped"


def unreadable_rows(item: InputFile, first_row: int, rows: int) -> list[Pair]:
    """The rows of a row group that cannot be read, as pairs without data: their decision
    is an ``error`` naming the read failure."""
    return [
        Pair(
            key=derived_key(item, row),
            source_file=item.url,
            source_row=row,
            image=None,
            text=None,
            key_note=UNREAD_KEY,
        )
        for row in range(first_row, first_row + rows)
    ]


def _keys(column: pa.ChunkedArray) -> tuple[list[str | None], list[bool]]:
    """Values of a key column as strings, and which needed repair: invalid UTF-8 bytes are
    escaped (``\\xff``), not replaced, so keys that differ only there stay distinct."""
    return _strings(column, lambda blob: blob.decode("utf-8", "backslashreplace"))


def _strings(
    column: pa.ChunkedArray, decode: Callable[[bytes], str] = stored_text
) -> tuple[list[str | None], list[bool]]:
    """Values of a string-like column as Python strings (bytes read with ``decode``), and
    which ones needed repair."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if pa.types.is_null(column.type):
        return [None] * len(column), [False] * len(column)
    if pa.types.is_integer(column.type):
        return [None if v is None else str(v) for v in column.to_pylist()], [False] * len(column)
    raw = pc.cast(column, pa.large_binary()).to_pylist()
    values = [None if blob is None else decode(blob) for blob in raw]
    repaired = [
        blob is not None and text.encode("utf-8") != blob
        for blob, text in zip(raw, values, strict=True)
    ]
    return values, repaired


def _passthrough(
    table: pa.Table, layout: Layout, partitions: dict[str, str | None]
) -> tuple[list[dict[str, object]], list[str]]:
    """Every row's passthrough values in the unified types (a column the file lacks: its
    Hive ``partitions`` value, else null), and a note per row ("" when none) naming the
    values the unified type cannot hold (read as null)."""
    rows: list[dict[str, object]] = [{} for _ in range(table.num_rows)]
    notes: list[list[str]] = [[] for _ in range(table.num_rows)]
    for field in layout.passthrough:
        name = layout.output_name(field.name)
        if field.name not in table.column_names:
            values: Sequence[object] = [partitions.get(field.name)] * table.num_rows
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            values = _strings(table.column(field.name))[0]  # string views included
        else:
            values = _cast(table.column(field.name), field, notes)
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return rows, ["; ".join(n) for n in notes]


#: What reading a value as Python can raise besides a failed cast: a date beyond Python's
#: years (OverflowError, ValueError), invalid UTF-8 in a nested string (UnicodeDecodeError),
#: a time zone this machine's database lacks (a KeyError).
_UNREADABLE = (pa.ArrowException, ValueError, OverflowError, KeyError)


def _cast(column: pa.ChunkedArray, field: pa.Field, notes: list[list[str]]) -> list[object]:
    """``column`` in ``field``'s type; a value out of the type's range (a timestamp beyond
    a finer unit's) or that Python cannot hold is null, with a note in ``notes`` of its row."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    try:
        return pc.cast(column, field.type).to_pylist()
    except _UNREADABLE:
        return _cast_each(column, field, notes)


def _cast_each(column: pa.ChunkedArray, field: pa.Field, notes: list[list[str]]) -> list[object]:
    """``column`` in ``field``'s type value by value: a value the type cannot hold, or that
    cannot be read as a Python value, is null, with a note in ``notes`` of its row."""
    values: list[object] = []
    for row, scalar in enumerate(column.combine_chunks()):
        try:
            cast = scalar.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values.append(None)
            notes[row].append(
                f"column {field.name!r}: {_shown(scalar)} does not fit {field.type} (the "
                "type shared with the other input files), stored as null"
            )
            continue
        try:
            values.append(cast.as_py())
        except _UNREADABLE as err:
            values.append(None)
            notes[row].append(
                f"column {field.name!r}: a {field.type} value cannot be read "
                f"({type(err).__name__}: {err}), stored as null"
            )
    return values


def _shown(scalar: pa.Scalar) -> str:
    """A value as a note shows it (a date beyond Python's years cannot be printed)."""
    try:
        return str(scalar)
    except _UNREADABLE:
        return f"a {scalar.type} value"


class _ImageCells:
    """The image column of a row group: bytes, or (image structs) a path to read them from."""

    def __init__(self, column: pa.ChunkedArray, layout: Layout) -> None:
        if pa.types.is_null(column.type):  # a file whose image column holds no value at all
            self.blobs, self.paths = [None] * len(column), [None] * len(column)
            self.valid = [False] * len(column)
        elif layout.image_is_struct:
            values = column.combine_chunks()
            self.blobs = values.field("bytes").to_pylist()
            self.paths = _strings(pa.chunked_array([values.field("path")]))[0]
            self.valid = values.is_valid().to_pylist()
        else:
            self.blobs = column.to_pylist()
            self.paths = [None] * len(column)
            self.valid = [True] * len(column)

    def image(
        self, i: int, parquet: Location, policy: ImageFiles
    ) -> tuple[bytes | None, tuple[Reason, str] | None]:
        """Row ``i``'s bytes, read through its path when the struct holds none."""
        if not self.valid[i]:
            return None, None
        path = self.paths[i]
        if self.blobs[i] is None and path:
            return policy.read(path, parquet)
        return self.blobs[i], None


def _pairs(
    table: pa.Table, item: InputFile, layout: Layout, first_row: int, images: ImageFiles
) -> Iterator[Pair]:
    n = table.num_rows
    texts, repaired = _strings(table.column(layout.text_column))
    keys, escaped = (
        _keys(table.column(layout.key_column)) if layout.key_column else ([None] * n, [])
    )
    statuses = _strings(table.column(layout.status_column))[0] if layout.status_column else None
    errors = _strings(table.column(layout.error_column))[0] if layout.error_column else None
    extras, extra_notes = _passthrough(table, layout, item.partitions)
    cells = _ImageCells(table.column(layout.image_column), layout)
    del table
    for i in range(n):
        row = first_row + i
        image, issue = cells.image(i, item.location, images)
        if not keys[i]:
            key, note = derived_key(item, row), DERIVED_KEY if layout.key_column else None
        else:
            key, note = keys[i], ESCAPED_KEY if escaped[i] else None
        yield Pair(
            key=key,
            source_file=item.url,
            source_row=row,
            image=image,
            text=texts[i],
            status=statuses[i] if statuses is not None else None,
            error=errors[i] if errors is not None else None,
            extra=extras[i],
            text_repaired=repaired[i],
            image_issue=issue,
            key_note=note,
            passthrough_note=extra_notes[i] or None,
        )
