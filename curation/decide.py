"""Decide: turn an image group's scores into decision, clean, synthetic and duplicate rows.

The rule (salesforce/BLIP issue #46): keep a text when its ITM match probability is at
least the threshold, for web texts and synthetic captions alike. Empty web texts and
repeats of an identical (image, text) pair are dropped without a score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curation.grouping import text_identity
from curation.reasons import Reason
from curation.records import GroupScores, ImageGroup, Pair


@dataclass
class GroupOutcome:
    """Every output row that one image group produces."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    clean: list[dict[str, Any]] = field(default_factory=list)
    synthetic: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    image: dict[str, Any] | None = None


def decision_row(
    pair: Pair,
    *,
    run_id: str,
    reason: Reason,
    threshold: float | None,
    text: str | None = None,
    text_origin: str = "web",
    image_key: str | None = None,
    caption_index: int | None = None,
    itm: float | None = None,
    itc: float | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """One row of the decisions table (``curation.schemas.DECISIONS_SCHEMA``)."""
    return {
        "run_id": run_id,
        "key": pair.key,
        "source_file": pair.source_file,
        "source_row": pair.source_row,
        "image_key": image_key,
        "text_origin": text_origin,
        "caption_index": caption_index,
        "text": pair.text if text is None and text_origin == "web" else text,
        "itm": itm,
        "itc": itc,
        "decision": "kept" if reason is Reason.KEPT else "dropped",
        "reason": reason.value,
        "detail": detail,
        "threshold": threshold,
    }


def decide_group(
    group: ImageGroup, scores: GroupScores, *, threshold: float, run_id: str
) -> GroupOutcome:
    """All rows for one scored image group; every member pair gets exactly one web decision."""
    out = GroupOutcome()
    rep = group.rep
    image_key = rep.pair.key
    text_scores = {
        text_identity(text): (itm, itc)
        for text, itm, itc in zip(group.texts, scores.text_itm, scores.text_itc, strict=True)
    }
    first_with_text: dict[str, str] = {}
    kept_texts = 0
    for member in group.members:
        pair = member.hashed.pair
        if member.kind != "self":
            out.duplicates.append(
                {
                    "key": pair.key,
                    "dup_of": image_key,
                    "kind": member.kind,
                    "similarity": member.similarity,
                }
            )
        ident = text_identity(pair.text)
        common = dict(run_id=run_id, threshold=threshold, image_key=image_key)
        if not ident:
            out.decisions.append(decision_row(pair, reason=Reason.EMPTY_TEXT, **common))
            continue
        if ident in first_with_text:
            detail = f"same image and text as {first_with_text[ident]}"
            out.decisions.append(
                decision_row(pair, reason=Reason.DUPLICATE, detail=detail, **common)
            )
            continue
        first_with_text[ident] = pair.key
        itm, itc = text_scores[ident]
        keep = itm >= threshold
        reason = Reason.KEPT if keep else Reason.LOW_ITM
        out.decisions.append(decision_row(pair, reason=reason, itm=itm, itc=itc, **common))
        if keep:
            kept_texts += 1
            row = {
                **pair.extra,
                "key": pair.key,
                "image_key": image_key,
                "image": rep.pair.image,
                "text": pair.text,
                "itm": itm,
                "itc": itc,
                "width": rep.width,
                "height": rep.height,
                "sha256": rep.sha256,
                "source_file": pair.source_file,
                "source_row": pair.source_row,
            }
            out.clean.append(row)
    for index, (caption, itm, itc) in enumerate(
        zip(scores.captions, scores.caption_itm, scores.caption_itc, strict=True)
    ):
        keep = itm >= threshold
        reason = Reason.KEPT if keep else Reason.LOW_ITM
        out.decisions.append(
            decision_row(
                rep.pair,
                run_id=run_id,
                reason=reason,
                threshold=threshold,
                text=caption,
                text_origin="synthetic",
                image_key=image_key,
                caption_index=index,
                itm=itm,
                itc=itc,
            )
        )
        if keep:
            kept_texts += 1
            out.synthetic.append(
                {
                    "key": image_key,
                    "caption_index": index,
                    "image": rep.pair.image,
                    "caption": caption,
                    "itm": itm,
                    "itc": itc,
                    "width": rep.width,
                    "height": rep.height,
                    "sha256": rep.sha256,
                }
            )
    all_itm = list(scores.text_itm) + list(scores.caption_itm)
    out.image = {
        "key": image_key,
        "sha256": rep.sha256,
        "width": rep.width,
        "height": rep.height,
        "kept_texts": kept_texts,
        "best_itm": max(all_itm) if all_itm else 0.0,
        "embedding": list(scores.embedding),
    }
    return out
