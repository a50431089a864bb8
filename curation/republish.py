"""Publishing a finished run again with other settings, without models.

``curation dedup`` (near-duplicate settings) and ``curation rethreshold`` (ITM thresholds)
both re-run finalize over the run's staged tables with the changed settings and commit the
result as a new generation, under the run lock. A setting not given keeps the run's value.
"""

from __future__ import annotations

import time
from typing import Any

from curation.errors import ConfigError
from curation.finalize import finalize_run
from curation.manifest import rebuild_manifest
from curation.run_folder import RunFolder, new_generation
from curation.schemas import run_schemas, schema_from_text
from curation.storage import Location
from curation.thresholds import Thresholds

_UNIT = (0.0, 1.0)


def _check(name: str, value: float, low_open: bool = False) -> float:
    low, high = _UNIT
    if not (low < value <= high if low_open else low <= value <= high):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(
            f"invalid value for {name!r}: {value!r} (expected a number in {interval})"
        )
    return value


def republish(
    run_dir: str,
    command: str,
    *,
    threshold: float | None = None,
    synthetic_threshold: float | None = None,
    near_threshold: float | None = None,
    dedup_against: str | None = None,
) -> dict[str, Any]:
    """Finalize ``run_dir`` again with the given settings and commit it; returns the manifest.

    ``dedup_against=""`` clears the previous-round index; ``synthetic_threshold`` defaults to
    the run's own (which defaults to the web threshold).
    """
    run = RunFolder.at(run_dir)
    with run.lock(command):
        run.repair()
        manifest = run.read_manifest()
        if manifest is None:
            raise ConfigError(f"{run.url} is not a finished run folder (no manifest.json)")
        listing = run.read_stage_listing()
        config = manifest.get("config", {})
        web = _check("threshold", threshold if threshold is not None else config["threshold"])
        if synthetic_threshold is None:
            synthetic_threshold = (
                web if threshold is not None else config.get("synthetic_threshold")
            )
        thresholds = Thresholds.of(web, synthetic_threshold)
        _check("synthetic_threshold", thresholds.synthetic)
        near = _check(
            "near_threshold",
            near_threshold if near_threshold is not None else config.get("near_threshold", 0.95),
            low_open=True,
        )
        against = config.get("dedup_against") if dedup_against is None else (dedup_against or None)
        if against and run.root.contains(Location(against)):
            raise ConfigError(f"--dedup-against {against!r} is this run's own index")
        started = time.monotonic()
        generation = new_generation()
        result = finalize_run(
            run,
            thresholds=thresholds,
            near_threshold=near,
            dedup_against=against,
            run_id=manifest.get("run_id", ""),
            generation=generation,
            dimension=int(manifest["index"]["dimension"]),
            schemas=run_schemas(None) | {"clean": schema_from_text(listing["clean_schema"])},
        )
        changes = {
            "threshold": thresholds.web,
            "synthetic_threshold": thresholds.synthetic,
            "near_threshold": near,
            "dedup_against": against,
        }
        new = rebuild_manifest(
            manifest,
            command=command,
            generation=generation,
            changes=changes,
            result=result,
            timings={command: time.monotonic() - started},
        )
        run.publish(new)
    return new
