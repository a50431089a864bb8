"""``curation diff RUN_A RUN_B``: counts per reason side by side and changed decisions."""

from __future__ import annotations

import json

import click

from curation.errors import UsageError


@click.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option(
    "--limit",
    type=int,
    default=50,
    show_default=True,
    help="Changed texts listed per direction (counts are always complete).",
)
def diff_command(run_a: str, run_b: str, as_json: bool, limit: int) -> None:
    """Compare two runs: counts per reason, and texts kept in one and dropped in the other.

    \b
    Example:
      curation diff runs/r1 runs/r2 --limit 20
    """
    from curation.audit.diff import diff_runs, format_diff
    from curation.audit.tables import RunTables

    if limit < 0:
        raise UsageError(f"invalid value for '--limit': {limit} (expected an integer >= 0)")
    diff = diff_runs(RunTables(run_a), RunTables(run_b), limit)
    click.echo(json.dumps(diff, indent=2) if as_json else format_diff(diff), nl=as_json)
