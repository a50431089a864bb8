"""Image bytes -> validated RGB pixels at the model resolution, with exact and perceptual hashes.

Every image ends as a :class:`DecodedImage` or a :class:`DecodeError` carrying a
:class:`~curation.reasons.Reason`; no other exception leaves :func:`decode_image`, and a bad
image is never replaced by a placeholder. Rules, in order:

- empty input -> ``missing_image``;
- format: only formats of ``formats`` (default :data:`~curation.image_formats.WEB_FORMATS`)
  reach a decoder. Any other -> ``unsupported_format``, the detail naming the format found from
  its signature alone (its decoder never sees the bytes); bytes matching no image signature ->
  ``undecodable``, the detail saying so;
- budgets, from the header, BEFORE any pixel is allocated: more than ``max_pixels`` ->
  ``too_large`` (decompression bombs); an estimated peak memory of the decode (the first frame
  in its decoded mode, the copies made for orientation and RGB conversion, and the buffers
  the decoder holds beside the frame: a TIFF's tile or strip, a multi-scan JPEG's
  full-resolution coefficients) above ``max_bytes`` -> ``too_large``; a JPEG whose scans
  would pass over more than :data:`SCAN_PASSES` times ``max_pixels`` pixels -> ``too_large``
  (each scan of a progressive JPEG is a pass over the whole image, and a scan costs a few
  bytes of file); a side below ``min_side`` -> ``too_small``. PIL's own
  ``Image.MAX_IMAGE_PIXELS`` guard still refuses above twice its limit; no PIL warning escapes;
- frames: only the first frame of an animated or multi-page file (GIF, APNG, WebP, TIFF, MPO,
  AVIF, HEIF) is decoded. Frames are never counted, walked or seeked, so the frame count a
  header declares costs nothing and is not a budget;
- colour: an RGB, CMYK or grey image with an embedded ICC profile is converted from it to
  sRGB (a profile that cannot be read or does not fit the image is ignored, as browsers do);
  transparency (an alpha channel, or a colour key of palette, grey, RGB and 16-bit images) is
  composited on white; high bit depths are scaled to 8 bits;
- the whole first frame is decoded (PIL's ``LOAD_TRUNCATED_IMAGES`` is never set) and PNG chunk
  checksums are verified: a file that ends early -> ``truncated``; any other failure while
  reading the header, decoding, converting, hashing or resizing -> ``undecodable`` with the
  detail ``"<FORMAT>: <ExceptionType> while <step>: <message>"``; running out of memory ->
  ``too_large``.

JPEGs are decoded at a reduced DCT scale (``Image.draft``) when the target is at most half
the image side, then squash-resized with bicubic filtering like BLIP's preprocessing.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageMode, UnidentifiedImageError

from curation.hashing import HASH_SIDE, phash64, sha256_hex
from curation.image_formats import (
    WEB_FORMATS,
    accepted,
    claiming_format,
    describe_unknown,
    detect_format,
    missing_decoder,
)
from curation.reasons import Reason

#: The version of the rules that turn bytes into pixels; raised whenever a change gives some
#: image other pixels (model outputs cached under another version are computed again).
PIXEL_RULES = 2
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default budget (about 0.25 GiB at 3 bytes/pixel)
DEFAULT_MAX_BYTES = 1 << 30  # estimated peak memory of decoding one image
#: A JPEG may pass over at most this many times ``max_pixels`` pixels in its scans (a
#: progressive JPEG from common encoders has about 10 scans).
SCAN_PASSES = 32
_SOS = b"\xff\xda"  # JPEG start-of-scan marker (entropy-coded data never holds these bytes)
_HASH_DRAFT = 128  # reduced-scale decode target when only hashes are needed
_JPEG_FORMATS = ("JPEG", "MPO")  # formats Image.draft can decode at a reduced scale
_TRANSPOSE = {  # EXIF orientation -> the transposition that displays the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255)
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Bytes per pixel of the working copies each RGB conversion makes (see _to_rgb), on top of the
# decoded frame, an oriented RGB copy (4) and the grayscale copy hashed (1).
_CONVERSION_BYTES = {"none": 0, "plain": 4, "alpha": 16, "int": 20, "float": 30}
_STEP_BYTES = 5
_PROFILE_BYTES = 4  # the sRGB copy a colour-managed conversion makes
#: Modes converted from an embedded ICC profile, and the profile colour space each needs.
_MANAGED_MODES = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}
# words of decoder messages: a decoder's own resource limit (libheif), a file that ends early
_LIMIT_WORDS = ("security limit",)
_TRUNCATION_WORDS = (
    "truncated",
    "ended prematurely",
    "unexpected end",
    "end of file",
    "chunk b''",  # PNG: the next chunk's header is missing
    "requires a buffer of at least",  # struct: fewer bytes left than a field needs
)


@dataclass
class DecodedImage:
    """A validated image: pixels at the model resolution (or None) and its identity."""

    pixels: np.ndarray | None  # size x size x 3 uint8 RGB, None when no size was asked
    width: int  # original width, after EXIF rotation
    height: int  # original height, after EXIF rotation
    sha256: str  # of the encoded bytes
    phash: int  # 64-bit perceptual hash of the oriented image
    format: str  # PIL format name: JPEG, MPO, PNG, GIF, WEBP, ...


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    formats: Iterable[str] = WEB_FORMATS,
) -> DecodedImage:
    """Validate and decode ``data``; with ``size``, also return ``size x size`` RGB pixels.

    ``size=None`` validates and hashes only (still decoding at a reduced scale where the
    format allows). ``formats`` are Pillow format names (see
    :func:`~curation.image_formats.normalise_formats`). Raises :class:`DecodeError` for any
    image that cannot be used, and no other exception.
    """
    if not data:
        raise DecodeError(Reason.MISSING_IMAGE, "no image bytes")
    fmt, step = "image", "reading the header"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd metadata and large images
            image = _open(data, tuple(formats))
            fmt = image.format or "unknown"
            width, height = image.size
            _check_pixels(width, height, min_side, max_pixels)
            if fmt == "PNG":
                step = "checking chunk checksums"
                Image.open(io.BytesIO(data), formats=("PNG",)).verify()
            scans = data.count(_SOS) if fmt in _JPEG_FORMATS else 0
            held = _decoder_buffers(image, scans)
            if fmt in _JPEG_FORMATS:
                _check_scans(scans, width, height, max_pixels)
                target = size if size is not None else _HASH_DRAFT
                image.draft("RGB", (target, target))
            _check_memory(image, max_bytes, held)
            step = "decoding pixels"
            image.load()
            step = "converting to RGB"
            orientation = _orientation(image)
            rgb = _to_rgb(image)
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
            if orientation in _ROTATING_ORIENTATIONS:
                width, height = height, width
            step = "hashing"
            gray = rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
            phash = phash64(np.asarray(gray))
            digest = sha256_hex(data)
            pixels = None
            if size is not None:
                step = "resizing"
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
                pixels = np.asarray(rgb, dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as err:
        raise _failure(fmt, step, err, data) from None
    return DecodedImage(
        pixels=pixels, width=width, height=height, sha256=digest, phash=phash, format=fmt
    )


def _open(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    """Open lazily (header only) with the accepted formats' decoders, else say what it is."""
    names, openers = accepted(formats)
    try:
        return Image.open(io.BytesIO(data), formats=openers)
    except UnidentifiedImageError:
        pass
    except Exception as err:
        fmt = claiming_format(data, openers) or "image"
        raise _failure(fmt, "reading the header", err, data) from None
    claimed = claiming_format(data, names)
    if claimed is not None and claimed not in openers:
        raise DecodeError(
            Reason.UNSUPPORTED_FORMAT,
            f"{claimed} is accepted but this machine has no decoder for it "
            f"(needs {missing_decoder(claimed)})",
        )
    if claimed is not None:
        raise _header_failure(data, claimed)
    found = detect_format(data)
    if found is not None:
        raise DecodeError(
            Reason.UNSUPPORTED_FORMAT,
            f"{found} is not an accepted image format (accepted: {', '.join(names)})",
        )
    raise DecodeError(Reason.UNDECODABLE, describe_unknown(data))


def _header_failure(data: bytes, fmt: str) -> DecodeError:
    """Why the decoder of an accepted format that recognised the signature refused the header.

    PIL swallows that error while trying formats; the same decoder runs again to name it.
    """
    factory = Image.OPEN[fmt][0]
    try:
        factory(io.BytesIO(data), "")
    except Exception as err:
        return _failure(fmt, "reading the header", err, data)
    return DecodeError(Reason.UNDECODABLE, f"{fmt}: the header could not be read")


def _check_pixels(width: int, height: int, min_side: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError(
            Reason.TOO_LARGE,
            f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}",
        )
    if min(width, height) < min_side:
        raise DecodeError(
            Reason.TOO_SMALL, f"{width}x{height} has a side below min_side={min_side}"
        )


def _decoder_buffers(image: Image.Image, scans: int) -> int:
    """Bytes the decoder holds beside the decoded frame, from the header (full size);
    ``scans``: a JPEG's scan count."""
    width, height = image.size
    if image.format == "TIFF":
        tags = image.tag_v2
        samples = int(tags.get(277, len(image.getbands())))
        bits = tags.get(258, (8,))
        sample_bytes = (max(bits if isinstance(bits, tuple) else (bits,)) + 7) // 8
        tile = (tags.get(322), tags.get(323))
        if tile[0] and tile[1]:  # tiles are not clipped to the image: a decoder fills them
            return int(tile[0]) * int(tile[1]) * samples * sample_bytes
        rows = min(int(tags.get(278, height)), height)
        return width * rows * samples * sample_bytes
    if scans > 1:
        # a progressive or multi-scan JPEG keeps every DCT coefficient (2 bytes) at full size
        return 2 * width * height * len(image.getbands())
    return 0


def _check_scans(scans: int, width: int, height: int, max_pixels: int) -> None:
    """Refuse a JPEG whose scans would pass over too many pixels (see :data:`SCAN_PASSES`)."""
    if scans * width * height > SCAN_PASSES * max_pixels:
        raise DecodeError(
            Reason.TOO_LARGE,
            f"{scans} scans over {width}x{height} pixels > {SCAN_PASSES} passes of "
            f"max_pixels={max_pixels}",
        )


def _check_memory(image: Image.Image, max_bytes: int, held: int = 0) -> None:
    """Refuse before decoding when the decode's estimated peak memory (with ``held`` bytes
    of decoder buffers) exceeds ``max_bytes``."""
    width, height = image.size
    per_pixel = (
        _mode_bytes(image.mode)
        + _CONVERSION_BYTES[_conversion(image.mode, image.info)]
        + _STEP_BYTES
        + (_PROFILE_BYTES if "icc_profile" in image.info else 0)
    )
    needed = width * height * per_pixel + held
    if needed > max_bytes:
        buffers = f", {held / 2**20:.0f} MiB of it decoder buffers" if held >= 2**20 else ""
        raise DecodeError(
            Reason.TOO_LARGE,
            f"{width}x{height} {image.mode} needs about {needed / 2**20:.0f} MiB to decode"
            f"{buffers} > max_bytes={max_bytes}",
        )


def _mode_bytes(mode: str) -> int:
    """Bytes per pixel PIL stores for ``mode`` (multi-band modes take 4)."""
    try:
        described = ImageMode.getmode(mode)
    except KeyError:
        return 4
    return 4 if len(described.bands) > 1 else max(1, int(described.typestr[2:]))


def _failure(fmt: str, step: str, err: BaseException, data: bytes) -> DecodeError:
    """The decision for an exception raised while ``step`` of a ``fmt`` file."""
    if isinstance(err, SyntaxError) and isinstance(err.__cause__, Exception):
        err = err.__cause__  # PIL wraps a plugin's IndexError, EOFError, ... in SyntaxError
    message = " ".join(str(err).split()) or type(err).__name__  # one line
    detail = f"{fmt}: {type(err).__name__} while {step}: {message}"
    lowered = message.lower()
    if isinstance(err, MemoryError | Image.DecompressionBombError) or any(
        words in lowered for words in _LIMIT_WORDS
    ):
        return DecodeError(Reason.TOO_LARGE, detail)
    if isinstance(err, EOFError) or any(words in lowered for words in _TRUNCATION_WORDS):
        return DecodeError(Reason.TRUNCATED, detail)
    if (declared := _declared_length(data)) is not None and len(data) < declared:
        return DecodeError(
            Reason.TRUNCATED, f"{detail} (the file declares {declared} bytes and has {len(data)})"
        )
    return DecodeError(Reason.UNDECODABLE, detail)


def _declared_length(data: bytes) -> int | None:
    """The whole file's length as its container header declares it (RIFF: WebP), if any."""
    if data[:4] == b"RIFF" and len(data) >= 8:
        return int.from_bytes(data[4:8], "little") + 8
    return None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8); unreadable or absent EXIF means upright (1)."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # corrupt EXIF is common and does not make the pixels unusable
        return 1
    return value if 1 <= value <= 8 else 1


def _conversion(mode: str, info: dict) -> str:
    """Which RGB conversion ``_to_rgb`` applies to an image of ``mode`` with ``info``."""
    if mode in _INT_MODES:
        return "int"
    if mode == "F":
        return "float"
    if mode in _ALPHA_MODES or "transparency" in info:
        return "alpha"  # an alpha channel, or a colour key (palette, grey or RGB)
    if mode == "RGB":
        return "none"
    return "plain"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every PIL mode: from an embedded ICC profile to sRGB, transparency composited
    on white, high bit depths scaled."""
    kind = _conversion(image.mode, image.info)
    icc = image.info.get("icc_profile")
    if icc and kind in ("none", "plain") and image.mode in _MANAGED_MODES:
        transform = _srgb_transform(bytes(icc), image.mode)
        if transform is not None:
            return ImageCms.applyTransform(image, transform)
    if kind == "none":
        return image
    if kind == "int":
        raw = np.asarray(image)
        gray = np.round(np.clip(raw.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
        key = image.info.get("transparency")
        if isinstance(key, int):  # a colour key: pixels of that value are transparent
            gray[raw == key] = 255
        return Image.fromarray(gray, "L").convert("RGB")
    if kind == "float":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8), "L").convert(
            "RGB"
        )
    if kind == "alpha":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from the ICC profile ``icc`` of a ``mode`` image to sRGB; None when the
    profile is sRGB already, cannot be read, or does not fit the mode."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if source.profile.xcolor_space.strip() != _MANAGED_MODES[mode]:
            return None
        if mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        return ImageCms.buildTransform(
            source,
            _srgb(),
            mode,
            "RGB",
            flags=ImageCms.Flags.NOCACHE,  # shared by threads
        )
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
