"""Parquet footers: one read per input file before work, many files at once.

Checking a run reads every input file's footer (its schema and row groups). On object
storage each read is a round trip of tens of milliseconds, so a round of ten thousand files
read one after the other would wait minutes before any work; :func:`read_footers` reads
them on :data:`FOOTER_THREADS` threads, and the schema and the row groups come from the same
read. Only a :class:`FooterSummary` of each is kept: a footer that lists thousands of row
groups is megabytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.inputs import InputFile
from curation.storage import Location

#: Footers read at once.
FOOTER_THREADS = 32


@dataclass(frozen=True)
class FooterSummary:
    """What planning needs of a file's footer: its Arrow schema, the rows of each row
    group and the first row number of each."""

    schema: pa.Schema
    row_counts: tuple[int, ...]

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.row_counts, initial=0))[:-1]


def read_footer(location: Location) -> FooterSummary:
    """The footer of the Parquet file at ``location``; :class:`InputError` when unreadable."""
    try:
        with location.open("rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            return FooterSummary(
                metadata.schema.to_arrow_schema(),
                tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)),
            )
    except (FileNotFoundError, PermissionError) as err:
        raise InputError(f"{location.url}: cannot open ({err})") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{location.url}: not a Parquet file ({err})") from None


def read_footers(files: Sequence[InputFile]) -> dict[str, FooterSummary]:
    """The footers of ``files`` by URL, read :data:`FOOTER_THREADS` at a time; the error of
    the first unreadable file in input order is raised."""
    if len(files) <= 1:
        return {item.url: read_footer(item.location) for item in files}
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        futures = [pool.submit(read_footer, item.location) for item in files]
        return {item.url: future.result() for item, future in zip(files, futures, strict=True)}
