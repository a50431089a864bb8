"""``manifest.json``: everything needed to reproduce and audit a run.

Configuration, model names and revisions, package versions (read from installed metadata,
without importing the packages), the Python version, input files with their sizes, counts
for every reason of the vocabulary (zero when none), timings and the creation time (UTC).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from curation.filesystems import file_size
from curation.reasons import Reason

MANIFEST_NAME = "manifest.json"
PACKAGES = (
    "capfilt-curation",
    "torch",
    "transformers",
    "apache-beam",
    "pyarrow",
    "faiss-cpu",
    "pillow",
    "numpy",
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


def _manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / MANIFEST_NAME


def write_manifest(
    path: str | Path,
    *,
    config: Mapping[str, Any],
    inputs: Sequence[str],
    counts: Mapping[str, int],
    timings: Mapping[str, float],
    models: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest; ``path`` is a ``.json`` file, or the run folder to hold ``manifest.json``.

    ``counts`` may hold keys outside the reason vocabulary (``rows``, ``ok``...): they are
    kept after the reasons. The file appears atomically. Returns the written dict.
    """
    all_counts = {reason.value: int(counts.get(reason.value, 0)) for reason in Reason}
    all_counts.update({k: int(v) for k, v in counts.items() if k not in all_counts})
    manifest: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": dict(config),
        "models": {name: dict(info) for name, info in (models or {}).items()},
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "inputs": [{"path": p, "bytes": file_size(p)} for p in inputs],
        "counts": all_counts,
        "timings": {k: float(v) for k, v in timings.items()},
    }
    clashes = sorted(set(extra or {}) & set(manifest))
    if clashes:
        raise ValueError(f"extra manifest keys clash with fixed ones: {', '.join(clashes)}")
    manifest.update(extra or {})
    target = _manifest_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(temporary, target)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest; ``path`` is a ``.json`` file or the run folder."""
    return json.loads(_manifest_path(path).read_text())
