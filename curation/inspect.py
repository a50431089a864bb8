"""``curation inspect``: a dry run that reads and screens an input without any model.

Every row is counted exactly once, under the reason :mod:`curation.screen` gives it (the
same function the run uses, with the same settings), or ``ok``. So the counts per reason
are the web decisions ``curation run`` will record for them before the models.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from curation.config import InputSettings
from curation.decide import error_detail
from curation.footers import read_footers
from curation.inputs import resolve_inputs
from curation.layout import Layout, check_inputs
from curation.reader import ImageFiles, iter_rows
from curation.reasons import Reason, Stage
from curation.screen import KeyRegistry, Rejection, ScreenSettings, has_text, screen_pair
from curation.texts import empty_detail, printable

OK = "ok"
#: Every outcome inspect reports, in the order the rules apply.
OUTCOMES: tuple[str, ...] = (
    Reason.DUPLICATE_KEY.value,
    Reason.DOWNLOAD_FAILED.value,
    Reason.MISSING_IMAGE.value,
    Reason.UNSUPPORTED_FORMAT.value,
    Reason.UNDECODABLE.value,
    Reason.TRUNCATED.value,
    Reason.TOO_SMALL.value,
    Reason.TOO_LARGE.value,
    Reason.EMPTY_TEXT.value,
    Reason.ERROR.value,
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
    partition_columns: list[str] = field(default_factory=list)  # from Hive folder names
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # key, detail
    notes: list[str] = field(default_factory=list)  # checks beyond rows (models, config)
    seconds: float = 0.0

    @property
    def usable_share(self) -> float:
        """Share of rows that go to the models (``ok`` or ``empty_text``: its image does)."""
        usable = self.counts[OK] + self.counts[Reason.EMPTY_TEXT.value]
        return usable / self.rows if self.rows else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "layout": self.layout.to_dict(),
            "files": list(self.files),
            "rows": self.rows,
            "counts": dict(self.counts),
            "usable_share": round(self.usable_share, 6),
            "file_rows": dict(self.file_rows),
            "partition_columns": list(self.partition_columns),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def inspect_input(
    settings: InputSettings, *, progress: bool = True, exclude: Sequence[str] = ()
) -> InspectReport:
    """Read and screen every row of the input and count rows per outcome.

    Raises :class:`~curation.errors.InputError` before reading rows when an input file is
    missing, not Parquet, or its columns cannot be used.
    """
    from curation.storage import Location

    excluded = Location(exclude[0]) if exclude else None
    files = resolve_inputs(list(settings.input), exclude=excluded)
    footers = read_footers(files)
    layout = check_inputs(
        files,
        settings.image_column,
        settings.text_column,
        settings.key_column,
        settings.drop_columns,
        footers,
    )
    partitioned = {name for item in files for name in item.partitions}
    report = InspectReport(
        layout=layout,
        files=[f.url for f in files],
        partition_columns=[n for n in layout.passthrough.names if n in partitioned],
    )
    screening = ScreenSettings.of(settings)
    images = ImageFiles(tuple(settings.image_roots), settings.max_image_bytes)
    keys = KeyRegistry()
    total = sum(sum(footer.row_counts) for footer in footers.values())
    meter = tqdm(
        total=total,
        unit=" rows",
        desc="inspect",
        file=sys.stderr,
        disable=not progress,
        mininterval=_PROGRESS_EVERY_S,
        leave=True,
    )
    start = time.monotonic()
    for item in files:
        report.file_rows[item.url] = 0
        for pair, error in iter_rows(item, layout, images):
            failure = (
                Rejection(pair, Reason.ERROR, error_detail(Stage.READ, error)) if error else None
            )
            outcome = failure or keys.check(pair) or screen_pair(pair, screening)
            if isinstance(outcome, Rejection):
                name, detail = outcome.reason.value, outcome.detail
            elif not has_text(pair.text):
                name, detail = Reason.EMPTY_TEXT.value, empty_detail(pair.text)
            else:
                name, detail = OK, None
            report.counts[name] += 1
            report.rows += 1
            report.file_rows[item.url] += 1
            examples = report.examples.setdefault(name, []) if name != OK else None
            if examples is not None and len(examples) < EXAMPLES_PER_REASON:
                examples.append({"key": pair.key, "detail": detail or ""})
            meter.update()
    meter.close()
    report.seconds = time.monotonic() - start
    return report


def format_report(report: InspectReport) -> str:
    """A readable summary: layout, files, rows and a table of counts per outcome.

    Names and values from the data (columns, paths, keys, details) are printed through
    :func:`curation.texts.printable`, so no control sequence in them reaches the terminal.
    """
    layout = report.layout
    lines = [
        f"layout:       {layout.kind}",
        f"image column: {printable(layout.image_column)}"
        + (" (struct bytes/path)" if layout.image_is_struct else ""),
        f"text column:  {printable(layout.text_column)}",
        "key column:   "
        + (
            printable(layout.key_column)
            if layout.key_column
            else "(derived from file path and row)"
        ),
    ]
    if layout.status_column:
        lines.append(
            f"status:       {printable(layout.status_column)}, "
            + (printable(layout.error_column) if layout.error_column else "no error column")
        )
    passthrough = ", ".join(printable(name) for name in layout.passthrough.names) or "(none)"
    lines.append(f"passthrough:  {passthrough}")
    if report.partition_columns:
        names = ", ".join(printable(name) for name in report.partition_columns)
        lines.append(f"              {names} from Hive partition folders (name=value)")
    for source, target in layout.renamed:
        lines.append(
            f"              {printable(source)} is written as {printable(target)} (an output "
            "column has its name)"
        )
    lines.append(f"files:        {len(report.files)}")
    lines += [f"  {printable(path)}  {report.file_rows.get(path, 0)} rows" for path in report.files]
    lines.append(f"rows:         {report.rows}")
    lines.append("")
    width = max(len(name) for name in report.counts)
    lines.append(f"{'outcome':<{width}}  {'rows':>10}  {'share':>7}")
    for name, count in report.counts.items():
        share = 100.0 * count / report.rows if report.rows else 0.0
        lines.append(f"{name:<{width}}  {count:>10}  {share:>6.1f}%")
    for name in (n for n in report.counts if n in report.examples):
        lines.append("")
        lines.append(f"{name} examples:")
        lines += [
            f"  {printable(e['key'], 120)}: {printable(e['detail'])}"
            if e["detail"]
            else f"  {printable(e['key'], 120)}"
            for e in report.examples[name]
        ]
    for note in report.notes:
        lines.append(f"note: {printable(note, 1000)}")
    return "\n".join(lines)
