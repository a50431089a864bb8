"""Which image formats the decoder accepts, and what a refused file is, from its magic bytes.

Formats are named by Pillow's format names. The default, :data:`WEB_FORMATS`, is what the web
serves: JPEG (with MPO, multi-picture JPEG, which Pillow's JPEG decoder reads), PNG (with
APNG), WebP, GIF, BMP, TIFF, AVIF (Pillow's own plugin, present when Pillow is built with
libavif) and HEIF (present when the optional ``pillow-heif`` package is installed; it is
registered on first use). A format of the list that this process has no decoder for is
refused as ``unsupported_format`` with a detail saying so.

A file outside the list is identified only by signatures (Pillow's ``accept`` functions on the
first 16 bytes, and a few signatures of formats Pillow has no decoder for); no decoder of a
refused format ever parses it. EPS can never be accepted: loading it runs Ghostscript, an
external program. No decoder of the default list starts a program.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from PIL import Image

from curation.errors import ConfigError

WEB_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")

# user spellings -> Pillow format names; MPO is read by the JPEG decoder
_ALIASES = {
    "JPG": "JPEG",
    "JPE": "JPEG",
    "JFIF": "JPEG",
    "MPO": "JPEG",
    "APNG": "PNG",
    "TIF": "TIFF",
    "HEIC": "HEIF",
    "HEICS": "HEIF",
    "HEIFS": "HEIF",
}
# formats that must never be decoded, with why
_NEVER = {"EPS": "loading EPS runs Ghostscript, an external program"}
# formats that need a package besides Pillow
_PLUGIN_PACKAGES = {"HEIF": "pillow-heif", "AVIF": "a Pillow build with AVIF support"}
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
_TEXT_SNIFF = 512  # bytes searched for markup signatures


@functools.cache
def registered_formats() -> frozenset[str]:
    """Formats this process can open: every Pillow plugin, plus HEIF when pillow-heif exists."""
    Image.init()
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
    return frozenset(Image.OPEN)


def normalise_formats(names: str | Iterable[str]) -> tuple[str, ...]:
    """User-given format names (a comma-separated string or a list) -> Pillow format names.

    Case and common spellings are folded (``jpg`` -> ``JPEG``, ``tif`` -> ``TIFF``, ``heic``
    -> ``HEIF``); duplicates are dropped, order is kept. Raises :class:`ConfigError` for an
    empty list, an unknown name, EPS, or a format no decoder here can read.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    known = registered_formats()
    out: list[str] = []
    for item in items:
        name = str(item).strip().upper().lstrip(".")
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name in _NEVER:
            raise ConfigError(f"image format {name} cannot be accepted: {_NEVER[name]}")
        if name not in known:
            if name in _PLUGIN_PACKAGES:
                raise ConfigError(
                    f"image format {name} needs {_PLUGIN_PACKAGES[name]}, "
                    "which is not installed here"
                )
            choices = ", ".join(sorted(known - set(_NEVER)))
            raise ConfigError(f"unknown image format {item!r}; known formats: {choices}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("no image format given")
    return tuple(out)


@functools.cache
def accepted(formats: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(names, openers)`` of a format list as given to the decoder.

    ``names`` are the Pillow names (case and spellings folded, EPS and unknown names left out);
    ``openers`` those of them that this process has a decoder for, in order.
    """
    known = registered_formats()
    names: list[str] = []
    for name in formats:
        canonical = _ALIASES.get(name.upper(), name.upper())
        if canonical not in _NEVER and canonical not in names:
            names.append(canonical)
    return tuple(names), tuple(name for name in names if name in known)


def missing_decoder(name: str) -> str:
    """What provides the decoder of an accepted format this process cannot open."""
    return _PLUGIN_PACKAGES.get(name, "a Pillow plugin")


def claiming_format(data: bytes, formats: Iterable[str]) -> str | None:
    """The first of ``formats`` whose signature matches ``data`` (no decoder runs)."""
    prefix = data[:16]
    for name in formats:
        entry = Image.OPEN.get(name)
        if entry is not None and _accepts(entry[1], prefix):
            return name
    if "HEIF" in formats and "HEIF" not in Image.OPEN and _is_heif(prefix):
        return "HEIF"
    return None


def detect_format(data: bytes) -> str | None:
    """The format name of ``data`` from signatures alone, or None when nothing matches.

    Pillow's ``accept`` functions are tried in Pillow's order (formats without one, such as
    TGA, cannot be told from random bytes), then signatures of formats Pillow cannot open:
    HEIF without pillow-heif, JPEG XL, SVG.
    """
    registered_formats()
    found = claiming_format(data, Image.ID)
    if found is not None:
        return found
    prefix = data[:16]
    if _is_heif(prefix):
        return "HEIF"
    if prefix.startswith(b"\xff\x0a") or prefix[4:12] == b"JXL \r\n\x87\n":
        return "JXL"
    head = data[:_TEXT_SNIFF].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def describe_unknown(data: bytes) -> str:
    """What bytes that match no image signature look like, for a decision's detail."""
    head = data[:_TEXT_SNIFF].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "not an image: the bytes are an HTML document"
    return "not an image: the first bytes match no known image format"


def _accepts(accept: object, prefix: bytes) -> bool:
    if accept is None:
        return False
    try:
        return bool(accept(prefix))  # type: ignore[operator]
    except Exception:  # a signature check that cannot read a short prefix
        return False


def _is_heif(prefix: bytes) -> bool:
    return prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS
