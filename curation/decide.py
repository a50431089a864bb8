"""Decide: turn rows and scores into the rows of every output table.

The rule (salesforce/BLIP issue #46): keep a text when its ITM match probability is at
least the threshold, for web texts and synthetic captions alike (:func:`curation.thresholds.keeps`). Empty web
texts and repeats of an identical (image, text) pair are dropped without a score. Each
output row shape has one constructor here, tied to its schema in :mod:`curation.schemas`.

A group's outcome holds a clean row for every scored web text and a synthetic row for every
caption, kept or not (the staged candidates): finalize keeps those the threshold keeps, so
another threshold can be applied later from the staged tables alone (``curation
rethreshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.grouping import text_identity
from curation.reasons import Decision, DuplicateKind, Reason, Stage, TextOrigin, decision_of
from curation.records import GroupScores, ImageGroup, Pair
from curation.screen import Rejection
from curation.texts import empty_detail, model_text
from curation.thresholds import keeps

Row = dict[str, Any]
_MESSAGE_LIMIT = 500
REPAIRED_TEXT = "invalid UTF-8 in the text was replaced"


def error_detail(stage: Stage, error: BaseException | str) -> str:
    """``"<stage>: <ExceptionType>: <message>"``, bounded in length."""
    if isinstance(error, BaseException):
        message = f"{type(error).__name__}: {error}".strip().rstrip(":")
    else:
        message = error
    return f"{stage.value}: {message}"[:_MESSAGE_LIMIT]


@dataclass(frozen=True)
class GroupOutcome:
    """Every output row that one image group produces (clean and synthetic: candidates)."""

    decisions: tuple[Row, ...]
    clean: tuple[Row, ...]
    synthetic: tuple[Row, ...]
    duplicates: tuple[Row, ...]
    image: Row


def decision_row(
    pair: Pair,
    *,
    run_id: str,
    reason: Reason,
    threshold: float | None,
    text: str | None = None,
    origin: TextOrigin = TextOrigin.WEB,
    image_key: str | None = None,
    caption_index: int | None = None,
    itm: float | None = None,
    itc: float | None = None,
    detail: str | None = None,
) -> Row:
    """One row of the decisions table (``curation.schemas.DECISIONS_SCHEMA``)."""
    if origin is TextOrigin.WEB:
        text = pair.text
        notes = [REPAIRED_TEXT] if pair.text_repaired else []
        notes += [note for note in (pair.key_note, pair.passthrough_note) if note]
        if reason in (Reason.KEPT, Reason.LOW_ITM) and (note := model_text(text).note):
            notes.append(note)
        detail = "; ".join([detail, *notes] if detail else notes) or None
    return {
        "run_id": run_id,
        "key": pair.key,
        "source_file": pair.source_file,
        "source_row": pair.source_row,
        "image_key": image_key,
        "text_origin": origin.value,
        "caption_index": caption_index,
        "text": text,
        "itm": itm,
        "itc": itc,
        "decision": decision_of(reason).value,
        "reason": reason.value,
        "detail": detail,
        "threshold": threshold,
    }


def rejection_row(rejection: Rejection, run_id: str, threshold: float | None) -> Row:
    """The web decision of a row refused before the models."""
    return decision_row(
        rejection.pair,
        run_id=run_id,
        reason=rejection.reason,
        threshold=threshold,
        detail=rejection.detail,
    )


def error_row(
    pair: Pair, detail: str, run_id: str, threshold: float | None, image_key: str | None = None
) -> Row:
    """The web decision of a row that a stage failed on (``detail`` names stage and error)."""
    return decision_row(
        pair,
        run_id=run_id,
        reason=Reason.ERROR,
        threshold=threshold,
        image_key=image_key,
        detail=detail,
    )


def clean_row(pair: Pair, group: ImageGroup, itm: float, itc: float) -> Row:
    """A kept web pair (``CLEAN_SCHEMA`` plus passthrough columns)."""
    rep = group.rep
    return {
        **pair.extra,
        "key": pair.key,
        "image_key": group.key,
        "image": group.image,
        "text": pair.text,
        "itm": itm,
        "itc": itc,
        "width": rep.width,
        "height": rep.height,
        "sha256": rep.sha256,
        "source_file": pair.source_file,
        "source_row": pair.source_row,
    }


def synthetic_row(group: ImageGroup, index: int, caption: str, itm: float, itc: float) -> Row:
    """A kept synthetic caption (``SYNTHETIC_SCHEMA``)."""
    rep = group.rep
    return {
        "key": group.key,
        "caption_index": index,
        "image": group.image,
        "caption": caption,
        "itm": itm,
        "itc": itc,
        "width": rep.width,
        "height": rep.height,
        "sha256": rep.sha256,
    }


def duplicate_row(key: str, dup_of: str, kind: DuplicateKind, similarity: float) -> Row:
    """A removed copy or near duplicate (``DUPLICATES_SCHEMA``)."""
    return {"key": key, "dup_of": dup_of, "kind": kind.value, "similarity": similarity}


def image_row(group: ImageGroup, scores: GroupScores, kept_texts: int) -> Row:
    """A scored unique image, the input of near-duplicate removal (``IMAGES_SCHEMA``)."""
    all_itm = list(scores.text_itm) + list(scores.caption_itm)
    return {
        "key": group.key,
        "sha256": group.rep.sha256,
        "width": group.rep.width,
        "height": group.rep.height,
        "kept_texts": kept_texts,
        "best_itm": max(all_itm) if all_itm else 0.0,
        "embedding": list(scores.embedding),
    }


def _web_rows(
    group: ImageGroup, scores: GroupScores, threshold: float, run_id: str
) -> tuple[list[Row], list[Row]]:
    """One decision per member's web text, and a clean row for each scored one.

    An empty text, or a text already seen with this image, is decided without a score.
    """
    text_scores = {
        text_identity(text): (itm, itc)
        for text, itm, itc in zip(group.texts, scores.text_itm, scores.text_itc, strict=True)
    }
    common: dict[str, Any] = dict(run_id=run_id, threshold=threshold, image_key=group.key)
    decisions: list[Row] = []
    clean: list[Row] = []
    first_with_text: dict[str, str] = {}
    for member in group.members:
        pair = member.hashed.pair
        ident = text_identity(pair.text)
        if not ident:
            detail = empty_detail(pair.text)
            decisions.append(decision_row(pair, reason=Reason.EMPTY_TEXT, detail=detail, **common))
        elif ident in first_with_text:
            detail = f"same image and text as {first_with_text[ident]}"
            decisions.append(decision_row(pair, reason=Reason.DUPLICATE, detail=detail, **common))
        else:
            first_with_text[ident] = pair.key
            itm, itc = text_scores[ident]
            reason = Reason.KEPT if keeps(itm, threshold) else Reason.LOW_ITM
            decisions.append(decision_row(pair, reason=reason, itm=itm, itc=itc, **common))
            clean.append(clean_row(pair, group, itm, itc))
    return decisions, clean


def _synthetic_rows(
    group: ImageGroup, scores: GroupScores, threshold: float, run_id: str
) -> tuple[list[Row], list[Row]]:
    """One decision and one synthetic row per caption of the group's image."""
    decisions: list[Row] = []
    synthetic: list[Row] = []
    for index, (caption, itm, itc) in enumerate(
        zip(scores.captions, scores.caption_itm, scores.caption_itc, strict=True)
    ):
        reason = Reason.KEPT if keeps(itm, threshold) else Reason.LOW_ITM
        decisions.append(
            decision_row(
                group.rep.pair,
                run_id=run_id,
                reason=reason,
                threshold=threshold,
                text=caption,
                origin=TextOrigin.SYNTHETIC,
                image_key=group.key,
                caption_index=index,
                itm=itm,
                itc=itc,
            )
        )
        synthetic.append(synthetic_row(group, index, caption, itm, itc))
    return decisions, synthetic


def decide_group(
    group: ImageGroup,
    scores: GroupScores,
    *,
    threshold: float,
    run_id: str,
    synthetic_threshold: float | None = None,
) -> GroupOutcome:
    """All rows for one scored image group; every member pair gets exactly one web decision.

    ``synthetic_threshold`` (default ``threshold``) decides the captions.
    """
    caption_threshold = threshold if synthetic_threshold is None else synthetic_threshold
    duplicates = [
        duplicate_row(m.hashed.pair.key, group.key, m.kind, m.similarity)
        for m in group.members
        if m.kind is not None
    ]
    web_decisions, clean = _web_rows(group, scores, threshold, run_id)
    caption_decisions, synthetic = _synthetic_rows(group, scores, caption_threshold, run_id)
    decisions = web_decisions + caption_decisions
    kept = sum(1 for row in decisions if row["decision"] == Decision.KEPT.value)
    return GroupOutcome(
        decisions=tuple(decisions),
        clean=tuple(clean),
        synthetic=tuple(synthetic),
        duplicates=tuple(duplicates),
        image=image_row(group, scores, kept),
    )
