"""Streaming aggregates of a run: counts per origin and reason, ITM histograms, sources.

One pass over the decisions table (narrow columns, record batches of
:data:`~curation.audit.tables.SCAN_ROWS` rows) feeds any number of collectors; the
counts are reduced per batch with pyarrow group-bys and numpy, so memory follows the
number of distinct (origin, reason, source) values, never the number of rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.audit.tables import RunTables
from curation.reasons import Decision, Reason, TextOrigin

#: ITM scores are counted in bins of 1/SWEEP_STEPS (plus one bin for exactly 1.0), which
#: makes the share kept exact at every threshold that is a multiple of 1/SWEEP_STEPS.
SWEEP_STEPS = 1000
#: Bars of the displayed histograms (SWEEP_STEPS must be a multiple).
HISTOGRAM_BARS = 40


class Collector(Protocol):
    """Something fed with every record batch of a decisions scan."""

    columns: tuple[str, ...]

    def update(self, batch: pa.RecordBatch) -> None: ...


def scan_decisions(tables: RunTables, collectors: Iterable[Collector]) -> None:
    """Stream the decisions table once, projecting the union of the collectors' columns."""
    collectors = list(collectors)
    columns = sorted({c for collector in collectors for c in collector.columns})
    for batch in tables.batches("decisions", columns):
        if len(batch):
            for collector in collectors:
                collector.update(batch)


def group_counts(batch: pa.RecordBatch | pa.Table, keys: list[str]) -> list[tuple]:
    """``(value, ..., count)`` for every distinct combination of ``keys`` in a batch."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    grouped = table.select(keys).group_by(keys, use_threads=False).aggregate([([], "count_all")])
    columns = [grouped.column(k).to_pylist() for k in keys]
    counts = grouped.column("count_all").to_pylist()
    return list(zip(*columns, counts, strict=True))


def score_bins(itm: np.ndarray) -> np.ndarray:
    """Bin index of each ITM score: ``floor(itm * SWEEP_STEPS)`` clipped to the bin range."""
    return np.clip(np.floor(itm.astype(np.float64) * SWEEP_STEPS), 0, SWEEP_STEPS).astype(np.int64)


@dataclass
class OriginStats:
    """Texts of one origin (web or synthetic): decisions, reasons and score distribution."""

    rows: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    thresholds: Counter[float] = field(default_factory=Counter)
    scored_bins: np.ndarray = field(default_factory=lambda: np.zeros(SWEEP_STEPS + 1, np.int64))
    kept_bins: np.ndarray = field(default_factory=lambda: np.zeros(SWEEP_STEPS + 1, np.int64))

    @property
    def scored(self) -> int:
        """Texts with an ITM score."""
        return int(self.scored_bins.sum())

    @property
    def kept(self) -> int:
        return self.decisions.get(Decision.KEPT.value, 0)

    @property
    def dropped(self) -> int:
        return self.decisions.get(Decision.DROPPED.value, 0)

    @property
    def threshold(self) -> float | None:
        """The ITM threshold most scored texts of this origin were decided with."""
        return self.thresholds.most_common(1)[0][0] if self.thresholds else None

    @property
    def below_threshold(self) -> int:
        """Scored texts whose ITM is below the threshold (the ``low_itm`` drops)."""
        return self.reasons.get(Reason.LOW_ITM.value, 0)

    @property
    def share_passing(self) -> float:
        """Share of scored texts at or above their threshold (kept by the ITM rule)."""
        return (self.scored - self.below_threshold) / self.scored if self.scored else 0.0

    def histogram(self, bars: int = HISTOGRAM_BARS) -> tuple[np.ndarray, np.ndarray]:
        """Scored texts per ITM bar on [0, 1]: (kept, dropped) counts, ``bars`` each."""
        width = SWEEP_STEPS // bars

        def fold(bins: np.ndarray) -> np.ndarray:
            out = bins[:SWEEP_STEPS].reshape(bars, width).sum(axis=1)
            out[-1] += bins[SWEEP_STEPS]
            return out

        kept = fold(self.kept_bins)
        return kept, fold(self.scored_bins) - kept

    def sweep(self, step: int = 5) -> list[tuple[float, float]]:
        """(threshold, share of scored texts with ITM >= threshold) for thresholds 0..1."""
        total = self.scored
        if not total:
            return []
        at_least = np.cumsum(self.scored_bins[::-1])[::-1]
        return [
            (i / SWEEP_STEPS, float(at_least[i]) / total) for i in range(0, SWEEP_STEPS + 1, step)
        ]


@dataclass
class SourceStats:
    """Web rows of one input file."""

    source: str
    rows: int
    kept: int
    reasons: dict[str, int]

    @property
    def dropped(self) -> int:
        return self.rows - self.kept

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.rows if self.rows else 0.0

    @property
    def top_drop_reason(self) -> str | None:
        drops = {r: n for r, n in self.reasons.items() if r != Reason.KEPT.value and n}
        return max(sorted(drops), key=drops.__getitem__) if drops else None


@dataclass
class RunStats:
    """Everything the report's numbers and the run's warnings are computed from."""

    origins: dict[str, OriginStats]
    sources: list[SourceStats]
    duplicates: dict[str, int]
    images: int  # unique images scored (one web decision per image has key == image_key)

    @property
    def input_rows(self) -> int:
        """Input rows: every input row has exactly one web decision."""
        return self.origins[TextOrigin.WEB.value].rows

    def origin(self, name: str) -> OriginStats:
        return self.origins[name]


class StatsCollector:
    """Accumulates :class:`RunStats` from decisions batches."""

    columns = (
        "key",
        "image_key",
        "source_file",
        "text_origin",
        "decision",
        "reason",
        "itm",
        "threshold",
    )

    def __init__(self) -> None:
        self.origins = {origin.value: OriginStats() for origin in TextOrigin}
        self.sources: Counter[tuple[str, str]] = Counter()
        self.images = 0

    def update(self, batch: pa.RecordBatch) -> None:
        for origin, decision, reason, n in group_counts(
            batch, ["text_origin", "decision", "reason"]
        ):
            stats = self.origins.setdefault(origin, OriginStats())
            stats.rows += n
            stats.decisions[decision] += n
            stats.reasons[reason] += n
        web = pc.equal(batch.column("text_origin"), TextOrigin.WEB.value)
        web_rows = batch.filter(web)
        for source, reason, n in group_counts(web_rows, ["source_file", "reason"]):
            self.sources[(source, reason)] += n
        self.images += int(
            pc.sum(pc.equal(web_rows.column("key"), web_rows.column("image_key"))).as_py() or 0
        )
        scored = batch.filter(pc.is_valid(batch.column("itm")))
        for origin, threshold, n in group_counts(scored, ["text_origin", "threshold"]):
            if threshold is not None:
                self.origins[origin].thresholds[round(threshold, 6)] += n
        for origin, stats in self.origins.items():
            rows = scored.filter(pc.equal(scored.column("text_origin"), origin))
            if not len(rows):
                continue
            bins = score_bins(rows.column("itm").to_numpy(zero_copy_only=False))
            kept = pc.equal(rows.column("decision"), Decision.KEPT.value).to_numpy(
                zero_copy_only=False
            )
            stats.scored_bins += np.bincount(bins, minlength=SWEEP_STEPS + 1)
            stats.kept_bins += np.bincount(bins[kept], minlength=SWEEP_STEPS + 1)

    def result(self, duplicates: dict[str, int]) -> RunStats:
        per_source: dict[str, dict[str, int]] = {}
        for (source, reason), n in sorted(self.sources.items()):
            per_source.setdefault(source, {})[reason] = n
        sources = [
            SourceStats(
                source=source,
                rows=sum(reasons.values()),
                kept=reasons.get(Reason.KEPT.value, 0),
                reasons=reasons,
            )
            for source, reasons in per_source.items()
        ]
        return RunStats(
            origins=self.origins, sources=sources, duplicates=duplicates, images=self.images
        )


def duplicate_counts(tables: RunTables) -> dict[str, int]:
    """Removed duplicates per kind (exact, perceptual, near, previous-round)."""
    counts: Counter[str] = Counter()
    for batch in tables.batches("duplicates", ["kind"]):
        for kind, n in group_counts(batch, ["kind"]):
            counts[kind] += n
    return dict(counts)


def run_stats(tables: RunTables, extra: Iterable[Collector] = ()) -> RunStats:
    """Aggregate a run in one decisions scan (feeding ``extra`` collectors in the same pass)."""
    collector = StatsCollector()
    scan_decisions(tables, [collector, *extra])
    return collector.result(duplicate_counts(tables))
