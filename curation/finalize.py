"""Finalize: what becomes of each staged row once thresholds and duplicate removal are known.

The staged tables of a pipeline hold every scored candidate (:mod:`curation.decide`).
Finalizing decides them at the run's thresholds (:func:`redecide`), removes images that
duplicate an earlier round's or another image of the run (:class:`Removal`), and keeps the
clean and synthetic rows the threshold keeps whose image was not removed (:func:`keeps_row`).
These are per-row functions; :mod:`pipelines.finalize` runs them, and the global steps
(near-duplicate search, the index), on the engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.dedup.keep import NearCandidate
from curation.reasons import Decision, DuplicateKind, Reason, TextOrigin
from curation.thresholds import Thresholds, keeps

Row = dict[str, Any]
_SCORED = frozenset({Reason.KEPT.value, Reason.LOW_ITM.value})
#: ``error`` decisions quoted in the manifest and summary.
ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class Removal:
    """An image removed after scoring, and the image it duplicates."""

    dup_of: str
    similarity: float
    kind: DuplicateKind

    def detail(self) -> str:
        return f"{self.kind.value} duplicate of {self.dup_of} (similarity {self.similarity:.4f})"


@dataclass(frozen=True)
class NearItem:
    """A scored unique image as near-duplicate removal and the index see it."""

    key: str
    sha256: str
    vector: np.ndarray  # unit float32
    kept_texts: int  # texts the thresholds keep (before duplicate removal)
    best_itm: float

    def candidate(self) -> NearCandidate:
        return NearCandidate(self.key, self.kept_texts, self.best_itm)


def near_item(image: Row, kept_texts: int) -> NearItem:
    """A staged ``images`` row with its kept-text count at the run's thresholds."""
    return NearItem(
        key=image["key"],
        sha256=image["sha256"],
        vector=np.asarray(image["embedding"], dtype=np.float32),
        kept_texts=kept_texts,
        best_itm=float(image["best_itm"]),
    )


def redecide(row: Row, thresholds: Thresholds) -> Row:
    """A staged decision made again at ``thresholds``: scored texts kept or dropped by the
    rule, every row given its origin's threshold; other reasons stay."""
    origin = TextOrigin(row["text_origin"])
    threshold = thresholds.web if origin is TextOrigin.WEB else thresholds.synthetic
    reason = row["reason"]
    if reason in _SCORED and row["itm"] is not None:
        reason = (Reason.KEPT if keeps(row["itm"], threshold) else Reason.LOW_ITM).value
    decision = Decision.KEPT if reason == Reason.KEPT.value else Decision.DROPPED
    return {**row, "reason": reason, "decision": decision.value, "threshold": threshold}


def mark_duplicate(row: Row, removal: Removal) -> Row:
    """A kept decision of a removed image, dropped as ``duplicate`` with the removal's detail."""
    return {
        **row,
        "decision": Decision.DROPPED.value,
        "reason": Reason.DUPLICATE.value,
        "detail": removal.detail(),
    }


def keeps_row(row: Row, threshold: float) -> bool:
    """A staged clean or synthetic candidate the threshold keeps."""
    return row["itm"] is not None and keeps(row["itm"], threshold)


@dataclass(frozen=True)
class TableFiles:
    """The files of one final table and its row count."""

    files: list[str]  # relative to the run folder
    rows: int


@dataclass
class FinalizeResult:
    """What a finalize step wrote and counted (what the manifest records)."""

    tables: dict[str, TableFiles] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    texts: dict[str, dict[str, int]] = field(default_factory=dict)  # origin -> decision -> n
    duplicates: dict[str, int] = field(default_factory=dict)
    error_examples: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, tables: dict[str, TableFiles], listing: Mapping[str, Any]) -> FinalizeResult:
        """The result from the written tables and the step's listing (counts, index, error
        examples)."""
        counts: Mapping[str, int] = listing.get("counts", {})
        return cls(
            tables=tables,
            reasons={r.value: int(counts.get(f"reason:{r.value}", 0)) for r in Reason},
            texts={
                origin.value: {
                    d.value: int(counts.get(f"text:{origin.value}:{d.value}", 0)) for d in Decision
                }
                for origin in TextOrigin
            },
            duplicates={
                k.value: int(counts[f"duplicate:{k.value}"])
                for k in DuplicateKind
                if counts.get(f"duplicate:{k.value}")
            },
            error_examples=list(listing.get("errors", [])),
            index=dict(listing.get("index", {})),
        )


def decision_counts(row: Row) -> tuple[str, str]:
    """What a final decision adds to the counts of :meth:`FinalizeResult.of`."""
    return f"reason:{row['reason']}", f"text:{row['text_origin']}:{row['decision']}"


def duplicate_count(row: Row) -> str:
    """What a ``duplicates`` row adds to the counts of :meth:`FinalizeResult.of`."""
    return f"duplicate:{row['kind']}"


class KeySet:
    """Membership of many keys in little memory: sorted 16-byte digests (collisions at
    that size are not a practical concern), for a set every worker needs."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = np.sort(np.fromiter((_digest(k) for k in keys), dtype="S16"))

    def __len__(self) -> int:
        return int(self._digests.size)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self._digests.size:
            return False
        digest = np.array(_digest(key), dtype="S16")
        at = int(np.searchsorted(self._digests, digest))
        return at < self._digests.size and self._digests[at] == digest


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
