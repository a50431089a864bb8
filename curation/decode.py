"""Image bytes -> validated RGB pixels at the model resolution, with exact and perceptual hashes.

A bad image raises :class:`DecodeError` carrying a :class:`~curation.reasons.Reason`; it is
never replaced by a placeholder. Guards, in order:

- empty input -> ``missing_image``;
- header dimensions checked BEFORE any pixel is allocated: more than ``max_pixels`` ->
  ``too_large`` (decompression bombs), a side below ``min_side`` -> ``too_small``; PIL's
  own ``Image.MAX_IMAGE_PIXELS`` guard still refuses above twice its limit, and its warning
  never escapes;
- the whole file is decoded (PIL's ``LOAD_TRUNCATED_IMAGES`` is never set): a file that ends
  early -> ``truncated``, anything else PIL cannot read -> ``undecodable``.

JPEGs are decoded at a reduced DCT scale (``Image.draft``) when the target is at most half
the image side, then squash-resized with bicubic filtering like BLIP's preprocessing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.hashing import HASH_SIDE, phash64, sha256_hex
from curation.reasons import Reason

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default budget (about 0.25 GiB at 3 bytes/pixel)
_HASH_DRAFT = 128  # reduced-scale decode target when only hashes are needed
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255)


#: Format names a user may give -> the canonical name.
FORMAT_ALIASES = {
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "bmp": "bmp",
    "tiff": "tiff",
    "tif": "tiff",
    "avif": "avif",
    "heif": "heif",
    "heic": "heif",
}


#: Canonical format names -> Pillow format ids.
_PILLOW_IDS = {
    "jpeg": ("JPEG", "MPO"),
    "png": ("PNG",),
    "webp": ("WEBP",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "tiff": ("TIFF",),
    "avif": ("AVIF",),
    "heif": ("HEIF",),
}
DEFAULT_FORMATS = frozenset(_PILLOW_IDS)


def _sniff(data: bytes) -> str | None:
    """The Pillow format whose signature check accepts ``data``'s first bytes, if any."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept and accept(prefix):
                return name
        except Exception:
            continue
    return None


def normalise_formats(names: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Canonical names of user-given formats (``jpg`` -> ``jpeg``); ValueError on others."""
    out = set()
    for name in names:
        canonical = FORMAT_ALIASES.get(name.strip().lower())
        if canonical is None:
            raise ValueError(
                f"unknown image format {name!r}; choose from {', '.join(sorted(set(FORMAT_ALIASES.values())))}"
            )
        out.add(canonical)
    if not out:
        raise ValueError("at least one image format must be accepted")
    return frozenset(out)


@dataclass
class DecodedImage:
    """A validated image: pixels at the model resolution (or None) and its identity."""

    pixels: np.ndarray | None  # size x size x 3 uint8 RGB, None when no size was asked
    width: int  # original width, after EXIF rotation
    height: int  # original height, after EXIF rotation
    sha256: str  # of the encoded bytes
    phash: int  # 64-bit perceptual hash of the oriented image
    format: str  # PIL format name: JPEG, PNG, GIF, WEBP, ...


class DecodeError(Exception):
    """The image cannot be used: ``reason`` in the closed vocabulary, ``str()`` the detail."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(
    data: bytes | None,
    size: int | None = None,
    *,
    min_side: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] | None = None,
) -> DecodedImage:
    """Validate and decode ``data``; with ``size``, also return ``size x size`` RGB pixels.

    ``size=None`` validates and hashes only (still decoding at a reduced scale where the
    format allows). Raises :class:`DecodeError` for any image that cannot be used.
    """
    if not data:
        raise DecodeError(Reason.MISSING_IMAGE, "no image bytes")
    image = _open(data, max_pixels, _pillow_ids(formats or DEFAULT_FORMATS))
    width, height = image.size
    if _orientation(image) in _ROTATING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise DecodeError(
            Reason.TOO_SMALL, f"{width}x{height} has a side below min_side={min_side}"
        )
    fmt = image.format or "unknown"
    if fmt == "JPEG":
        target = size if size is not None else _HASH_DRAFT
        image.draft("RGB", (target, target))
    rgb = _to_rgb(_load_oriented(image))
    gray = rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = None
    if size is not None:
        resized = (
            rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.BICUBIC)
        )
        pixels = np.asarray(resized, dtype=np.uint8)
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        sha256=sha256_hex(data),
        phash=phash64(np.asarray(gray)),
        format=fmt,
    )


def _pillow_ids(formats: frozenset[str]) -> list[str]:
    """Pillow ids of the formats whose plugin is available here."""
    Image.init()
    return sorted({pid for name in formats for pid in _PILLOW_IDS[name] if pid in Image.OPEN})


def _open(data: bytes, max_pixels: int, pillow_ids: list[str]) -> Image.Image:
    """Open lazily (header only) and refuse images above the pixel budget before decoding."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    # PIL's process-wide guard warns above MAX_IMAGE_PIXELS and raises above twice that;
    # the warning is silenced when this call's own budget is larger, else it means too_large.
    quiet = pil_limit is not None and max_pixels > pil_limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if quiet else "error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=pillow_ids)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise DecodeError(Reason.TOO_LARGE, str(err)) from None
    except UnidentifiedImageError:
        other = _sniff(data)
        if other is not None and other not in pillow_ids:
            raise DecodeError(
                Reason.UNSUPPORTED_FORMAT, f"{other} is not an accepted format"
            ) from None
        raise DecodeError(Reason.UNDECODABLE, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _load_error(err) from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            Reason.TOO_LARGE,
            f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}",
        )
    if image.format == "PNG":
        _verify(data)
    return image


def _verify(data: bytes) -> None:
    """Check PNG chunk checksums, which decoding alone does not."""
    try:
        Image.open(io.BytesIO(data)).verify()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _load_error(err) from None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1


def _load_oriented(image: Image.Image) -> Image.Image:
    """Decode every pixel of the first frame and apply the EXIF orientation."""
    try:
        image.load()
        return ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        raise _load_error(err) from None


def _load_error(err: BaseException) -> DecodeError:
    message = str(err) or type(err).__name__
    lowered = message.lower()
    if isinstance(err, EOFError) or "truncated" in lowered or "ended prematurely" in lowered:
        return DecodeError(Reason.TRUNCATED, message)
    return DecodeError(Reason.UNDECODABLE, message)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every PIL mode: transparency composited on white, high bit depths scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(values).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8), "L").convert(
            "RGB"
        )
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
