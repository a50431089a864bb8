"""``manifest.json``: the committed state of a run, and everything needed to reproduce and
audit it.

Configuration, exact model identities, the device and dtype used, package versions (read
from installed metadata, without importing the packages), the Python version, input files
with their sizes and rows, final counts for every reason of the vocabulary (zero when
none), text counts per origin, the files of every table, the index, the pipeline's Beam
counters, error examples, timings, the creation time (UTC) and the history of commands
that produced the state. It is written last, atomically: see :mod:`curation.run_folder`.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from curation.finalize import FinalizeResult
from curation.reasons import Reason

PACKAGES = (
    "capfilt-curation",
    "torch",
    "transformers",
    "apache-beam",
    "pyarrow",
    "faiss-cpu",
    "pillow",
    "numpy",
    "fsspec",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each package that shapes the outputs (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    """The current UTC time, ISO format to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def result_section(result: FinalizeResult) -> dict[str, Any]:
    """The parts of the manifest a finalize step determines."""
    errors = result.reasons.get(Reason.ERROR.value, 0)
    return {
        "counts": {reason.value: int(result.reasons.get(reason.value, 0)) for reason in Reason},
        "texts": result.texts,
        "duplicates": result.duplicates,
        "tables": {name: asdict(files) for name, files in result.tables.items()},
        "index": result.index,
        "errors": {"count": errors, "examples": list(result.error_examples)},
    }


def build_manifest(
    *,
    run_id: str,
    generation: str,
    command: str,
    config: Mapping[str, Any],
    result: FinalizeResult,
    timings: Mapping[str, float],
    history: list[dict[str, Any]],
    changes: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete manifest; ``history`` is the previous state's, to which this command is
    added with the settings it ``changes``; ``extra`` adds run facts (inputs, models, pipeline
    counters...)."""
    manifest: dict[str, Any] = {
        "created_at": now(),
        "run_id": run_id,
        "generation": generation,
        "command": command,
        "config": dict(config),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **result_section(result),
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        "history": history
        + [{"command": command, "at": now(), "generation": generation, **(changes or {})}],
    }
    clashes = sorted(set(extra or {}) & set(manifest))
    if clashes:
        raise ValueError(f"extra manifest keys clash with fixed ones: {', '.join(clashes)}")
    manifest.update(extra or {})
    return manifest


def rebuild_manifest(
    previous: Mapping[str, Any],
    *,
    command: str,
    generation: str,
    changes: Mapping[str, Any],
    result: FinalizeResult,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """The manifest of a state derived from ``previous`` by a model-free command (dedup,
    rethreshold): the run's facts are kept, settings in ``changes`` and the results replaced."""
    fixed = {"created_at", "run_id", "generation", "command", "config", "packages", "python"}
    fixed |= {"platform", "timings", "history", *result_section(result)}
    extra = {k: v for k, v in previous.items() if k not in fixed}
    return build_manifest(
        run_id=previous.get("run_id", ""),
        generation=generation,
        command=command,
        config={**previous.get("config", {}), **changes},
        result=result,
        timings={**previous.get("timings", {}), **timings},
        history=list(previous.get("history", [])),
        changes=changes,
        extra=extra,
    )
