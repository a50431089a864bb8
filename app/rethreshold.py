"""``curation rethreshold RUN_DIR --threshold T``: decide every scored text again, without models."""

from __future__ import annotations

import click

from app.options import engine_options
from pipelines.publish import republish


@click.command("rethreshold")
@click.argument("run_dir")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    required=True,
    help="Keep a text when its ITM probability >= this.",
)
@click.option(
    "--synthetic-threshold",
    type=click.FloatRange(0, 1),
    help="Threshold of synthetic captions  [default: the same as --threshold].",
)
@engine_options
def rethreshold_command(
    run_dir: str,
    threshold: float,
    synthetic_threshold: float | None,
    workers: int,
    beam_args: tuple[str, ...],
) -> None:
    """Decide every scored text of RUN_DIR again at another ITM threshold, from the stored
    scores, and republish clean/, synthetic/, decisions/, the index and the manifest
    (near-duplicate removal is redone on the new kept set). The result equals a fresh
    `curation run` at that threshold; the manifest's history records every threshold applied.

    \b
    Example:
      curation rethreshold runs/r1 --threshold 0.6 --synthetic-threshold 0.7
    """
    manifest = republish(
        run_dir,
        "rethreshold",
        threshold=threshold,
        synthetic_threshold=synthetic_threshold,
        workers=workers,
        beam_args=beam_args,
    )
    texts = manifest["texts"]
    click.echo(
        f"threshold {manifest['config']['threshold']} (synthetic "
        f"{manifest['config']['synthetic_threshold']}): web kept {texts['web']['kept']}, "
        f"synthetic kept {texts['synthetic']['kept']}"
    )
    for name, info in manifest["tables"].items():
        click.echo(f"  {name + '/':<14} {info['rows']:>10} rows")
    click.echo(f"  {'index/':<14} {manifest['index']['count']:>10} images")
