"""Which image of a duplicate group is kept: one deterministic rule per kind of group.

Both rules are total orders on the candidates, so the choice does not depend on the order
in which the group is given (shuffled input, a different runner, a resumed run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CopyCandidate:
    """An image as seen by copy grouping (before the models)."""

    key: str
    sha256: str
    phash: int  # 64-bit perceptual hash in [0, 2**64)
    width: int
    height: int


@dataclass(frozen=True)
class NearCandidate:
    """An image as seen by near-duplicate removal (after scoring)."""

    key: str
    kept_texts: int  # web texts and synthetic captions kept by the filter
    best_itm: float  # highest ITM probability over its texts


def copy_rank(item: CopyCandidate) -> tuple[int, str]:
    """Sort key of the copies rule: the largest image (width * height) first, then the smallest key."""
    return (-item.width * item.height, item.key)


def near_rank(item: NearCandidate) -> tuple[int, float, str]:
    """Sort key of the near-duplicate rule: most kept texts, then highest ITM, then smallest key."""
    return (-item.kept_texts, -item.best_itm, item.key)


def choose_copy(group: Sequence[CopyCandidate]) -> CopyCandidate:
    """The copy to keep: the largest image (width * height), ties broken by the smallest key."""
    if not group:
        raise ValueError("cannot choose from an empty group")
    return min(group, key=copy_rank)
