"""The CapFilt keep rule and the thresholds it applies, defined once.

A text is kept when its ITM match probability is at least the threshold (salesforce/BLIP
issue #46), for web texts and synthetic captions alike; the two may have their own
thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass


def keeps(itm: float, threshold: float) -> bool:
    """The CapFilt rule: a text is kept when its ITM probability is at least the threshold."""
    return itm >= threshold


@dataclass(frozen=True)
class Thresholds:
    """The ITM thresholds of web texts and synthetic captions."""

    web: float
    synthetic: float

    @classmethod
    def of(cls, threshold: float, synthetic: float | None = None) -> Thresholds:
        return cls(threshold, threshold if synthetic is None else synthetic)
