"""Warnings about a finished run: shares that point at a broken model, input or setting.

The same list heads the report and the run's own summary. Each rule compares a share
with a fixed bound and needs a minimum number of rows, so a tiny run does not warn on noise:

- most scored images removed as near duplicates (or as duplicates of an earlier round):
  what a broken or mismatched embedding model does;
- most scored texts of an origin below the ITM threshold;
- one reason other than ``kept``, ``low_itm`` and ``duplicate`` taking a large share of
  the input rows (a failed download, a wrong image column, an over-strict size limit);
- an input file that drops many more of its rows than the rest of the run, beyond chance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from curation.audit.stats import RunStats, SourceStats, run_stats
from curation.audit.tables import RunTables
from curation.reasons import DuplicateKind, Reason, TextOrigin

#: Smallest population a share is judged on.
MIN_ROWS = 10
#: Share of scored images removed by embedding similarity that is unusual.
EMBEDDING_DUPLICATE_SHARE = 0.5
#: Share of scored texts below the threshold that is unusual.
LOW_ITM_SHARE = 0.8
#: Share of input rows one pre-model reason may take before it is unusual.
REASON_SHARE = 0.25
#: A source stands out when its drop rate differs from the other rows' by at least this
#: much and by more than SOURCE_SIGMAS standard errors of the difference.
SOURCE_RATE_GAP = 0.25
SOURCE_SIGMAS = 3.0
#: Sources named in warnings; the rest are counted.
MAX_SOURCE_WARNINGS = 5


@dataclass(frozen=True)
class AuditWarning:
    """One warning: a stable ``code`` for machines and a sentence for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%"


def _embedding_duplicates(stats: RunStats) -> list[AuditWarning]:
    out = []
    if stats.images < MIN_ROWS:
        return out
    for kind, what in (
        (DuplicateKind.NEAR, "near duplicates of other images of this run"),
        (DuplicateKind.PREVIOUS_ROUND, "duplicates of an earlier round's images"),
    ):
        removed = stats.duplicates.get(kind.value, 0)
        if removed / stats.images > EMBEDDING_DUPLICATE_SHARE:
            out.append(
                AuditWarning(
                    f"{kind.value}_duplicates",
                    f"{_percent(removed, stats.images)} of scored images ({removed} of "
                    f"{stats.images}) were removed as {what}; a broken or mismatched filter "
                    "embedding does this (check the filter, or the near-duplicate threshold)",
                )
            )
    return out


def _below_threshold(stats: RunStats) -> list[AuditWarning]:
    out = []
    for origin, label in (
        (TextOrigin.WEB, "web texts"),
        (TextOrigin.SYNTHETIC, "synthetic captions"),
    ):
        data = stats.origins.get(origin.value)
        if data is None or data.scored < MIN_ROWS:
            continue
        below = data.below_threshold
        if below / data.scored > LOW_ITM_SHARE:
            out.append(
                AuditWarning(
                    f"low_itm_{origin.value}",
                    f"{_percent(below, data.scored)} of scored {label} ({below} of {data.scored}) "
                    f"are below the ITM threshold {data.threshold or 0:g}; check the threshold, the "
                    "filter, or that texts and images belong together",
                )
            )
    return out


def _reason_shares(stats: RunStats) -> list[AuditWarning]:
    rows = stats.input_rows
    if rows < MIN_ROWS:
        return []
    web = stats.origins[TextOrigin.WEB.value]
    usual = {Reason.KEPT.value, Reason.LOW_ITM.value, Reason.DUPLICATE.value}
    out = []
    for reason, n in sorted(web.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        if reason not in usual and n / rows > REASON_SHARE:
            out.append(
                AuditWarning(
                    f"reason_{reason}",
                    f"{_percent(n, rows)} of input rows ({n} of {rows}) were dropped as {reason}",
                )
            )
    return out


def _unusual_source(source: SourceStats, total_rows: int, total_dropped: int) -> float | None:
    """The other rows' drop rate when ``source`` drops unusually many rows, else None.

    Two-proportion test: the excess must exceed SOURCE_SIGMAS standard errors under the
    pooled drop rate, and SOURCE_RATE_GAP. Only higher drop rates count: with two inputs,
    the good one would otherwise be flagged as well.
    """
    rest_rows = total_rows - source.rows
    if source.rows < MIN_ROWS or rest_rows < MIN_ROWS:
        return None
    rest_rate = (total_dropped - source.dropped) / rest_rows
    pooled = total_dropped / total_rows
    gap = source.drop_rate - rest_rate
    spread = math.sqrt(pooled * (1 - pooled) * (1 / source.rows + 1 / rest_rows))
    return rest_rate if gap >= SOURCE_RATE_GAP and gap > SOURCE_SIGMAS * spread else None


def _sources(stats: RunStats) -> list[AuditWarning]:
    total_rows = sum(s.rows for s in stats.sources)
    total_dropped = sum(s.dropped for s in stats.sources)
    flagged = []
    for source in stats.sources:
        rest = _unusual_source(source, total_rows, total_dropped)
        if rest is not None:
            flagged.append((source.drop_rate - rest, source, rest))
    flagged.sort(key=lambda item: (-item[0], item[1].source))
    out = []
    for _, source, rest in flagged[:MAX_SOURCE_WARNINGS]:
        top = source.top_drop_reason
        mostly = f", mostly {top}" if top else ""
        out.append(
            AuditWarning(
                "source_drop_rate",
                f"{source.source} drops {_percent(source.dropped, source.rows)} of its "
                f"{source.rows} rows{mostly} (the other inputs: {100 * rest:.0f}%)",
            )
        )
    if len(flagged) > MAX_SOURCE_WARNINGS:
        out.append(
            AuditWarning(
                "source_drop_rate",
                f"{len(flagged) - MAX_SOURCE_WARNINGS} more input files have an unusual drop rate",
            )
        )
    return out


def compute_warnings(stats: RunStats) -> list[AuditWarning]:
    """Every warning the aggregates of a run raise, most general first."""
    return [
        *_embedding_duplicates(stats),
        *_below_threshold(stats),
        *_reason_shares(stats),
        *_sources(stats),
    ]


def unusual_sources(stats: RunStats) -> set[str]:
    """Input files whose drop rate is unusually high (the report highlights them)."""
    total_rows = sum(s.rows for s in stats.sources)
    total_dropped = sum(s.dropped for s in stats.sources)
    return {
        s.source for s in stats.sources if _unusual_source(s, total_rows, total_dropped) is not None
    }


def run_warnings(run_dir: str) -> list[AuditWarning]:
    """The warnings of a finished run folder (one streaming pass over its decisions)."""
    return compute_warnings(run_stats(RunTables(run_dir)))
