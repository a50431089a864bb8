"""``curation dedup RUN_DIR``: re-run near-duplicate removal over a finished run, without models."""

from __future__ import annotations

from typing import Any

import click

from app.options import from_flags, settings_options
from curation.config import RepublishSettings


@click.command("dedup")
@click.argument("run_dir")
@settings_options(RepublishSettings, skip=("threshold", "synthetic_threshold"))
def dedup_command(run_dir: str, **options: Any) -> None:
    """Re-run near-duplicate removal over RUN_DIR (e.g. with a new --near-threshold).

    \b
    Example:
      curation dedup runs/r1 --near-threshold 0.9
    """
    changes = from_flags(RepublishSettings, options)
    from pipelines.publish import republish

    manifest = republish(run_dir, "dedup", changes)
    click.echo(
        f"near_threshold {manifest['config']['near_threshold']}: duplicates {manifest['duplicates']}"
    )
    for name, info in manifest["tables"].items():
        click.echo(f"  {name + '/':<14} {info['rows']:>10} rows")
    click.echo(f"  {'index/':<14} {manifest['index']['count']:>10} images")
