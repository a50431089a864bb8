"""Decision rows for input pairs rejected before any model sees them."""

from __future__ import annotations

from typing import Any

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
    return {
        "run_id": run_id,
        "key": pair.key,
        "source_file": pair.source_file,
        "source_row": pair.source_row,
        "image_key": None,
        "text_origin": "web",
        "caption_index": None,
        "text": pair.text,
        "itm": None,
        "itc": None,
        "decision": "dropped",
        "reason": Reason(reason).value,
        "detail": detail,
        "threshold": threshold,
    }
