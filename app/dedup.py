"""``curation dedup RUN_DIR``: re-run near-duplicate removal over a finished run, without models."""

from __future__ import annotations

import click

from app.options import engine_options
from pipelines.publish import republish


@click.command("dedup")
@click.argument("run_dir")
@click.option("--near-threshold", type=float, help="Cosine above which images are near duplicates.")
@click.option(
    "--dedup-against", help="A previous run's index/ folder to deduplicate against ('' clears it)."
)
@engine_options
def dedup_command(
    run_dir: str,
    near_threshold: float | None,
    dedup_against: str | None,
    workers: int,
    beam_args: tuple[str, ...],
) -> None:
    """Re-run near-duplicate removal over RUN_DIR (e.g. with a new --near-threshold).

    \b
    Example:
      curation dedup runs/r1 --near-threshold 0.9
    """
    manifest = republish(
        run_dir,
        "dedup",
        near_threshold=near_threshold,
        dedup_against=dedup_against,
        workers=workers,
        beam_args=beam_args,
    )
    click.echo(
        f"near_threshold {manifest['config']['near_threshold']}: duplicates {manifest['duplicates']}"
    )
    for name, info in manifest["tables"].items():
        click.echo(f"  {name + '/':<14} {info['rows']:>10} rows")
    click.echo(f"  {'index/':<14} {manifest['index']['count']:>10} images")
