"""``curation dedup RUN_DIR``: re-run near-duplicate removal over a finished run, without models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from curation.errors import UsageError


def rededup(
    run_dir: str | Path, near_threshold: float | None = None, dedup_against: str | None = None
) -> dict:
    """Recompute near-duplicate and previous-round removal of a finished run; returns the manifest.

    Settings not given are taken from the run's manifest. The run's final tables, index and
    manifest are rewritten from its staged tables; the models are not needed.
    """
    from curation.finalize import STAGE_DIR, finalize_run, summarize

    run = Path(run_dir)
    manifest_path = run / "manifest.json"
    if not manifest_path.is_file() or not (run / STAGE_DIR / "images").is_dir():
        raise UsageError(
            f"{run} is not a finished run folder (no manifest.json or {STAGE_DIR}/images)"
        )
    manifest = json.loads(manifest_path.read_text())
    config = manifest.get("config", {})
    threshold = near_threshold if near_threshold is not None else config.get("near_threshold", 0.95)
    if not 0.0 < threshold <= 1.0:
        raise UsageError(
            f"invalid value for 'near_threshold': {threshold!r} (expected a number in (0, 1])"
        )
    against = dedup_against if dedup_against is not None else config.get("dedup_against")
    started = time.monotonic()
    result = finalize_run(
        run, near_threshold=threshold, dedup_against=against, run_id=manifest.get("run_id", "")
    )
    config.update({"near_threshold": threshold, "dedup_against": against})
    manifest["config"] = config
    manifest["counts"] = result.reasons
    manifest["tables"] = summarize(result)
    manifest.setdefault("timings", {})["dedup"] = time.monotonic() - started
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@click.command("dedup")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--near-threshold", type=float, help="Cosine above which images are near duplicates.")
@click.option("--dedup-against", help="A previous run's index/ folder to deduplicate against.")
def dedup_command(run_dir: str, near_threshold: float | None, dedup_against: str | None) -> None:
    """Re-run near-duplicate removal over RUN_DIR (e.g. with a new --near-threshold).

    \b
    Example:
      curation dedup runs/r1 --near-threshold 0.9
    """
    manifest = rededup(run_dir, near_threshold, dedup_against)
    tables = manifest["tables"]
    click.echo(
        f"near_threshold {manifest['config']['near_threshold']}: duplicates {tables['duplicates']}"
    )
    for name, n in tables["rows"].items():
        click.echo(f"  {name + '/':<14} {n:>10} rows")
    click.echo(f"  {'index/':<14} {tables['indexed_images']:>10} images")
