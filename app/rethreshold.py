"""``curation rethreshold RUN_DIR --threshold T``: decide every scored text again, without models."""

from __future__ import annotations

from typing import Any

import click

from app.options import from_flags, settings_options
from curation.config import RepublishSettings


@click.command("rethreshold")
@click.argument("run_dir")
@settings_options(
    RepublishSettings, skip=("near_threshold", "dedup_against"), required=("threshold",)
)
def rethreshold_command(run_dir: str, **options: Any) -> None:
    """Decide every scored text of RUN_DIR again at another ITM threshold, from the stored
    scores, and republish clean/, synthetic/, decisions/, the index and the manifest
    (near-duplicate removal is redone on the new kept set). The result equals a fresh
    `curation run` at that threshold; the manifest's history records every threshold applied.

    \b
    Example:
      curation rethreshold runs/r1 --threshold 0.6 --synthetic-threshold 0.7
    """
    changes = from_flags(RepublishSettings, options)
    from pipelines.publish import republish

    manifest = republish(run_dir, "rethreshold", changes)
    texts = manifest["texts"]
    click.echo(
        f"threshold {manifest['config']['threshold']} (synthetic "
        f"{manifest['config']['synthetic_threshold']}): web kept {texts['web']['kept']}, "
        f"synthetic kept {texts['synthetic']['kept']}"
    )
    for name, info in manifest["tables"].items():
        click.echo(f"  {name + '/':<14} {info['rows']:>10} rows")
    click.echo(f"  {'index/':<14} {manifest['index']['count']:>10} images")
