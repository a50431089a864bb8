"""Deciding: rows of every output table for each scored image group, and for rejected rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from curation.decide import decide_group
from curation.reasons import Stage
from curation.records import GroupScores, ImageGroup, Pair
from curation.thresholds import Thresholds
from pipelines.guarded import NAMESPACE, GuardedDoFn

TABLES = ("decisions", "clean", "synthetic", "duplicates", "images")


def count_decision(row: dict[str, Any]) -> None:
    """Beam counters of one decision row: per decision and per reason."""
    Metrics.counter(NAMESPACE, f"decision_{row['decision']}").inc()
    Metrics.counter(NAMESPACE, f"reason_{row['reason']}").inc()


class DecideFn(GuardedDoFn):
    """Applies the threshold and emits rows for every output table (tagged by table).

    The rows are checked against the tables' schemas here, so a row that could not be
    written (a passthrough value of the wrong type, say) fails its group's decision instead
    of a whole shard.
    """

    stage = Stage.DECIDE

    def __init__(self, schemas: dict[str, pa.Schema], run_id: str, thresholds: Thresholds) -> None:
        super().__init__(run_id, thresholds.web)
        self._schemas = schemas
        self._thresholds = thresholds

    def apply(self, element: tuple[ImageGroup, GroupScores]) -> Iterator[Any]:
        group, scores = element
        outcome = decide_group(
            group,
            scores,
            threshold=self._thresholds.web,
            synthetic_threshold=self._thresholds.synthetic,
            run_id=self._run_id,
        )
        tables = {
            "decisions": outcome.decisions,
            "clean": outcome.clean,
            "synthetic": outcome.synthetic,
            "duplicates": outcome.duplicates,
            "images": (outcome.image,),
        }
        for name, rows in tables.items():
            if rows:
                pa.Table.from_pylist(list(rows), schema=self._schemas[name])
        for row in outcome.decisions:
            count_decision(row)
        for name, rows in tables.items():
            for row in rows:
                yield TaggedOutput(name, row)

    def rows_of(self, element: tuple[ImageGroup, GroupScores]) -> Iterable[tuple[Pair, str | None]]:
        group = element[0]
        for member in group.members:
            yield member.hashed.pair, group.key


class CountDecisionFn(beam.DoFn):
    """Counts decision rows made outside :class:`DecideFn` (rejections, errors)."""

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        count_decision(row)
        yield row
