"""The shapes domain: caption grammar round trip, labelled noise, Parquet splits."""

from __future__ import annotations

import io
import itertools
import json
import random

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.shapes import (
    JOINERS,
    NOISE_TYPES,
    POSITION_PHRASES,
    SIZE_WORDS,
    Scene,
    ShapeObject,
    caption,
    make_clean_split,
    make_web_split,
    parse_caption,
    random_scene,
    render,
    wrong_attribute,
)

TWO = Scene(
    (ShapeObject("left", "circle", "red", "large"), ShapeObject("right", "square", "blue", "small"))
)


def _phrases(obj: ShapeObject) -> list[str]:
    """Every paraphrase of one object the grammar allows."""
    out = []
    for size, where in itertools.product(SIZE_WORDS[obj.size], POSITION_PHRASES[obj.position]):
        noun = f"a {size} {obj.colour} {obj.shape}"
        out += [f"{noun} {where}", f"{where} {noun}"]
    return out


def _differences(a: Scene, b: Scene) -> int:
    """Attribute differences between two scenes with the same number of objects, matched by
    shape/colour/size when positions moved."""
    fields = ("position", "shape", "colour", "size")
    best = None
    for perm in itertools.permutations(b.objects):
        diff = sum(
            getattr(x, f) != getattr(y, f)
            for x, y in zip(a.objects, perm, strict=True)
            for f in fields
        )
        best = diff if best is None else min(best, diff)
    return best


def test_parser_reads_every_paraphrase_of_a_two_object_scene() -> None:
    left, right = TWO.objects
    count = 0
    for first, second in itertools.product(_phrases(left), _phrases(right)):
        for joiner, (a, b) in itertools.product(JOINERS, [(first, second), (second, first)]):
            text = a + joiner + b
            assert parse_caption(text) == TWO, text
            count += 1
    assert count == 8 * 8 * len(JOINERS) * 2


def test_parser_reads_three_objects_with_mixed_joiners_and_ignores_case_prompt_punctuation() -> (
    None
):
    scene = Scene(
        (
            ShapeObject("left", "triangle", "green", "small"),
            ShapeObject("center", "cross", "yellow", "large"),
            ShapeObject("right", "circle", "purple", "small"),
        )
    )
    texts = [
        "a little green triangle on the left , a big yellow cross in the middle and a small purple circle to the right",
        "In the center a large yellow cross, to the right a small purple circle with a small green triangle on the left.",
        "a picture of a small purple circle on the right with a large yellow cross in the center , and a small green triangle to the left",
    ]
    for text in texts:
        assert parse_caption(text) == scene, text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a large red circle on the",  # cut mid-phrase
        "a large red circle on the left and",  # dangling joiner
        "a large red circle",  # no position
        "a large red circle on the left and a small blue square on the left",  # two at one position
        "a large red circle on the left and then a small blue square on the right",
        "a huge red circle on the left",  # not a size of the grammar
        "click here to buy",
        "IMG_2041.jpg",
    ],
)
def test_parser_rejects_what_the_grammar_does_not_produce(text: str) -> None:
    assert parse_caption(text) is None


def test_random_captions_round_trip_and_use_every_paraphrase() -> None:
    rng = random.Random(5)
    seen_words: set[str] = set()
    for _ in range(1500):
        scene = random_scene(rng)
        text = caption(scene, rng)
        assert parse_caption(text) == scene, text
        seen_words.update(text.split())
    paraphrase_words = {w for words in SIZE_WORDS.values() for w in words}
    paraphrase_words |= {
        w for phrases in POSITION_PHRASES.values() for p in phrases for w in p.split()
    }
    assert paraphrase_words | {",", "and", "with"} <= seen_words


def test_scenes_have_one_to_three_objects_at_distinct_positions_and_json_round_trips() -> None:
    rng = random.Random(1)
    counts = set()
    for _ in range(300):
        scene = random_scene(rng)
        positions = [o.position for o in scene.objects]
        assert len(positions) == len(set(positions))
        counts.add(len(scene.objects))
        assert Scene.from_json(scene.to_json()) == scene
    assert counts == {1, 2, 3}


def test_wrong_attribute_changes_exactly_one_attribute_of_one_object() -> None:
    rng = random.Random(2)
    changed = set()
    for _ in range(400):
        scene = random_scene(rng)
        wrong, attribute = wrong_attribute(scene, rng)
        changed.add(attribute)
        assert wrong != scene
        assert _differences(scene, wrong) == 1
        assert parse_caption(caption(wrong, rng)) == wrong
    assert changed == {"shape", "colour", "size", "position"}


def test_render_draws_the_scene_colours_where_the_objects_are() -> None:
    rng = random.Random(3)
    scene = Scene(
        (
            ShapeObject("left", "square", "red", "large"),
            ShapeObject("right", "circle", "blue", "large"),
        )
    )
    image = Image.open(io.BytesIO(render(scene, rng))).convert("RGB")
    assert image.size == (128, 128)
    r, g, b = image.getpixel((23, 64))
    assert r > 150 and g < 90 and b < 90
    r, g, b = image.getpixel((105, 64))
    assert b > 150 and r < 90


def test_web_split_texts_are_what_their_noise_label_says(tmp_path) -> None:
    rows = pq.read_table(make_web_split(400, 11, tmp_path / "web.parquet")).to_pylist()
    assert {r["noise_type"] for r in rows} == set(NOISE_TYPES)
    for row in rows:
        scene = Scene.from_json(row["scene"])
        kind, text = row["noise_type"], row["text"]
        parsed = parse_caption(text)
        if kind == "correct":
            assert parsed == scene, text
        elif kind == "other_image":
            assert parsed is not None and parsed != scene, text
        elif kind == "wrong_attribute":
            assert parsed is not None and len(parsed.objects) == len(scene.objects), text
            assert _differences(scene, parsed) == 1, text
        elif kind == "empty_or_truncated":
            assert parsed != scene, text
            assert text == "" or len(text.split()) >= 2, text
        else:
            assert parsed is None, text
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)


def test_splits_are_seeded_and_hold_decodable_images(tmp_path) -> None:
    a = pq.read_table(make_clean_split(20, 4, tmp_path / "a.parquet"))
    b = pq.read_table(make_clean_split(20, 4, tmp_path / "b.parquet"))
    c = pq.read_table(make_clean_split(20, 5, tmp_path / "c.parquet"))
    assert a.column_names == ["key", "image", "text", "scene"]
    assert a.equals(b)
    assert not a.equals(c)
    for row in a.to_pylist():
        assert Image.open(io.BytesIO(row["image"])).format == "JPEG"
        assert parse_caption(row["text"]) == Scene.from_json(row["scene"])
        assert json.loads(row["scene"])


def test_unknown_noise_type_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown noise types"):
        make_web_split(5, 0, tmp_path / "w.parquet", noise_mix={"typo": 1.0})
