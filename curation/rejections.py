"""Decision rows for input pairs rejected before any model sees them."""

from __future__ import annotations

from typing import Any

from curation.decide import decision_row
from curation.reasons import Reason
from curation.records import Pair


def rejection_row(
    pair: Pair,
    reason: Reason,
    detail: str | None,
    run_id: str,
    threshold: float | None,
) -> dict[str, Any]:
    """A ``DECISIONS_SCHEMA`` row: the pair's web text dropped for ``reason``, unscored."""
    return decision_row(
        pair, run_id=run_id, reason=Reason(reason), threshold=threshold, detail=detail
    )
