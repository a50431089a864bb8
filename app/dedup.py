"""``curation dedup RUN_DIR``: re-run near-duplicate removal over a finished run, without models."""

from __future__ import annotations

import time
from typing import Any

import click

from curation.errors import ConfigError
from curation.finalize import finalize_run
from curation.manifest import rebuild_manifest
from curation.run_folder import RunFolder, new_generation
from curation.schemas import run_schemas, schema_from_text
from curation.storage import Location


def rededup(
    run_dir: str, near_threshold: float | None = None, dedup_against: str | None = None
) -> dict[str, Any]:
    """Recompute near-duplicate and previous-round removal of a finished run; returns the
    new manifest. Settings not given are taken from the run's manifest (``dedup_against=""``
    clears the previous-round index). The final tables, index and manifest are republished
    from the staged tables; the models are not needed.
    """
    run = RunFolder.at(run_dir)
    with run.lock("dedup"):
        run.repair()
        manifest = run.read_manifest()
        if manifest is None:
            raise ConfigError(f"{run.url} is not a finished run folder (no manifest.json)")
        listing = run.read_stage_listing()
        config = manifest.get("config", {})
        threshold = (
            near_threshold if near_threshold is not None else config.get("near_threshold", 0.95)
        )
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(
                f"invalid value for 'near_threshold': {threshold!r} (expected a number in (0, 1])"
            )
        against = config.get("dedup_against") if dedup_against is None else (dedup_against or None)
        if against and run.root.contains(Location(against)):
            raise ConfigError(f"--dedup-against {against!r} is this run's own index")
        started = time.monotonic()
        generation = new_generation()
        result = finalize_run(
            run,
            near_threshold=threshold,
            dedup_against=against,
            run_id=manifest.get("run_id", ""),
            generation=generation,
            dimension=int(manifest["index"]["dimension"]),
            schemas=run_schemas(None) | {"clean": schema_from_text(listing["clean_schema"])},
        )
        new = rebuild_manifest(
            manifest,
            command="dedup",
            generation=generation,
            changes={"near_threshold": threshold, "dedup_against": against},
            result=result,
            timings={"dedup": time.monotonic() - started},
        )
        run.publish(new)
    return new


@click.command("dedup")
@click.argument("run_dir")
@click.option("--near-threshold", type=float, help="Cosine above which images are near duplicates.")
@click.option(
    "--dedup-against", help="A previous run's index/ folder to deduplicate against ('' clears it)."
)
def dedup_command(run_dir: str, near_threshold: float | None, dedup_against: str | None) -> None:
    """Re-run near-duplicate removal over RUN_DIR (e.g. with a new --near-threshold).

    \b
    Example:
      curation dedup runs/r1 --near-threshold 0.9
    """
    manifest = rededup(run_dir, near_threshold, dedup_against)
    click.echo(
        f"near_threshold {manifest['config']['near_threshold']}: duplicates {manifest['duplicates']}"
    )
    for name, info in manifest["tables"].items():
        click.echo(f"  {name + '/':<14} {info['rows']:>10} rows")
    click.echo(f"  {'index/':<14} {manifest['index']['count']:>10} images")
