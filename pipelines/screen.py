"""Screening before the models: image checks and hashes per row, then the duplicate-key rule."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from curation.reasons import Stage
from curation.records import HashedPair, Pair
from curation.screen import Rejection, ScreenSettings, duplicate_key, first_occurrence, screen_pair
from pipelines.guarded import ERRORS, GuardedDoFn

REJECTED = "rejected"


class ScreenFn(GuardedDoFn):
    """Decodes and hashes a row's image (:func:`curation.screen.screen_pair`)."""

    stage = Stage.SCREEN

    def __init__(self, settings: ScreenSettings, run_id: str, threshold: float) -> None:
        super().__init__(run_id, threshold)
        self._settings = settings

    def apply(self, pair: Pair) -> Iterator[Any]:
        outcome = screen_pair(pair, self._settings)
        yield TaggedOutput(REJECTED, outcome) if isinstance(outcome, Rejection) else outcome

    def rows_of(self, pair: Pair) -> Iterable[tuple[Pair, str | None]]:
        yield pair, None


Screened = HashedPair | Rejection


def _pair_of(outcome: Screened) -> Pair:
    return outcome.pair


class FirstKeyWinsFn(GuardedDoFn):
    """Of the rows sharing a key, the first in input order keeps it; later ones are dropped
    as ``duplicate_key`` (:mod:`curation.screen`, rule 1)."""

    stage = Stage.KEYS

    def __init__(self, file_order: dict[str, int], run_id: str, threshold: float) -> None:
        super().__init__(run_id, threshold)
        self._file_order = file_order

    def apply(self, element: tuple[str, Iterable[Screened]]) -> Iterator[Any]:
        outcomes = list(element[1])
        if len(outcomes) == 1:
            winner = outcomes[0]
        else:
            first = first_occurrence((_pair_of(o) for o in outcomes), self._file_order)
            winner = next(o for o in outcomes if _pair_of(o) is first)
            for other in outcomes:
                if other is not winner:
                    yield TaggedOutput(REJECTED, duplicate_key(_pair_of(other), first))
        yield TaggedOutput(REJECTED, winner) if isinstance(winner, Rejection) else winner

    def rows_of(self, element: tuple[str, Iterable[Screened]]) -> Iterable[tuple[Pair, str | None]]:
        for outcome in element[1]:
            yield _pair_of(outcome), None


class Screen(beam.PTransform):
    """Pairs -> hashed pairs (main) and rejections, ``errors`` for rows a step failed on.

    With a key column, every row's outcome (no image bytes) is grouped by key so that the
    duplicate-key rule sees all rows of a key; derived keys are unique and skip it.
    """

    def __init__(
        self,
        settings: ScreenSettings,
        file_order: dict[str, int] | None,
        run_id: str,
        threshold: float,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._file_order = file_order
        self._run_id = run_id
        self._threshold = threshold

    def expand(self, pairs: beam.PCollection) -> dict[str, beam.PCollection]:
        screened = pairs | "Decode" >> beam.ParDo(
            ScreenFn(self._settings, self._run_id, self._threshold)
        ).with_outputs(REJECTED, ERRORS, main="hashed")
        if self._file_order is None:
            return {
                "hashed": screened.hashed,
                REJECTED: screened[REJECTED],
                ERRORS: screened[ERRORS],
            }
        outcomes = (screened.hashed, screened[REJECTED]) | "AllOutcomes" >> beam.Flatten()
        keyed = (
            outcomes
            | "ByKey" >> beam.Map(lambda o: (_pair_of(o).key, o))
            | "GroupKeys" >> beam.GroupByKey()
            | "FirstKeyWins"
            >> beam.ParDo(
                FirstKeyWinsFn(self._file_order, self._run_id, self._threshold)
            ).with_outputs(REJECTED, ERRORS, main="hashed")
        )
        errors = (screened[ERRORS], keyed[ERRORS]) | "ScreenErrors" >> beam.Flatten()
        return {"hashed": keyed.hashed, REJECTED: keyed[REJECTED], ERRORS: errors}
