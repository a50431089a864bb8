"""``curation report RUN_DIR``: an offline HTML report of a finished run, without models."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("run_dir")
@click.option(
    "--compare",
    metavar="RUN_B",
    help="Another run folder: add a section comparing this run (A) with it (B).",
)
def report_command(run_dir: str, compare: str | None) -> None:
    """Write RUN_DIR/report.html (opens from disk, no network) and print its path.

    \b
    Example:
      curation report runs/r2 --compare runs/r1
    """
    from curation.audit.report import write_report

    click.echo(write_report(run_dir, compare))
