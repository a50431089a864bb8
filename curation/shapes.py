"""The synthetic "shapes" domain: rendered scenes with known contents and their captions.

A scene holds one to three objects, each with a shape, a colour, a size and a horizontal
position (left, center, right; at most one object per position). Captions follow a small
grammar with paraphrases, and :func:`parse_caption` reads any caption of that grammar back
into a :class:`Scene`, so generated captions can be checked against the ground truth.

Two splits are written as Parquet (``key``, ``image`` JPEG bytes, ``text`` plus ground-truth
columns): a clean split of correctly captioned images (for finetuning) and a noisy "web"
split whose alt-texts carry a labelled type (``noise_type``). Three types are true of their
image (:data:`TRUE_TYPES`: a caption of the grammar, the same written differently, and a
partial text that describes some of the objects); the others are noise, among them texts
whose words all match the image but bind wrongly (:data:`BINDING_TYPES`).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from curation.storage import Location

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 190),
}
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right")

#: Paraphrases: canonical value -> words that may stand for it in a caption.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "to the left"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "to the right"),
}
JOINERS = (" and ", " with ", " , ")

NOISE_TYPES = (
    "correct",
    "rewritten",
    "partial",
    "other_image",
    "wrong_attribute",
    "exchanged_attribute",
    "exchanged_position",
    "spam",
    "filename",
    "empty_or_truncated",
)
#: Types whose text is true of its image: a filter should keep them. ``rewritten`` is a
#: correct text in other case, punctuation and wording; ``partial`` describes some of the
#: objects (as web alt-texts usually do) and nothing false.
TRUE_TYPES = ("correct", "rewritten", "partial")
#: Noise whose words all name things in the image, bound to the wrong objects.
BINDING_TYPES = ("exchanged_attribute", "exchanged_position")
DEFAULT_NOISE_MIX: dict[str, float] = {
    "correct": 0.3,
    "rewritten": 0.1,
    "partial": 0.08,
    "other_image": 0.07,
    "wrong_attribute": 0.1,
    "exchanged_attribute": 0.1,
    "exchanged_position": 0.08,
    "spam": 0.05,
    "filename": 0.05,
    "empty_or_truncated": 0.07,
}
#: Types that need a scene of at least two objects (drawn until one fits).
_MULTI_OBJECT_TYPES = ("partial", *BINDING_TYPES)
SPAM = (
    "click here to buy",
    "free shipping on all orders",
    "best price guaranteed , order now",
    "sale 50% off today only",
    "buy now and save",
    "limited offer - shop the collection",
    "visit our store for more",
    "subscribe for daily deals",
)

RENDER_SIZE = 128
_SLOT_X = {"left": 0.18, "center": 0.5, "right": 0.82}
_RADIUS = {"small": 0.085, "large": 0.14}


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene."""

    position: str
    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    """A set of objects at distinct positions, kept in left-to-right order."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", ordered)

    def to_json(self) -> str:
        """Canonical JSON (equal scenes give equal strings)."""
        return json.dumps(
            [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position}
                for o in self.objects
            ],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Scene:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(ShapeObject(**item) for item in json.loads(text)))


def random_scene(rng: random.Random, min_objects: int = 1) -> Scene:
    """``min_objects`` (default 1) to three objects with random attributes at distinct positions."""
    count = rng.randint(min_objects, 3)
    positions = rng.sample(POSITIONS, count)
    return Scene(
        tuple(
            ShapeObject(p, rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
            for p in positions
        )
    )


def render(
    scene: Scene,
    rng: random.Random,
    size: int = RENDER_SIZE,
    quality: int = 90,
    texture: float = 0.0,
) -> bytes:
    """Draw ``scene`` with small jitter on a plain background; JPEG bytes.

    ``texture`` (grey levels) adds a smooth random shading to the background, which gives
    every image its own perceptual hash (plain scenes of similar layout hash alike).
    """
    grey = rng.randint(90, 170)
    background = tuple(max(0, min(255, grey + rng.randint(-15, 15))) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    if texture > 0:
        image = _shaded(image, texture, rng)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx = (_SLOT_X[obj.position] + rng.uniform(-0.02, 0.02)) * size
        cy = (0.5 + rng.uniform(-0.12, 0.12)) * size
        r = _RADIUS[obj.size] * size * rng.uniform(0.93, 1.07)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            s = r * 0.88
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        else:
            w = r * 0.36
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _shaded(image: Image.Image, amplitude: float, rng: random.Random) -> Image.Image:
    """``image`` plus a smooth random field of +-``amplitude`` grey levels."""
    grid = Image.new("F", (6, 6))
    grid.putdata([rng.uniform(-amplitude, amplitude) for _ in range(36)])
    field = np.asarray(grid.resize(image.size, Image.Resampling.BICUBIC))[:, :, None]
    shaded = np.asarray(image, dtype=np.float32) + field
    return Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8))


def _object_phrase(obj: ShapeObject, rng: random.Random) -> str:
    size = rng.choice(SIZE_WORDS[obj.size])
    where = rng.choice(POSITION_PHRASES[obj.position])
    noun = f"a {size} {obj.colour} {obj.shape}"
    return f"{where} {noun}" if rng.random() < 0.2 else f"{noun} {where}"


def caption(scene: Scene, rng: random.Random) -> str:
    """A random paraphrase describing every object of ``scene`` (in random order)."""
    objects = list(scene.objects)
    rng.shuffle(objects)
    phrases = [_object_phrase(o, rng) for o in objects]
    if len(phrases) == 1:
        return phrases[0]
    last_joiner = rng.choice(JOINERS[:2])
    head = (
        " , ".join(phrases[:-1]) if rng.random() < 0.5 else rng.choice(JOINERS).join(phrases[:-1])
    )
    return head + last_joiner + phrases[-1]


_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_POSITION_OF = {phrase: pos for pos, phrases in POSITION_PHRASES.items() for phrase in phrases}
_WHERE = "|".join(re.escape(p) for p in sorted(_POSITION_OF, key=len, reverse=True))
_NOUN = (
    rf"an? (?P<size>{'|'.join(_SIZE_OF)}) (?P<colour>{'|'.join(COLOURS)}) "
    rf"(?P<shape>{'|'.join(SHAPES)})"
)
_PHRASE = re.compile(
    rf"(?:(?P<pre>{_WHERE}) (?:there is |is )?{_NOUN}"
    rf"|(?:there is )?{_NOUN.replace('?P<', '?P<b_')} (?:is )?(?P<post>{_WHERE}))"
)
_JOIN = re.compile(r" (?:, (?:and |with )?|and |with )")
#: Words an object phrase can end on (a shape, or the last word of a position).
_PHRASE_ENDS = frozenset(SHAPES) | {p.split()[-1] for p in _POSITION_OF}
#: Openings a description may start with (the captioner's prompt among them).
PREFIXES = ("a picture of ", "an image of ", "a photo of ", "a drawing of ")
_PREFIX = re.compile(rf"^(?:{'|'.join(PREFIXES)})")


def parse_caption(text: str) -> Scene | None:
    """The scene a caption of the grammar describes, or None when it is not such a caption.

    Case, surrounding punctuation, spacing, a leading "a picture of" (or "an image of", ...)
    and the rewordings of :func:`rewrite` ("there is", "is", ";") are accepted. Two objects
    at one position make the caption invalid (no scene has them).
    """
    words = re.sub(r"[.!\"()*#:~]", " ", text.lower()).replace(";", ",")
    words = re.sub(r"\s*,\s*", " , ", words)
    words = re.sub(r"\s+", " ", words).strip()
    words = _PREFIX.sub("", words)
    objects: list[ShapeObject] = []
    pos = 0
    while True:
        match = _PHRASE.match(words, pos)
        if match is None:
            return None
        g = match.groupdict()
        if g["pre"]:
            obj = ShapeObject(_POSITION_OF[g["pre"]], g["shape"], g["colour"], _SIZE_OF[g["size"]])
        else:
            obj = ShapeObject(
                _POSITION_OF[g["post"]], g["b_shape"], g["b_colour"], _SIZE_OF[g["b_size"]]
            )
        objects.append(obj)
        pos = match.end()
        if pos == len(words):
            break
        join = _JOIN.match(words, pos)
        if join is None:
            return None
        pos = join.end()
    if len({o.position for o in objects}) != len(objects):
        return None
    return Scene(tuple(objects))


def is_true_of(described: Scene, scene: Scene) -> bool:
    """True when every object ``described`` names is in ``scene``: a complete or partial
    description with nothing false in it."""
    return bool(described.objects) and set(described.objects) <= set(scene.objects)


def wrong_attribute(scene: Scene, rng: random.Random) -> tuple[Scene, str]:
    """``scene`` with exactly one attribute of one object changed; also names the attribute."""
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    free = [p for p in POSITIONS if p not in {o.position for o in scene.objects}]
    attributes = ["shape", "colour", "size"] + (["position"] if free else [])
    attribute = rng.choice(attributes)
    if attribute == "shape":
        new = ShapeObject(
            obj.position, rng.choice([s for s in SHAPES if s != obj.shape]), obj.colour, obj.size
        )
    elif attribute == "colour":
        new = ShapeObject(
            obj.position, obj.shape, rng.choice([c for c in COLOURS if c != obj.colour]), obj.size
        )
    elif attribute == "size":
        new = ShapeObject(
            obj.position, obj.shape, obj.colour, "large" if obj.size == "small" else "small"
        )
    else:
        new = ShapeObject(rng.choice(free), obj.shape, obj.colour, obj.size)
    objects = list(scene.objects)
    objects[index] = new
    return Scene(tuple(objects)), attribute


def exchange_attribute(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    """``scene`` with the shape, colour or size of two objects exchanged (an attribute they
    differ in); also names the attribute. None when no two objects differ in one.

    Every word of a text of the result still names something in ``scene``; only the binding
    of attributes to objects is wrong.
    """
    options = [
        (i, j, attribute)
        for i, j in itertools.combinations(range(len(scene.objects)), 2)
        for attribute in ("shape", "colour", "size")
        if getattr(scene.objects[i], attribute) != getattr(scene.objects[j], attribute)
    ]
    if not options:
        return None
    i, j, attribute = rng.choice(options)
    objects = list(scene.objects)
    a, b = objects[i], objects[j]
    objects[i] = replace(a, **{attribute: getattr(b, attribute)})
    objects[j] = replace(b, **{attribute: getattr(a, attribute)})
    return Scene(tuple(objects)), attribute


def exchange_positions(scene: Scene, rng: random.Random) -> Scene | None:
    """``scene`` with the positions of two objects that look different exchanged; None when
    no two objects do."""
    options = [
        (i, j)
        for i, j in itertools.combinations(range(len(scene.objects)), 2)
        if replace(scene.objects[i], position="") != replace(scene.objects[j], position="")
    ]
    if not options:
        return None
    i, j = rng.choice(options)
    objects = list(scene.objects)
    a, b = objects[i], objects[j]
    objects[i], objects[j] = replace(a, position=b.position), replace(b, position=a.position)
    return Scene(tuple(objects))


def partial_scene(scene: Scene, rng: random.Random) -> Scene | None:
    """Some but not all of the objects of ``scene``; None for a scene of one object."""
    if len(scene.objects) < 2:
        return None
    count = rng.randint(1, len(scene.objects) - 1)
    return Scene(tuple(rng.sample(scene.objects, count)))


#: Rewordings of one object phrase outside the caption grammar (``{noun}``: "a big red
#: circle", ``{where}``: "on the left").
REWORDINGS = (
    "{noun} {where}",
    "{where} {noun}",
    "{noun} is {where}",
    "there is {noun} {where}",
    "{where} there is {noun}",
    "{where} is {noun}",
)
_REWRITE_JOINERS = (" and ", " with ", " , ", "; ", " , and ")
_CASES = (str.lower, str.capitalize, str.upper, str.title)
_ENDINGS = ("", ".", "!", " .")


def rewrite(scene: Scene, rng: random.Random) -> str:
    """A correct description of every object of ``scene`` written differently from the
    caption grammar (always in case or punctuation, often in wording): rewordings ("there is", "is"), other joiners (";", ", and"), an opening
    ("an image of"), capitals and end punctuation. :func:`parse_caption` reads it back."""
    objects = list(scene.objects)
    rng.shuffle(objects)
    phrases = []
    for obj in objects:
        noun = f"a {rng.choice(SIZE_WORDS[obj.size])} {obj.colour} {obj.shape}"
        where = rng.choice(POSITION_PHRASES[obj.position])
        phrases.append(rng.choice(REWORDINGS).format(noun=noun, where=where))
    text = phrases[0]
    for phrase in phrases[1:]:
        text += rng.choice(_REWRITE_JOINERS) + phrase
    if rng.random() < 0.3:
        text = rng.choice(PREFIXES) + text
    case = rng.choice(_CASES)
    # Lowercase text always gets end punctuation, so that no rewrite is a plain caption.
    ending = rng.choice(_ENDINGS[1:] if case is str.lower else _ENDINGS)
    return case(text) + ending


def truncate(text: str, scene: Scene, rng: random.Random) -> str:
    """``text`` broken off inside an object phrase (after a random word of its second half,
    not at the end of a phrase), so that it no longer reads as a description.

    A cut after a complete phrase would leave a partial but true text, and a cut after a
    shape word a true noun phrase without its position ("a big red circle"): neither is used,
    nor one after a position word ("... and on the left"), so that the text ends on a word
    that cannot end a phrase.
    """
    words = text.split(" ")
    start = max(2, len(words) // 2)
    cuts = [
        k
        for k in range(start, len(words))
        if parse_caption(" ".join(words[:k])) is None and words[k - 1] not in _PHRASE_ENDS
    ]
    return " ".join(words[: rng.choice(cuts)])


def filename(rng: random.Random) -> str:
    """A camera or upload file name, as scraped alt-texts often are."""
    pattern = rng.choice(
        ("IMG_{n:04d}.jpg", "DSC{n:04d}", "photo_{n}.png", "image{n}.jpeg", "P{n:07d}.JPG")
    )
    return pattern.format(n=rng.randint(1, 9999))


def fits(kind: str, scene: Scene) -> bool:
    """Whether ``scene`` can carry a text of noise type ``kind`` (partial and binding types
    need two objects that differ)."""
    if kind == "partial":
        return len(scene.objects) > 1
    if kind in BINDING_TYPES:
        rng = random.Random(0)
        exchange = exchange_attribute if kind == "exchanged_attribute" else exchange_positions
        return exchange(scene, rng) is not None
    return True


def noisy_text(kind: str, scene: Scene, rng: random.Random) -> str:
    """An alt-text of noise type ``kind`` (one of :data:`NOISE_TYPES`) for ``scene``.

    Raises ValueError for an unknown type or a scene that does not fit it (:func:`fits`).
    """
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; choose one of {', '.join(NOISE_TYPES)}")
    if not fits(kind, scene):
        raise ValueError(f"a scene of {len(scene.objects)} object(s) cannot carry {kind!r}")
    if kind == "correct":
        return caption(scene, rng)
    if kind == "rewritten":
        return rewrite(scene, rng)
    if kind == "partial":
        return caption(partial_scene(scene, rng), rng)
    if kind == "other_image":
        other = random_scene(rng)
        while other == scene or is_true_of(other, scene):
            other = random_scene(rng)
        return caption(other, rng)
    if kind == "wrong_attribute":
        return caption(wrong_attribute(scene, rng)[0], rng)
    if kind == "exchanged_attribute":
        return caption(exchange_attribute(scene, rng)[0], rng)
    if kind == "exchanged_position":
        return caption(exchange_positions(scene, rng), rng)
    if kind == "spam":
        return rng.choice(SPAM)
    if kind == "filename":
        return filename(rng)
    return "" if rng.random() < 0.3 else truncate(caption(scene, rng), scene, rng)


def _write(rows: dict[str, list], path: str | Path) -> str:
    target = Location(str(path))
    schema = pa.schema(
        [("key", pa.string()), ("image", pa.binary()), ("text", pa.string())]
        + [(name, pa.string()) for name in rows if name not in ("key", "image", "text")]
    )
    table = pa.table(rows, schema=schema)
    target.write_with(lambda handle: pq.write_table(table, handle, row_group_size=256))
    return target.url


def make_clean_split(n: int, seed: int, path: str | Path, prefix: str = "clean") -> str:
    """``n`` images with a correct caption each (columns key, image, text, scene)."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"key": [], "image": [], "text": [], "scene": []}
    for i in range(n):
        scene = random_scene(rng)
        rows["key"].append(f"{prefix}-{i:06d}")
        rows["image"].append(render(scene, rng))
        rows["text"].append(caption(scene, rng))
        rows["scene"].append(scene.to_json())
    return _write(rows, path)


def make_web_split(
    n: int,
    seed: int,
    path: str | Path,
    noise_mix: Mapping[str, float] | None = None,
    prefix: str = "web",
    texture: float = 0.0,
) -> str:
    """``n`` images with web-like alt-texts; ``noise_type`` labels each text.

    ``noise_mix`` maps noise types to weights (default :data:`DEFAULT_NOISE_MIX`);
    ``texture`` shades the backgrounds (see :func:`render`).
    Columns: key, image, text, noise_type, scene (the image's ground truth as JSON).
    """
    mix = dict(noise_mix or DEFAULT_NOISE_MIX)
    unknown = set(mix) - set(NOISE_TYPES)
    if unknown:
        raise ValueError(
            f"unknown noise types {sorted(unknown)}; choose from {', '.join(NOISE_TYPES)}"
        )
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    rows: dict[str, list] = {"key": [], "image": [], "text": [], "noise_type": [], "scene": []}
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        scene = random_scene(rng, 2 if kind in _MULTI_OBJECT_TYPES else 1)
        while not fits(kind, scene):
            scene = random_scene(rng, 2)
        rows["key"].append(f"{prefix}-{i:06d}")
        rows["image"].append(render(scene, rng, texture=texture))
        rows["text"].append(noisy_text(kind, scene, rng))
        rows["noise_type"].append(kind)
        rows["scene"].append(scene.to_json())
    return _write(rows, path)
