"""``curation explain RUN_DIR KEY``: everything a run recorded about one input key."""

from __future__ import annotations

import json

import click


@click.command("explain")
@click.argument("run_dir")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def explain_command(run_dir: str, key: str, as_json: bool) -> None:
    """Why KEY was kept or dropped: its web text, captions, scores, reasons and copies.

    \b
    Example:
      curation explain runs/r1 000123456
    """
    from curation.audit.explain import explain_key, format_explanation
    from curation.audit.tables import RunTables

    record = explain_key(RunTables(run_dir), key)
    click.echo(json.dumps(record, indent=2) if as_json else format_explanation(record), nl=as_json)
