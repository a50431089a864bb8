"""``curation inspect``: the dry run's command line (the logic is :mod:`curation.inspect`)."""

from __future__ import annotations

import json

import click

from curation.inspect import format_report, inspect_input


@click.command("inspect")
@click.argument("input_spec", metavar="INPUT", nargs=-1, required=True)
@click.option(
    "--image-column", default=None, help="Column holding image bytes (or a datasets Image struct)."
)
@click.option("--text-column", default=None, help="Column holding the web text.")
@click.option("--key-column", default=None, help="Column holding a unique key per row.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def inspect_command(
    input_spec: tuple[str, ...],
    image_column: str | None,
    text_column: str | None,
    key_column: str | None,
    as_json: bool,
) -> None:
    """Read and decode INPUT (Parquet files, a glob or a folder) without models; count rows per reason."""
    report = inspect_input(
        list(input_spec), image_column, text_column, key_column, progress=not as_json
    )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(format_report(report))
