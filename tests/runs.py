"""Reading a finished run folder in tests, the way a user's script would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
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


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Start ``args`` and SIGKILL it once ``ready()`` (checked every 20 ms) holds."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def gradient_rows(n: int) -> list[dict]:
    """``n`` distinct generated images, keyed ``g000``..., with texts."""
    from images import gradient, jpeg_bytes

    return [
        {"key": f"g{i:03d}", "image": jpeg_bytes(gradient(96, 80, seed=i)), "text": f"picture {i}"}
        for i in range(n)
    ]


def corrupt_pages(path: Path) -> None:
    """Scramble the middle half of every column chunk of a Parquet file, footer untouched:
    its metadata still reads, its pages do not."""
    for group in range(pq.read_metadata(path).num_row_groups):
        corrupt_row_group(path, group)
    try:
        pq.read_table(path)
    except (pa.ArrowException, OSError):
        return
    raise AssertionError(f"{path}: scrambled pages still read")


def corrupt_row_group(path: Path, group: int) -> None:
    """Scramble the middle half of every column chunk of row group ``group`` of a Parquet
    file, footer untouched."""
    data = bytearray(path.read_bytes())
    metadata = pq.read_metadata(path)
    row_group = metadata.row_group(group)
    for column in range(metadata.num_columns):
        chunk = row_group.column(column)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        size = chunk.total_compressed_size
        for offset in range(start + size // 4, start + 3 * size // 4):
            data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    assert pq.read_metadata(path).num_rows == metadata.num_rows
