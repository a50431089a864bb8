"""Compare two runs: counts per reason side by side, and the texts whose decision changed.

Web texts are matched by input key, synthetic captions by (image key, caption index).
Each run's decisions are read as narrow Arrow columns (no image bytes, no Python objects
per row) and joined with pyarrow's hash join; only the bounded listings become Python.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.audit.stats import group_counts
from curation.audit.tables import RunTables
from curation.reasons import Decision, Reason, TextOrigin
from curation.schemas import DECISIONS_SCHEMA

#: Changed texts listed per direction (the counts are always complete).
DEFAULT_LIMIT = 50
IDENTITY = {
    TextOrigin.WEB.value: ["key"],
    TextOrigin.SYNTHETIC.value: ["image_key", "caption_index"],
}
COLUMNS = ["text_origin", "key", "image_key", "caption_index", "decision", "reason", "itm"]
DIRECTIONS = ("kept_to_dropped", "dropped_to_kept", "only_in_a", "only_in_b")


def _decisions(tables: RunTables) -> pa.Table:
    batches = list(tables.batches("decisions", COLUMNS))
    return (
        pa.Table.from_batches(batches)
        if batches
        else DECISIONS_SCHEMA.empty_table().select(COLUMNS)
    )


def _counts(table: pa.Table) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for origin, reason, n in group_counts(table, ["text_origin", "reason"]):
        out.setdefault(origin, {})[reason] = n
    return out


def _side(table: pa.Table, origin: str) -> pa.Table:
    """One origin's rows, identity columns first; repeated input keys (duplicate_key) left out."""
    rows = table.filter(pc.equal(table.column("text_origin"), origin))
    if origin == TextOrigin.WEB.value:
        rows = rows.filter(pc.not_equal(rows.column("reason"), Reason.DUPLICATE_KEY.value))
    return rows.select([*IDENTITY[origin], "decision", "reason", "itm"])


def _listing(rows: pa.Table, identity: list[str], limit: int) -> list[dict[str, Any]]:
    if not len(rows):
        return []
    order = [(c, "ascending") for c in identity]
    picked = rows.take(pc.select_k_unstable(rows, min(limit, len(rows)), sort_keys=order))
    picked = picked.take(pc.sort_indices(picked, sort_keys=order))
    return picked.to_pylist()


def _changes(a: pa.Table, b: pa.Table, origin: str, limit: int) -> dict[str, Any]:
    identity = IDENTITY[origin]
    joined = _side(a, origin).join(
        _side(b, origin),
        keys=identity,
        join_type="full outer",
        left_suffix="_a",
        right_suffix="_b",
        use_threads=False,
    )
    in_a = pc.is_valid(joined.column("decision_a"))
    in_b = pc.is_valid(joined.column("decision_b"))
    kept_a = pc.equal(joined.column("decision_a"), Decision.KEPT.value)
    kept_b = pc.equal(joined.column("decision_b"), Decision.KEPT.value)
    masks = {
        "kept_to_dropped": pc.and_(kept_a, pc.and_(in_b, pc.invert(kept_b))),
        "dropped_to_kept": pc.and_(kept_b, pc.and_(in_a, pc.invert(kept_a))),
        "only_in_a": pc.and_(in_a, pc.invert(in_b)),
        "only_in_b": pc.and_(in_b, pc.invert(in_a)),
    }
    out: dict[str, Any] = {}
    listings: dict[str, list[dict[str, Any]]] = {}
    for name, mask in masks.items():
        rows = joined.filter(mask)
        out[name] = len(rows)
        listings[name] = _listing(rows, identity, limit)
    both = joined.filter(pc.and_(in_a, in_b))
    moved = both.filter(pc.not_equal(both.column("reason_a"), both.column("reason_b")))
    out["reasons"] = [
        {"from": ra, "to": rb, "count": n}
        for ra, rb, n in sorted(
            group_counts(moved, ["reason_a", "reason_b"]), key=lambda t: (-t[2], t[0], t[1])
        )
    ]
    out["listing"] = listings
    return out


def diff_runs(run_a: RunTables, run_b: RunTables, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Counts per origin and reason in both runs, and the texts whose decision changed.

    ``changes[origin]`` holds the number of texts ``kept_to_dropped``, ``dropped_to_kept``,
    ``only_in_a`` and ``only_in_b``, the reason transitions with their counts, and for each
    direction a listing of at most ``limit`` texts (in key order).
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    a, b = _decisions(run_a), _decisions(run_b)
    counts_a, counts_b = _counts(a), _counts(b)
    counts: dict[str, dict[str, list[int]]] = {}
    for origin in (TextOrigin.WEB.value, TextOrigin.SYNTHETIC.value):
        reasons = [r.value for r in Reason]
        seen = set(counts_a.get(origin, {})) | set(counts_b.get(origin, {}))
        reasons += sorted(seen - set(reasons))
        counts[origin] = {
            r: [counts_a.get(origin, {}).get(r, 0), counts_b.get(origin, {}).get(r, 0)]
            for r in reasons
            if r in seen
        }
    return {
        "a": run_a.path,
        "b": run_b.path,
        "limit": limit,
        "counts": counts,
        "changes": {origin: _changes(a, b, origin, limit) for origin in IDENTITY},
    }


def _row_id(row: dict[str, Any], origin: str) -> str:
    if origin == TextOrigin.WEB.value:
        return repr(row["key"])
    return f"{row['image_key']!r} caption {row['caption_index']}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_diff(diff: dict[str, Any]) -> str:
    """The diff as text for a terminal."""
    lines = [f"A: {diff['a']!r}", f"B: {diff['b']!r}", ""]
    for origin, reasons in diff["counts"].items():
        lines.append(f"{origin:<10} {'reason':<18} {'A':>10} {'B':>10} {'B - A':>10}")
        for reason, (na, nb) in reasons.items():
            lines.append(f"{'':<10} {reason:<18} {na:>10} {nb:>10} {nb - na:>+10}")
        lines.append("")
    for origin, change in diff["changes"].items():
        summary = ", ".join(f"{name.replace('_', ' ')} {change[name]}" for name in DIRECTIONS)
        lines.append(f"{origin} decisions: {summary}")
        for move in change["reasons"]:
            lines.append(f"  {move['from']} -> {move['to']}: {move['count']}")
        for name in DIRECTIONS:
            rows = change["listing"][name]
            if not rows:
                continue
            shown = (
                f"first {len(rows)} of {change[name]}" if change[name] > len(rows) else change[name]
            )
            lines.append(f"  {name.replace('_', ' ')} ({shown}):")
            for row in rows:
                lines.append(
                    f"    {_row_id(row, origin)}  {row.get('reason_a') or '-'} -> "
                    f"{row.get('reason_b') or '-'}  itm {_score(row.get('itm_a'))} -> "
                    f"{_score(row.get('itm_b'))}"
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
