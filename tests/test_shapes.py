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
    BINDING_TYPES,
    JOINERS,
    NOISE_TYPES,
    POSITION_PHRASES,
    SHAPES,
    SIZE_WORDS,
    TRUE_TYPES,
    Scene,
    ShapeObject,
    caption,
    exchange_attribute,
    exchange_positions,
    fits,
    is_true_of,
    make_clean_split,
    make_web_split,
    noisy_text,
    parse_caption,
    random_scene,
    render,
    rewrite,
    truncate,
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


def _values(scene: Scene) -> dict[str, list[str]]:
    """Each attribute's values over the objects, sorted: the words a text of the scene uses."""
    fields = ("position", "shape", "colour", "size")
    return {f: sorted(getattr(o, f) for o in scene.objects) for f in fields}


def test_web_split_texts_are_what_their_noise_label_says(tmp_path) -> None:
    rows = pq.read_table(make_web_split(600, 11, tmp_path / "web.parquet")).to_pylist()
    assert {r["noise_type"] for r in rows} == set(NOISE_TYPES)
    for row in rows:
        scene = Scene.from_json(row["scene"])
        kind, text = row["noise_type"], row["text"]
        parsed = parse_caption(text)
        if kind in ("correct", "rewritten"):
            assert parsed == scene, text
        elif kind == "partial":
            assert is_true_of(parsed, scene) and parsed != scene, text
        elif kind == "other_image":
            assert parsed is not None and not is_true_of(parsed, scene), text
        elif kind == "wrong_attribute":
            assert parsed is not None and len(parsed.objects) == len(scene.objects), text
            assert _differences(scene, parsed) == 1, text
        elif kind in BINDING_TYPES:
            # Every word names something in the image; the binding is wrong.
            assert _values(parsed) == _values(scene) and not is_true_of(parsed, scene), text
        elif kind == "empty_or_truncated":
            assert parsed is None, text
            assert text == "" or len(text.split()) >= 2, text
        else:
            assert parsed is None, text
        assert (kind in TRUE_TYPES) == (parsed is not None and is_true_of(parsed, scene)), text
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)


def test_exchanges_break_the_binding_and_never_exchange_equal_attributes() -> None:
    rng = random.Random(6)
    seen = set()
    for _ in range(400):
        scene = random_scene(rng, 2)
        exchanged = exchange_attribute(scene, rng)
        if exchanged is not None:
            new, attribute = exchanged
            seen.add(attribute)
            assert _values(new) == _values(scene) and not is_true_of(new, scene)
            moved = [(a, b) for a, b in zip(scene.objects, new.objects, strict=True) if a != b]
            # Exactly two objects changed, in that attribute only, and they differed in it.
            assert len(moved) == 2
            assert getattr(moved[0][0], attribute) != getattr(moved[1][0], attribute)
        moved_scene = exchange_positions(scene, rng)
        if moved_scene is not None:
            assert _values(moved_scene) == _values(scene) and not is_true_of(moved_scene, scene)
    assert seen == {"shape", "colour", "size"}
    red = Scene(
        (
            ShapeObject("left", "circle", "red", "large"),
            ShapeObject("right", "square", "red", "large"),
        )
    )
    for _ in range(50):
        new, attribute = exchange_attribute(red, rng)
        assert attribute == "shape"  # the only attribute the two objects differ in
    twins = Scene(
        (
            ShapeObject("left", "circle", "red", "large"),
            ShapeObject("right", "circle", "red", "large"),
        )
    )
    assert exchange_attribute(twins, rng) is None and exchange_positions(twins, rng) is None
    assert not fits("exchanged_attribute", twins) and not fits("partial", Scene(TWO.objects[:1]))
    with pytest.raises(ValueError, match="cannot carry"):
        noisy_text("exchanged_position", twins, rng)


def test_rewritten_texts_differ_in_form_and_still_describe_the_scene() -> None:
    rng = random.Random(8)
    wordings = set()
    for _ in range(300):
        scene = random_scene(rng)
        text = rewrite(scene, rng)
        assert parse_caption(text) == scene, text
        assert text != text.lower() or text[-1] in ".!", text  # never a plain caption
        wordings.update(w for w in ("there is", " is ", ";", "an image of") if w in text.lower())
    assert wordings == {"there is", " is ", ";", "an image of"}


def test_truncated_texts_break_off_inside_a_phrase() -> None:
    rng = random.Random(9)
    ends = set()
    for _ in range(300):
        scene = random_scene(rng)
        text = caption(scene, rng)
        cut = truncate(text, scene, rng)
        assert text.startswith(cut) and cut != text and parse_caption(cut) is None
        last = cut.split()[-1]
        assert last not in SHAPES and last not in {"left", "center", "middle", "right"}
        ends.add(last)
    assert {"the", "a", "and"} <= ends


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
