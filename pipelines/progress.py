"""The live progress line, from Beam's own metrics only.

Runners that hand back a running job (Dataflow, portable runners) are polled with
``PipelineResult.metrics()`` and the line shows rows read, decisions, images scored, the
rate and an ETA. The local runner runs the job inside ``Pipeline.run()`` and reports its
metrics only when the job ends, so its line shows the elapsed time and says that counts
follow: it never shows numbers it does not have.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from apache_beam.runners.runner import PipelineState

from pipelines.guarded import NAMESPACE


def beam_counters(result: Any) -> dict[str, int]:
    """The pipeline's ``curation`` counters (rows read, decisions per reason, ...), as the
    runner has them now."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    query = _current_metrics(result).query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    return dict(sorted(totals.items()))


def _current_metrics(result: Any) -> Any:
    """``result.metrics()`` asked again: the portable runner's result keeps its first answer,
    which a poll during the job would otherwise leave as the final counts."""
    from apache_beam.runners.portability.portable_runner import PipelineResult

    if isinstance(result, PipelineResult):
        result._metrics = None
    return result.metrics()


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds < 0 or seconds > 1e7:
        return "--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def counters_line(counts: dict[str, int], total_rows: int, elapsed: float) -> str:
    """``rows read, decided, kept/dropped, images scored, rate, ETA`` from Beam counters."""
    read = counts.get("rows_read", 0)
    decided = counts.get("decision_kept", 0) + counts.get("decision_dropped", 0)
    rate = read / elapsed if elapsed > 0 else 0.0
    eta = _clock((total_rows - read) / rate) if rate > 0 else "--"
    return (
        f"rows read {read}/{total_rows} | texts decided {decided}"
        f" (kept {counts.get('decision_kept', 0)}) | images scored"
        f" {counts.get('images_scored', 0)} (cached {counts.get('images_cached', 0)})"
        f" | errors {counts.get('errors', 0)} | {rate:.1f} rows/s | ETA {eta}"
    )


class LiveLine:
    """Redraws one status line on a terminal (a line every 30 s otherwise)."""

    def __init__(self, total_rows: int, stream: TextIO | None = None, interval: float = 2.0):
        self._total = total_rows
        self._stream = stream or sys.stderr
        self._interval = interval
        self._start = time.monotonic()
        self._last_plain = 0.0

    def _show(self, text: str) -> None:
        if self._stream.isatty():
            self._stream.write("\r" + text[:200].ljust(120))
        elif time.monotonic() - self._last_plain >= 30:
            self._stream.write(text + "\n")
            self._last_plain = time.monotonic()
        self._stream.flush()

    def _end(self) -> None:
        if self._stream.isatty():
            self._stream.write("\n")
            self._stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def local(self, workers: int) -> _LocalLine:
        """A context that shows the elapsed time while the local runner works."""
        return _LocalLine(self, workers)

    def poll(self, result: Any) -> None:
        """Show Beam's counters of a running job until it ends."""
        while not PipelineState.is_terminal(result.state):
            try:
                counts = beam_counters(result)
            except Exception:  # noqa: BLE001 - a runner may not serve metrics mid-job
                counts = None
            if counts is None:
                self._show(f"job running on the runner: {_clock(self.elapsed())} elapsed")
            else:
                self._show(counters_line(counts, self._total, self.elapsed()))
            time.sleep(self._interval)
        self._end()


class _LocalLine:
    def __init__(self, line: LiveLine, workers: int) -> None:
        self._line = line
        self._workers = workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        what = "in-process" if self._workers == 1 else f"{self._workers} worker processes"
        while True:
            self._line._show(
                f"local runner ({what}): {_clock(self._line.elapsed())} elapsed;"
                " counts follow when the pipeline finishes"
            )
            if self._stop.wait(self._line._interval):
                return

    def __enter__(self) -> _LocalLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._line._end()
