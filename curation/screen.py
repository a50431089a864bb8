"""The one decision about an input row before any model sees it, used by ``inspect`` and ``run``.

Reasons apply in this order; a row gets the first that applies:

1. ``duplicate_key``: an earlier row (files in input order, rows in file order) has the same
   key; the first occurrence keeps the key, every later one is dropped whatever its image;
2. ``download_failed``: img2dataset says the download failed;
3. the image's own reason: ``missing_image`` (no bytes, or an image path refused), then the
   decoder's (``unsupported_format``, ``undecodable``, ``truncated``, ``too_small``,
   ``too_large``; see :mod:`curation.decode`);
4. ``empty_text``: the web text is null or blank. Such a row's image still goes to the models
   (its synthetic captions are decided like any other); the web decision is ``empty_text``.

:func:`screen_pair` applies 2 and 3 to one row; the key rule needs every row's key and is
applied by the caller (``inspect`` in memory with :class:`KeyRegistry`, the pipeline by a
grouping on the key with :func:`first_occurrence`); 4 is :func:`has_text`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from curation.config import InputSettings
from curation.decode import DecodedImage, DecodeError, decode_image
from curation.reasons import Reason
from curation.records import HashedPair, Pair

IMG2DATASET_SUCCESS = "success"


@dataclass(frozen=True)
class ScreenSettings:
    """What the image checks need from the input settings."""

    min_side: int
    max_pixels: int
    formats: tuple[str, ...]  # Pillow format names

    @classmethod
    def of(cls, settings: InputSettings) -> ScreenSettings:
        return cls(settings.min_side, settings.max_pixels, tuple(settings.image_formats))

    def decode(self, data: bytes | None, size: int | None = None) -> DecodedImage:
        """:func:`~curation.decode.decode_image` under these settings: screening, the models'
        pixels and the report's thumbnails apply the same image rules."""
        return decode_image(
            data, size, min_side=self.min_side, max_pixels=self.max_pixels, formats=self.formats
        )


@dataclass(frozen=True)
class Rejection:
    """A row refused before the models, with its reason and detail (image bytes dropped)."""

    pair: Pair
    reason: Reason
    detail: str | None


def refused_before_decoding(pair: Pair) -> tuple[Reason, str | None] | None:
    """The reason and detail of rule 2, or of rule 3 for an image path that was refused;
    None when the row's image bytes are to be decoded."""
    if pair.status is not None and pair.status != IMG2DATASET_SUCCESS:
        return Reason.DOWNLOAD_FAILED, pair.error or pair.status
    return pair.image_issue


def screen_pair(pair: Pair, settings: ScreenSettings) -> HashedPair | Rejection:
    """Decode and hash a row's image, or say why the row is refused (rules 2 and 3)."""
    if (refused := refused_before_decoding(pair)) is not None:
        return Rejection(_light(pair), *refused)
    try:
        image = settings.decode(pair.image)
    except DecodeError as err:
        return Rejection(_light(pair), err.reason, str(err))
    return HashedPair(_light(pair), image.sha256, image.phash, image.width, image.height)


def _light(pair: Pair) -> Pair:
    """The pair without its image bytes (they are read again where they are needed)."""
    return pair if pair.image is None else replace(pair, image=None)


def has_text(text: str | None) -> bool:
    """False for a null web text, or one with nothing left for the models (rule 4)."""
    from curation.grouping import text_identity

    return bool(text_identity(text))


def row_order(pair: Pair, file_order: Mapping[str, int]) -> tuple[int, int]:
    """Position of a row in the input: its file's position, then its row."""
    return (file_order[pair.source_file], pair.source_row)


def first_occurrence(pairs: Iterable[Pair], file_order: Mapping[str, int]) -> Pair:
    """The row that keeps a key shared by ``pairs`` (rule 1)."""
    return min(pairs, key=lambda p: row_order(p, file_order))


def duplicate_key(pair: Pair, first: Pair) -> Rejection:
    """The rejection of a later row whose key ``first`` already has."""
    detail = f"key {pair.key!r} already used by {first.source_file} row {first.source_row}"
    if first.key_note:
        detail += f" ({first.key_note})"
    return Rejection(_light(pair), Reason.DUPLICATE_KEY, detail)


class KeyRegistry:
    """Keys seen so far in input order (for a sequential reader): rule 1 in memory.

    Keys are remembered as 16-byte digests with where they were first seen.
    """

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[str, int, str | None]] = {}

    def check(self, pair: Pair) -> Rejection | None:
        """None for a key's first occurrence, else its ``duplicate_key`` rejection."""
        digest = hashlib.blake2b(pair.key.encode("utf-8", "surrogatepass"), digest_size=16)
        seen = (pair.source_file, pair.source_row, pair.key_note)
        first = self._first.setdefault(digest.digest(), seen)
        if first == seen:
            return None
        owner = replace(pair, source_file=first[0], source_row=first[1], key_note=first[2])
        return duplicate_key(pair, owner)
