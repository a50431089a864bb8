"""Everything a run recorded about one input key: texts, captions, scores, reasons, copies.

Two filtered scans of the decisions table (the key's own rows and the rows scored on its
image; then the captions of the image its text was scored against, when that is another
image) and one of the duplicates table (both directions). Listings of what was scored on,
or removed in favour of, one image are bounded: a popular image may have thousands of copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc

from curation.audit.tables import RunTables
from curation.errors import UsageError
from curation.reasons import TextOrigin
from curation.schemas import DECISION_FIELDS
from curation.texts import printable

#: Copies, and texts of copies, listed per image (the counts are complete).
MAX_RELATED = 100
#: Characters of a text, and of a key, file name or detail, shown by the terminal format
#: (``--json`` gives them whole).
TEXT_CHARS = 2000
NAME_CHARS = 300
DECISION_COLUMNS = list(DECISION_FIELDS)


def _decision_rows(tables: RunTables, where: pc.Expression) -> list[dict[str, Any]]:
    return [
        row
        for batch in tables.batches("decisions", DECISION_COLUMNS, where=where)
        for row in batch.to_pylist()
    ]


def _bounded(rows: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {"total": total, "rows": rows}


def explain_key(tables: RunTables, key: str) -> dict[str, Any]:
    """The record of ``key`` in a run, as a JSON-ready dict.

    ``web``: its web decision(s); ``image_key``: the image its text was scored against;
    ``captions``: that image's synthetic captions; ``copy_of``: what it was removed as a
    duplicate of; ``copies``: what was removed as a duplicate of it; ``texts_on_image``:
    web texts of other keys scored against its image.
    """
    web: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    on_image: list[dict[str, Any]] = []
    on_image_total = 0
    where = (pc.field("key") == key) | (pc.field("image_key") == key)
    for row in _decision_rows(tables, where):
        if row["text_origin"] == TextOrigin.WEB.value and row["key"] == key:
            web.append(row)
        elif row["text_origin"] == TextOrigin.SYNTHETIC.value and row["image_key"] == key:
            captions.append(row)
        elif row["text_origin"] == TextOrigin.WEB.value:
            on_image_total += 1
            if len(on_image) < MAX_RELATED:
                on_image.append(row)
    copy_of: list[dict[str, Any]] = []
    copies: list[dict[str, Any]] = []
    copies_total = 0
    columns = ["key", "dup_of", "kind", "similarity"]
    where = (pc.field("key") == key) | (pc.field("dup_of") == key)
    for batch in tables.batches("duplicates", columns, where=where):
        for row in batch.to_pylist():
            if row["key"] == key:
                copy_of.append(row)
            if row["dup_of"] == key:
                copies_total += 1
                if len(copies) < MAX_RELATED:
                    copies.append(row)
    if not (web or captions or copy_of or copies or on_image_total):
        raise UsageError(f"key {key!r} not found in {tables.location('decisions')}")
    image_key = next((r["image_key"] for r in web if r["image_key"]), None)
    if image_key is not None and image_key != key:
        where = (pc.field("image_key") == image_key) & (
            pc.field("text_origin") == TextOrigin.SYNTHETIC.value
        )
        captions = _decision_rows(tables, where)
    captions.sort(key=lambda r: (r["caption_index"] is None, r["caption_index"] or 0))
    on_image.sort(key=lambda r: r["key"])
    copies.sort(key=lambda r: r["key"])
    return {
        "run": tables.path,
        "key": key,
        "web": web,
        "image_key": image_key,
        "captions": captions,
        "copy_of": copy_of,
        "copies": _bounded(copies, copies_total),
        "texts_on_image": _bounded(on_image, on_image_total),
    }


def _scores(row: dict[str, Any]) -> str:
    if row.get("itm") is None:
        return "not scored"
    return f"itm {row['itm']:.4f}  itc {row['itc']:.4f}  threshold {row['threshold']:g}"


def _quoted(value: object, max_chars: int = NAME_CHARS) -> str:
    """``value`` quoted with ``repr`` (controls escaped), cut to ``max_chars`` characters
    with the count of the rest, so one huge text cannot flood the terminal."""
    if not isinstance(value, str) or len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}... ({len(value) - max_chars} more characters)"


def _verdict(row: dict[str, Any]) -> str:
    detail = f" ({_quoted(row['detail'])})" if row.get("detail") else ""
    return f"{row['decision']} [{row['reason']}]{detail}"


def _similarity(value: float | None) -> str:
    return "" if value is None else f", similarity {value:.4f}"


def format_explanation(record: dict[str, Any]) -> str:
    """An explanation as text for a terminal: data quoted with ``repr``, long values cut."""
    key = record["key"]
    lines = [f"key {_quoted(key)} in {printable(record['run'])}"]
    for row in record["web"]:
        lines.append(f"  input: {_quoted(row['source_file'])} row {row['source_row']}")
        lines.append(f"  web text: {_quoted(row['text'], TEXT_CHARS)}")
        lines.append(f"    {_verdict(row)}; {_scores(row)}")
    if record["image_key"] and record["image_key"] != key:
        lines.append(
            f"  its text was scored against image {_quoted(record['image_key'])} (a copy kept for it)"
        )
    for row in record["copy_of"]:
        lines.append(
            f"  removed as a {row['kind']} duplicate of {_quoted(row['dup_of'])}{_similarity(row['similarity'])}"
        )
    if record["captions"]:
        image = record["image_key"] or key
        lines.append(f"  synthetic captions of image {_quoted(image)}:")
        for row in record["captions"]:
            lines.append(f"    #{row['caption_index']} {_quoted(row['text'], TEXT_CHARS)}")
            lines.append(f"       {_verdict(row)}; {_scores(row)}")
    lines += _listing(
        "removed as duplicates of it",
        record["copies"],
        lambda row: [f"    {_quoted(row['key'])} ({row['kind']}{_similarity(row['similarity'])})"],
    )
    lines += _listing(
        "web texts of other keys scored against its image",
        record["texts_on_image"],
        lambda row: [
            f"    {_quoted(row['key'])}: {_quoted(row['text'], TEXT_CHARS)}",
            f"       {_verdict(row)}; {_scores(row)}",
        ],
    )
    return "\n".join(lines) + "\n"


def _listing(
    title: str, block: dict[str, Any], describe: Callable[[dict[str, Any]], list[str]]
) -> list[str]:
    """Lines of a bounded listing: its total, its rows, and how many more there are."""
    if not block["total"]:
        return []
    lines = [f"  {title}: {block['total']}"]
    for row in block["rows"]:
        lines += describe(row)
    if block["total"] > len(block["rows"]):
        lines.append(f"    ... {block['total'] - len(block['rows'])} more")
    return lines
