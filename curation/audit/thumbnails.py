"""Small JPEG thumbnails of sampled images, as ``data:`` URIs, read back from the inputs.

The run's tables do not hold the images of dropped rows, so a thumbnail is read from the
input file and row a decision names: only the row groups holding sampled rows are read,
one at a time. Images go through the pipeline's own decoder (same guards, EXIF rotation
and colour handling), then are scaled so the longer side is :data:`THUMB_SIDE` pixels.
"""

from __future__ import annotations

import base64
import bisect
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from curation.config import DEFAULT_MAX_IMAGE_BYTES
from curation.decode import DEFAULT_MAX_PIXELS, DecodeError
from curation.errors import InputError
from curation.image_formats import WEB_FORMATS
from curation.inputs import InputFile
from curation.layout import Layout, detect_layout
from curation.reader import Footers, ImageFiles, read_images
from curation.screen import ScreenSettings
from curation.storage import Location

THUMB_SIDE = 128
#: The default image rules with any side accepted (a too-small image is still shown).
ANY_SIDE = ScreenSettings(min_side=1, max_pixels=DEFAULT_MAX_PIXELS, formats=WEB_FORMATS)
JPEG_QUALITY = 70


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail's ``data:`` URI, or why there is none."""

    uri: str | None
    note: str = ""


def thumbnail_uri(
    data: bytes | None, side: int = THUMB_SIDE, screen: ScreenSettings = ANY_SIDE
) -> Thumbnail:
    """A JPEG ``data:`` URI of an encoded image, its longer side ``side`` pixels, decoded
    under the run's image rules ``screen`` (any side shown)."""
    try:
        decoded = screen.decode(data, side)
    except DecodeError as err:
        return Thumbnail(None, f"{err.reason.value}: {err}")
    width, height = decoded.width, decoded.height
    scale = side / max(width, height, 1)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(decoded.pixels).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return Thumbnail(
        "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    )


def _input(
    source: str, config: Mapping[str, Any], footers: Footers
) -> tuple[InputFile, Layout, tuple[int, ...]]:
    item = InputFile(Location(source), "")
    layout = detect_layout(
        item.location,
        image_column=config.get("image_column"),
        text_column=config.get("text_column"),
        key_column=config.get("key_column"),
    )
    with footers.open(item) as opened:
        return item, layout, opened.starts


def input_thumbnails(
    locations: Iterable[tuple[str, int]], config: Mapping[str, Any]
) -> dict[tuple[str, int], Thumbnail]:
    """Thumbnails of input rows ``(source_file, source_row)``; ``config`` is the run's
    configuration (columns and image-path rules)."""
    wanted: dict[str, set[int]] = {}
    for source, row in locations:
        wanted.setdefault(source, set()).add(row)
    images = ImageFiles(
        tuple(config.get("image_roots") or ()),
        int(config.get("max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES),
    )
    screen = replace(
        ANY_SIDE,
        max_pixels=int(config.get("max_pixels") or ANY_SIDE.max_pixels),
        formats=tuple(config.get("image_formats") or ANY_SIDE.formats),
    )
    out: dict[tuple[str, int], Thumbnail] = {}
    footers = Footers()
    for source, rows in sorted(wanted.items()):
        try:
            item, layout, starts = _input(source, config, footers)
        except (InputError, OSError) as err:
            for row in rows:
                out[(source, row)] = Thumbnail(None, f"input not readable: {err}")
            continue
        by_group: dict[int, set[int]] = {}
        for row in rows:
            group = bisect.bisect_right(starts, row) - 1
            if group < 0 or row < 0:
                out[(source, row)] = Thumbnail(None, "row not in the input file")
            else:
                by_group.setdefault(group, set()).add(row)
        for group, group_rows in sorted(by_group.items()):
            try:
                found = read_images(item, layout, group, group_rows, images, footers)
            except (InputError, OSError) as err:
                found = {}
                note = f"input not readable: {err}"
            else:
                note = "row not in the input file"
            for row in group_rows:
                out[(source, row)] = (
                    thumbnail_uri(found[row], screen=screen)
                    if row in found
                    else Thumbnail(None, note)
                )
    return out
