"""``curation inspect``: a dry run that reads and decodes an input without any model.

Every row is counted exactly once, under the first reason that applies, in this order:
``download_failed`` (img2dataset status is not ``success``), then the image's own reason
(``missing_image``, ``undecodable``, ``truncated``, ``too_small``, ``too_large``), then
``empty_text`` (null or blank web text), else ``ok``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from curation.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from curation.reader import Layout, check_inputs, iter_pairs, resolve_inputs
from curation.reasons import Reason
from curation.records import Pair

OK = "ok"
#: Every outcome inspect reports, in the order checks apply.
OUTCOMES: tuple[str, ...] = (
    Reason.DOWNLOAD_FAILED.value,
    Reason.MISSING_IMAGE.value,
    Reason.UNDECODABLE.value,
    Reason.TRUNCATED.value,
    Reason.TOO_SMALL.value,
    Reason.TOO_LARGE.value,
    Reason.EMPTY_TEXT.value,
    OK,
)
EXAMPLES_PER_REASON = 3
_PROGRESS_EVERY_S = 2.0


@dataclass
class InspectReport:
    """What a dry run found: the layout, the files and how many rows fall under each outcome."""

    layout: Layout
    files: list[str]
    rows: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    file_rows: dict[str, int] = field(default_factory=dict)  # rows per input file
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # key, detail
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "layout": self.layout.to_dict(),
            "files": list(self.files),
            "rows": self.rows,
            "counts": dict(self.counts),
            "file_rows": dict(self.file_rows),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "seconds": round(self.seconds, 3),
        }


def classify(
    pair: Pair,
    size: int | None = None,
    min_side: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[str, str | None]:
    """The outcome of one pair before any model (see the module docstring) and a detail."""
    if pair.status is not None and pair.status != "success":
        return Reason.DOWNLOAD_FAILED.value, pair.error or pair.status
    try:
        decode_image(pair.image, size, min_side=min_side, max_pixels=max_pixels)
    except DecodeError as err:
        return err.reason.value, str(err)
    if pair.text is None or not pair.text.strip():
        return Reason.EMPTY_TEXT.value, None
    return OK, None


class _Progress:
    """Rows read and rate on stderr, at most every few seconds, only for long inputs."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def update(self, rows: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= _PROGRESS_EVERY_S:
            rate = rows / max(now - self.start, 1e-9)
            self.stream.write(f"\rread {rows} rows ({rate:.0f} rows/s)")
            self.stream.flush()
            self.last, self.shown = now, True

    def done(self, rows: int) -> None:
        if self.shown:
            elapsed = time.monotonic() - self.start
            self.stream.write(f"\rread {rows} rows in {elapsed:.1f} s\n")
            self.stream.flush()


def inspect_input(
    spec: str | Sequence[str],
    image_column: str | None = None,
    text_column: str | None = None,
    key_column: str | None = None,
    size: int | None = None,
    progress: bool = True,
    *,
    min_side: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> InspectReport:
    """Read and decode every row of the input and count rows per outcome.

    Raises :class:`~curation.errors.InputError` before reading rows when an input file is
    missing, not Parquet, or lacks a needed column.
    """
    files = resolve_inputs(spec)
    layout = check_inputs(files, image_column, text_column, key_column)
    report = InspectReport(layout=layout, files=files)
    meter = _Progress(progress, sys.stderr)
    start = time.monotonic()
    for path in files:
        report.file_rows[path] = 0
        for pair in iter_pairs(path, layout):
            outcome, detail = classify(pair, size, min_side, max_pixels)
            report.counts[outcome] += 1
            report.rows += 1
            report.file_rows[path] += 1
            examples = report.examples.setdefault(outcome, []) if outcome != OK else None
            if examples is not None and len(examples) < EXAMPLES_PER_REASON:
                examples.append({"key": pair.key, "detail": detail or ""})
            meter.update(report.rows)
    meter.done(report.rows)
    report.seconds = time.monotonic() - start
    return report


def format_report(report: InspectReport) -> str:
    """A readable summary: layout, files, rows and a table of counts per outcome."""
    layout = report.layout
    lines = [
        f"layout:       {layout.kind}",
        f"image column: {layout.image_column}"
        + (" (struct bytes/path)" if layout.image_is_struct else ""),
        f"text column:  {layout.text_column}",
        f"key column:   {layout.key_column or '(derived from file name and row)'}",
    ]
    if layout.status_column:
        lines.append(
            f"status:       {layout.status_column}, {layout.error_column or 'no error column'}"
        )
    lines.append(f"passthrough:  {', '.join(layout.passthrough) or '(none)'}")
    lines.append(f"files:        {len(report.files)}")
    lines += [f"  {path}  {report.file_rows.get(path, 0)} rows" for path in report.files]
    lines.append(f"rows:         {report.rows}")
    lines.append("")
    width = max(len(name) for name in report.counts)
    lines.append(f"{'outcome':<{width}}  {'rows':>10}  {'share':>7}")
    for name, count in report.counts.items():
        share = 100.0 * count / report.rows if report.rows else 0.0
        lines.append(f"{name:<{width}}  {count:>10}  {share:>6.1f}%")
    for name in (n for n in report.counts if n in report.examples):
        examples = report.examples[name]
        lines.append("")
        lines.append(f"{name} examples:")
        lines += [
            f"  {e['key']}: {e['detail']}" if e["detail"] else f"  {e['key']}" for e in examples
        ]
    return "\n".join(lines)
