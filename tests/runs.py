"""Reading a finished run folder in tests, the way a user's script would."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def manifest(run: Path) -> dict:
    return json.loads((Path(run) / "manifest.json").read_text())


def index_files(run: Path) -> tuple[Path, Path]:
    """The FAISS index file and the id table that ``index/index.json`` names."""
    info = json.loads((Path(run) / "index" / "index.json").read_text())
    return Path(run) / "index" / info["files"]["index"], Path(run) / "index" / info["files"]["ids"]


def stage_table(run: Path, name: str) -> pa.Table:
    """A staged table of the last complete pipeline."""
    listing = json.loads((Path(run) / "_stage" / "stage.json").read_text())
    files = [Path(run) / f for f in listing["tables"][name]]
    return pa.concat_tables(pq.read_table(f) for f in files)
