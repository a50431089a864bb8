"""The dead-letter pattern of every per-element stage: a failure is a decision, not a crash.

A :class:`GuardedDoFn` runs its stage on one element; when the stage raises, every input
row the element stands for gets an ``error`` decision whose detail names the stage and the
exception, on the ``errors`` output, and the job goes on. Outputs are produced completely
before any is emitted, so a failing element never emits part of its rows and an error too.
A stage whose elements are large (a row group) emits them in parts, each once complete;
a failure then gives ``error`` decisions to the rows of the outputs not yet emitted only.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from curation.decide import Row, error_detail, error_row
from curation.reasons import Stage
from curation.records import Pair

NAMESPACE = "curation"
ERRORS = "errors"


class GuardedDoFn(beam.DoFn):
    """A DoFn whose :meth:`apply` failures become ``error`` decisions of the element's rows."""

    stage: Stage

    def __init__(self, run_id: str, threshold: float) -> None:
        super().__init__()
        self._run_id = run_id
        self._threshold = threshold
        self._errors = Metrics.counter(NAMESPACE, "errors")

    @abstractmethod
    def apply(self, element: Any) -> Iterable[Any]:
        """The stage's work on one element (outputs, tagged or not), emitted at once; a
        stage that emits in parts overrides :meth:`parts` instead."""

    def parts(self, element: Any) -> Iterator[Iterable[Any]]:
        """The stage's outputs for one element in parts, each emitted once complete: one
        part, :meth:`apply`, unless the stage emits large elements in pieces."""
        yield self.apply(element)

    @abstractmethod
    def rows_of(self, element: Any) -> Iterable[tuple[Pair, str | None]]:
        """The input rows an element stands for, with the image key they were scored under."""

    def rows_after(self, element: Any, emitted: int) -> Iterable[tuple[Pair, str | None]]:
        """The rows of an element's outputs after its first ``emitted`` ones: a stage that
        emits in :meth:`parts` says which; otherwise nothing was emitted, and all rows."""
        return self.rows_of(element)

    def process(self, element: Any) -> Iterator[Any]:
        emitted = 0
        try:
            for part in self.parts(element):
                outputs = list(part)
                yield from outputs
                emitted += len(outputs)
        except Exception as error:  # noqa: BLE001 - any failure of one element is recorded
            detail = error_detail(self.stage, error)
            for pair, image_key in self.rows_after(element, emitted):
                self._errors.inc()
                yield TaggedOutput(
                    ERRORS, error_row(pair, detail, self._run_id, self._threshold, image_key)
                )


def failure_rows(
    pairs: Iterable[tuple[Pair, str | None]], detail: str, run_id: str, threshold: float
) -> list[Row]:
    """``error`` decisions for rows whose element failed outside a :class:`GuardedDoFn`."""
    errors = Metrics.counter(NAMESPACE, "errors")
    rows = []
    for pair, image_key in pairs:
        errors.inc()
        rows.append(error_row(pair, detail, run_id, threshold, image_key))
    return rows
