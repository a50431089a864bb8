"""Reading: input row groups into pairs, and kept images' bytes back from their row groups."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.inputs import InputFile
from curation.layout import Layout
from curation.reader import Footers, ImageFiles, unreadable_rows
from curation.reasons import Stage
from curation.records import GroupScores, ImageGroup, Pair
from pipelines.guarded import ERRORS, NAMESPACE, GuardedDoFn


@dataclass(frozen=True)
class Unit:
    """One row group of one input file: the unit of parallel reading."""

    item: InputFile
    index: int
    first_row: int
    rows: int


class ReadPairsFn(GuardedDoFn):
    """Reads one row group into pairs, a batch at a time; the rows of a row group that
    cannot be read (from a batch on) give ``error`` rows."""

    stage = Stage.READ

    def __init__(self, layout: Layout, images: ImageFiles, run_id: str, threshold: float) -> None:
        super().__init__(run_id, threshold)
        self._layout = layout
        self._images = images
        self._rows_read = Metrics.counter(NAMESPACE, "rows_read")

    def setup(self) -> None:
        self._footers = Footers()

    def parts(self, unit: Unit) -> Iterator[list[Pair]]:
        with self._footers.open(unit.item) as source:
            for pairs in source.pair_batches(self._layout, unit.index, self._images):
                self._rows_read.inc(len(pairs))
                yield pairs

    def rows_of(self, unit: Unit) -> Iterable[tuple[Pair, str | None]]:
        return self.rows_after(unit, 0)

    def rows_after(self, unit: Unit, emitted: int) -> Iterable[tuple[Pair, str | None]]:
        left = unit.rows - emitted
        self._rows_read.inc(left)
        for pair in unreadable_rows(unit.item, unit.first_row + emitted, left):
            yield pair, None


class ReadPairs(beam.PTransform):
    """Every input row as a :class:`Pair`, split by Parquet row group."""

    def __init__(
        self, units: list[Unit], layout: Layout, images: ImageFiles, run_id: str, threshold: float
    ) -> None:
        super().__init__()
        self._units = units
        self._fn = ReadPairsFn(layout, images, run_id, threshold)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Units" >> beam.Create(self._units)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(self._fn).with_outputs(ERRORS, main="pairs")
        )


RowGroupItems = tuple[tuple[str, int], Iterable[tuple[ImageGroup, GroupScores | None]]]


class FetchImagesFn(GuardedDoFn):
    """Reads each kept image's bytes back from its row group (once for all its groups), a
    batch of the row group at a time, and emits the groups of each batch (in row order).

    Only hashes and keys cross the shuffles; image bytes are read where they are used, so
    memory does not grow with the input. Groups with cached scores go out tagged ``cached``.
    """

    stage = Stage.FETCH

    def __init__(
        self,
        items: dict[str, InputFile],
        layout: Layout,
        images: ImageFiles,
        run_id: str,
        threshold: float,
    ) -> None:
        super().__init__(run_id, threshold)
        self._items = items
        self._layout = layout
        self._images = images

    def setup(self) -> None:
        self._footers = Footers()

    def parts(self, element: RowGroupItems) -> Iterator[list[object]]:
        from apache_beam.pvalue import TaggedOutput

        (url, index), _ = element
        grouped = _in_row_order(element)
        wanted = {group.rep.pair.source_row for group, _ in grouped}
        done = 0
        with self._footers.open(self._items[url]) as source:
            for found in source.image_batches(self._layout, index, wanted, self._images):
                part: list[object] = []
                while done < len(grouped) and grouped[done][0].rep.pair.source_row in found:
                    group, scores = grouped[done]
                    image = found[group.rep.pair.source_row]
                    if image is None:
                        raise ValueError(f"the image of {group.key} is gone from {url}")
                    fetched = replace(group, image=image)
                    part.append(
                        fetched if scores is None else TaggedOutput("cached", (fetched, scores))
                    )
                    done += 1
                yield part
        if done < len(grouped):
            raise ValueError(f"the image of {grouped[done][0].key} is gone from {url}")

    def rows_of(self, element: RowGroupItems) -> Iterable[tuple[Pair, str | None]]:
        return self.rows_after(element, 0)

    def rows_after(self, element: RowGroupItems, emitted: int) -> Iterable[tuple[Pair, str | None]]:
        for group, _ in _in_row_order(element)[emitted:]:
            for member in group.members:
                yield member.hashed.pair, group.key


def _in_row_order(element: RowGroupItems) -> list[tuple[ImageGroup, GroupScores | None]]:
    """A row group's image groups in the order their images are read: by row, then key."""
    return sorted(element[1], key=lambda item: (item[0].rep.pair.source_row, item[0].key))
