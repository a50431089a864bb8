"""Quality of a run on the shapes domain, measured against the generated ground truth.

- Filter: precision and recall at rejecting noisy web texts (the positive class is "the web
  text does not describe its image": every type but :data:`curation.shapes.TRUE_TYPES`),
  overall and per type; the share of correct texts kept (as generated and written
  differently), of partial but true texts kept (the filter is to keep them, as CapFilt keeps
  a web text that matches its image), and the recall on wrong-binding texts. A web text
  counts as rejected when its ITM probability is below the threshold, or when it was
  dropped as empty before scoring. Rows without an ITM score for other reasons (an image
  that failed to decode, say) say nothing about the filter and are left out.
- Captioner: the share of kept synthetic captions that describe their image exactly
  (parsed back with :func:`curation.shapes.parse_caption`), and the noise ratio (the share
  of synthetic captions the filter rejects, as in BLIP's Table 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow.parquet as pq

from curation.audit.tables import RunTables
from curation.reasons import Reason
from curation.shapes import BINDING_TYPES, NOISE_TYPES, TRUE_TYPES, Scene, parse_caption
from curation.storage import Location

#: True types whose texts describe the whole image.
COMPLETE_TYPES = ("correct", "rewritten")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def rejection_metrics(noise_types: Sequence[str], rejected: Sequence[bool]) -> dict[str, Any]:
    """Precision/recall of rejecting noisy texts, and the rejected share per noise type."""
    if len(noise_types) != len(rejected):
        raise ValueError(f"{len(noise_types)} noise labels but {len(rejected)} outcomes")
    noisy = [kind not in TRUE_TYPES for kind in noise_types]
    true_pos = sum(n and r for n, r in zip(noisy, rejected, strict=True))
    predicted = sum(bool(r) for r in rejected)
    per_type: dict[str, dict[str, Any]] = {}
    for kind in NOISE_TYPES:
        outcomes = [r for k, r in zip(noise_types, rejected, strict=True) if k == kind]
        if outcomes:
            per_type[kind] = {
                "texts": len(outcomes),
                "rejected": sum(bool(r) for r in outcomes),
                "rejected_share": sum(bool(r) for r in outcomes) / len(outcomes),
            }

    def share(kinds: Sequence[str], outcome: bool) -> float | None:
        picked = [bool(r) for k, r in zip(noise_types, rejected, strict=True) if k in kinds]
        return _ratio(sum(r == outcome for r in picked), len(picked))

    return {
        "texts": len(noise_types),
        "noisy_texts": sum(noisy),
        "precision": _ratio(true_pos, predicted),
        "recall": _ratio(true_pos, sum(noisy)),
        "correct_kept_share": share(COMPLETE_TYPES, False),
        "partial_kept_share": share(("partial",), False),
        "binding_recall": share(BINDING_TYPES, True),
        "per_noise_type": per_type,
    }


def caption_metrics(
    captions: Sequence[str], scenes: Sequence[str], kept: Sequence[bool]
) -> dict[str, Any]:
    """Correctness of synthetic captions against their image's scene (JSON), kept and overall."""
    if not len(captions) == len(scenes) == len(kept):
        raise ValueError("captions, scenes and kept must have the same length")
    correct = [
        parse_caption(c) == Scene.from_json(s) for c, s in zip(captions, scenes, strict=True)
    ]
    kept_correct = sum(c and k for c, k in zip(correct, kept, strict=True))
    n_kept = sum(bool(k) for k in kept)
    return {
        "captions": len(captions),
        "kept": n_kept,
        "kept_correct_share": _ratio(kept_correct, n_kept),
        "correct_share": _ratio(sum(correct), len(captions)),
        "noise_ratio": _ratio(len(captions) - n_kept, len(captions)),
    }


def _decisions(run_dir: str) -> Iterator[dict[str, Any]]:
    columns = ["key", "text_origin", "text", "itm", "reason", "threshold"]
    for batch in RunTables(run_dir).batches("decisions", columns):
        yield from batch.to_pylist()


def run_metrics(run_dir: str, truth_path: str) -> dict[str, Any]:
    """Metrics of a finished run folder, joined by ``key`` with the input's ground truth."""
    with Location(truth_path).open() as handle:
        truth = pq.read_table(handle, columns=["key", "noise_type", "scene"]).to_pylist()
    by_key = {row["key"]: row for row in truth}
    decisions = _decisions(run_dir)

    noise_types: list[str] = []
    rejected: list[bool] = []
    captions: list[str] = []
    scenes: list[str] = []
    kept: list[bool] = []
    for row in decisions:
        gt = by_key.get(row["key"])
        if gt is None:
            continue
        threshold = row["threshold"] if row["threshold"] is not None else 0.5
        if row["text_origin"] == "web":
            if row["itm"] is not None:
                noise_types.append(gt["noise_type"])
                rejected.append(row["itm"] < threshold)
            elif row["reason"] == Reason.EMPTY_TEXT.value:
                noise_types.append(gt["noise_type"])
                rejected.append(True)
        elif row["itm"] is not None and row["text"] is not None:
            captions.append(row["text"])
            scenes.append(gt["scene"])
            kept.append(row["itm"] >= threshold)
    return {
        "filter": rejection_metrics(noise_types, rejected),
        "captioner": caption_metrics(captions, scenes, kept),
    }


def write_metrics(metrics: dict[str, Any], target: Location) -> None:
    """Write ``metrics`` as indented JSON with sorted keys."""
    target.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
