"""The decide step and image-group building, without Beam or models."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from curation.decide import decide_group
from curation.grouping import build_group
from curation.reasons import DuplicateKind
from curation.records import GroupScores, HashedPair, Pair
from curation.schemas import run_schemas


def _hashed(key: str, text: str | None, row: int, sha: str = "s0") -> HashedPair:
    pair = Pair(
        key=key,
        source_file="f.parquet",
        source_row=row,
        image=None,
        text=text,
        extra={"lang": "en"},
    )
    return HashedPair(pair, sha, 0, 10, 10)


def _group():
    members = [
        (_hashed("b", "A dog", 1, "s1"), DuplicateKind.PERCEPTUAL, 0.95),
        (_hashed("a", "a dog", 0), None, 1.0),
        (_hashed("c", "a cat", 2, "s2"), DuplicateKind.EXACT, 1.0),
        (_hashed("d", "   ", 3, "s0"), DuplicateKind.EXACT, 1.0),
    ]
    return replace(build_group(members), image=b"img")


def test_group_orders_members_and_dedups_texts() -> None:
    group = _group()
    assert [m.hashed.pair.key for m in group.members] == ["a", "b", "c", "d"]
    assert group.key == "a" and group.members[0].kind is None
    assert group.texts == ("a dog", "a cat")  # case/space-folded identity, empty text left out


def test_group_needs_one_representative() -> None:
    with pytest.raises(ValueError):
        build_group([(_hashed("a", "x", 0), DuplicateKind.EXACT, 1.0)])


def test_decide_applies_threshold_to_web_and_synthetic() -> None:
    group = _group()
    scores = GroupScores(
        captions=("a dog on grass", "a blue car"),
        text_itm=(0.9, 0.2),
        text_itc=(0.4, 0.1),
        caption_itm=(0.7, 0.49),
        caption_itc=(0.3, 0.0),
        embedding=(1.0, 0.0),
    )
    out = decide_group(group, scores, threshold=0.5, run_id="r")
    web = {d["key"]: d for d in out.decisions if d["text_origin"] == "web"}
    assert web["a"]["reason"] == "kept" and web["a"]["itm"] == 0.9
    assert web["b"]["reason"] == "duplicate" and "same image and text as a" in web["b"]["detail"]
    assert web["c"]["reason"] == "low_itm" and web["c"]["image_key"] == "a"
    assert web["d"]["reason"] == "empty_text" and web["d"]["itm"] is None
    assert web["d"]["detail"] == "blank text"
    syn = [d for d in out.decisions if d["text_origin"] == "synthetic"]
    assert [(d["caption_index"], d["decision"]) for d in syn] == [(0, "kept"), (1, "dropped")]
    # clean and synthetic rows are the scored candidates: finalize keeps what the threshold keeps
    assert [(r["key"], r["itm"]) for r in out.clean] == [("a", 0.9), ("c", 0.2)]
    assert out.clean[0]["lang"] == "en" and out.clean[0]["image"] == b"img"
    assert [(r["key"], r["caption"]) for r in out.synthetic] == [
        ("a", "a dog on grass"),
        ("a", "a blue car"),
    ]
    assert {(r["key"], r["kind"]) for r in out.duplicates} == {
        ("b", "perceptual"),
        ("c", "exact"),
        ("d", "exact"),
    }
    assert out.image["kept_texts"] == 2 and out.image["best_itm"] == 0.9
    schemas = run_schemas(pa.schema([pa.field("lang", pa.string())]))
    for name in ("decisions", "clean", "synthetic", "duplicates"):
        pa.Table.from_pylist(list(getattr(out, name)), schema=schemas[name])  # rows fit


def test_copy_text_is_scored_against_the_kept_image() -> None:
    group = build_group(
        [
            (_hashed("a", "x", 0), None, 1.0),
            (_hashed("b", "y", 1, "s9"), DuplicateKind.PERCEPTUAL, 0.9),
        ]
    )
    group = replace(group, image=b"img")
    scores = GroupScores((), (0.1, 0.8), (0.0, 0.5), (), (), (0.0, 1.0))
    out = decide_group(group, scores, threshold=0.5, run_id="r")
    kept = [r for r in out.clean if r["itm"] >= 0.5]
    assert [(r["key"], r["image_key"], r["image"]) for r in kept] == [("b", "a", b"img")]


def test_captions_may_have_their_own_threshold() -> None:
    group = _group()
    scores = GroupScores(("c0", "c1"), (0.9, 0.2), (0.0, 0.0), (0.7, 0.6), (0.0, 0.0), (1.0,))
    out = decide_group(group, scores, threshold=0.5, synthetic_threshold=0.65, run_id="r")
    syn = [
        (d["caption_index"], d["reason"], d["threshold"])
        for d in out.decisions
        if d["text_origin"] == "synthetic"
    ]
    assert syn == [(0, "kept", 0.65), (1, "low_itm", 0.65)]


def test_repaired_text_is_noted_in_the_decision() -> None:
    pair = Pair(
        key="a", source_file="f", source_row=0, image=None, text="caf\ufffd", text_repaired=True
    )
    group = replace(build_group([(HashedPair(pair, "s", 0, 9, 9), None, 1.0)]), image=b"i")
    out = decide_group(
        group, GroupScores((), (0.9,), (0.1,), (), (), (1.0,)), threshold=0.5, run_id="r"
    )
    assert out.decisions[0]["detail"] == (
        "invalid UTF-8 in the text was replaced; 1 invalid character (U+FFFD) removed"
    )
