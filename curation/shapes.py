"""The synthetic "shapes" domain: rendered scenes with known contents and their captions.

A scene holds one to three objects, each with a shape, a colour, a size and a horizontal
position (left, center, right; at most one object per position). Captions follow a small
grammar with paraphrases, and :func:`parse_caption` reads any caption of that grammar back
into a :class:`Scene`, so generated captions can be checked against the ground truth.

Two splits are written as Parquet (``key``, ``image`` JPEG bytes, ``text`` plus ground-truth
columns): a clean split of correctly captioned images (for finetuning) and a noisy "web"
split whose alt-texts carry a labelled noise type (``noise_type``).
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

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
    "other_image",
    "wrong_attribute",
    "spam",
    "filename",
    "empty_or_truncated",
)
DEFAULT_NOISE_MIX: dict[str, float] = {
    "correct": 0.5,
    "other_image": 0.1,
    "wrong_attribute": 0.15,
    "spam": 0.08,
    "filename": 0.07,
    "empty_or_truncated": 0.1,
}
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


def random_scene(rng: random.Random) -> Scene:
    """One to three objects with random attributes at distinct positions."""
    count = rng.randint(1, 3)
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
    rf"(?:(?P<pre>{_WHERE}) {_NOUN}|{_NOUN.replace('?P<', '?P<b_')} (?P<post>{_WHERE}))"
)
_JOIN = re.compile(r" (?:, (?:and |with )?|and |with )")


def parse_caption(text: str) -> Scene | None:
    """The scene a caption of the grammar describes, or None when it is not such a caption.

    Case, surrounding punctuation, spacing and a leading "a picture of" are ignored. Two
    objects at one position make the caption invalid (no scene has them).
    """
    words = re.sub(r"[.!\"()*#:;~]", " ", text.lower())
    words = re.sub(r"\s*,\s*", " , ", words)
    words = re.sub(r"\s+", " ", words).strip()
    words = re.sub(r"^a picture of ", "", words)
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


def truncate(text: str, scene: Scene, rng: random.Random) -> str:
    """``text`` cut after a random word so that it no longer describes ``scene``."""
    words = text.split(" ")
    start = max(2, len(words) // 2)
    cuts = [k for k in range(start, len(words)) if parse_caption(" ".join(words[:k])) != scene]
    return " ".join(words[: rng.choice(cuts)])


def filename(rng: random.Random) -> str:
    """A camera or upload file name, as scraped alt-texts often are."""
    pattern = rng.choice(
        ("IMG_{n:04d}.jpg", "DSC{n:04d}", "photo_{n}.png", "image{n}.jpeg", "P{n:07d}.JPG")
    )
    return pattern.format(n=rng.randint(1, 9999))


def noisy_text(kind: str, scene: Scene, rng: random.Random) -> str:
    """An alt-text of noise type ``kind`` (one of :data:`NOISE_TYPES`) for ``scene``."""
    if kind == "correct":
        return caption(scene, rng)
    if kind == "other_image":
        other = random_scene(rng)
        while other == scene:
            other = random_scene(rng)
        return caption(other, rng)
    if kind == "wrong_attribute":
        return caption(wrong_attribute(scene, rng)[0], rng)
    if kind == "spam":
        return rng.choice(SPAM)
    if kind == "filename":
        return filename(rng)
    if kind == "empty_or_truncated":
        return "" if rng.random() < 0.3 else truncate(caption(scene, rng), scene, rng)
    raise ValueError(f"unknown noise type {kind!r}; choose one of {', '.join(NOISE_TYPES)}")


def _write(rows: dict[str, list], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("key", pa.string()), ("image", pa.binary()), ("text", pa.string())]
        + [(name, pa.string()) for name in rows if name not in ("key", "image", "text")]
    )
    pq.write_table(pa.table(rows, schema=schema), path, row_group_size=256)
    return path


def make_clean_split(n: int, seed: int, path: str | Path, prefix: str = "clean") -> Path:
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
) -> Path:
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
        scene = random_scene(rng)
        kind = rng.choices(kinds, weights)[0]
        rows["key"].append(f"{prefix}-{i:06d}")
        rows["image"].append(render(scene, rng, texture=texture))
        rows["text"].append(noisy_text(kind, scene, rng))
        rows["noise_type"].append(kind)
        rows["scene"].append(scene.to_json())
    return _write(rows, path)
