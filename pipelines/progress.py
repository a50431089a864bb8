"""Live progress for local runs.

Pipeline steps add to :class:`ProgressCounter`s, which every worker process flushes to
small JSON files under ``<run>/_progress/``; :class:`ProgressDisplay` (a thread in the
launching process) sums them and redraws one status line on stderr. This works the same
for in-process and multi-process runs; remote runners show their own metrics instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TextIO

PROGRESS_DIR = "_progress"


class ProgressCounter:
    """Counts events in one worker and flushes them to its own file at most once a second."""

    def __init__(self, folder: str | Path):
        self._folder = Path(folder)
        self._path: Path | None = None
        self._counts: Counter[str] = Counter()
        self._last = 0.0

    def add(self, name: str, n: int = 1) -> None:
        self._counts[name] += n
        if time.monotonic() - self._last > 1.0:
            self.flush()

    def flush(self) -> None:
        if self._path is None:
            self._folder.mkdir(parents=True, exist_ok=True)
            self._path = self._folder / f"{os.getpid()}-{uuid.uuid4().hex}.json"
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._counts))
        os.replace(tmp, self._path)
        self._last = time.monotonic()


def read_progress(folder: str | Path) -> Counter[str]:
    """Sum of every worker's counters."""
    total: Counter[str] = Counter()
    for path in Path(folder).glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return total


def _eta(seconds: float) -> str:
    if seconds <= 0 or seconds != seconds or seconds > 1e7:
        return "--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressDisplay:
    """Redraws ``rows read, kept, dropped, rate, ETA`` on a terminal line until stopped."""

    def __init__(
        self,
        folder: str | Path,
        total_rows: int,
        stream: TextIO | None = None,
        interval: float = 1.0,
    ):
        self._folder = Path(folder)
        self._total = total_rows
        self._stream = stream or sys.stderr
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def line(self) -> str:
        counts = read_progress(self._folder)
        read, done = counts.get("rows_read", 0), counts.get("rows_decided", 0)
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = done / elapsed
        eta = _eta((self._total - done) / rate) if rate > 0 else "--"
        return (
            f"rows read {read}/{self._total} | decided {done} | texts kept {counts.get('kept', 0)}"
            f" dropped {counts.get('dropped', 0)} | images scored {counts.get('images_scored', 0)}"
            f" (cached {counts.get('images_cached', 0)}) | {rate:.1f} rows/s | ETA {eta}"
        )

    def _loop(self) -> None:
        tty = self._stream.isatty()
        last = 0.0
        while not self._stop.wait(self._interval):
            if tty:
                self._stream.write("\r" + self.line()[:200].ljust(120))
                self._stream.flush()
            elif time.monotonic() - last > 10:
                self._stream.write(self.line() + "\n")
                last = time.monotonic()

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._stream.write(("\r" if self._stream.isatty() else "") + self.line() + "\n")
        self._stream.flush()
