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

from curation.decode import DecodeError, decode_image
from curation.errors import InputError
from curation.reader import Layout, detect_layout, open_parquet, read_row_group

THUMB_SIDE = 128
JPEG_QUALITY = 70


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail's ``data:`` URI, or why there is none."""

    uri: str | None
    note: str = ""


def thumbnail_uri(data: bytes | None, side: int = THUMB_SIDE) -> Thumbnail:
    """A JPEG ``data:`` URI of an encoded image, its longer side ``side`` pixels."""
    try:
        decoded = decode_image(data, side, min_side=1)
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


def _layout(path: str, config: Mapping[str, Any]) -> Layout:
    layout = detect_layout(
        path,
        image_column=config.get("image_column"),
        text_column=config.get("text_column"),
        key_column=config.get("key_column"),
    )
    return replace(layout, passthrough=())


def _row_group_starts(path: str) -> list[int]:
    metadata = open_parquet(path).metadata
    starts, first = [], 0
    for index in range(metadata.num_row_groups):
        starts.append(first)
        first += metadata.row_group(index).num_rows
    return starts


def input_thumbnails(
    locations: Iterable[tuple[str, int]], config: Mapping[str, Any]
) -> dict[tuple[str, int], Thumbnail]:
    """Thumbnails of input rows ``(source_file, source_row)``; ``config`` names the columns."""
    wanted: dict[str, set[int]] = {}
    for source, row in locations:
        wanted.setdefault(source, set()).add(row)
    out: dict[tuple[str, int], Thumbnail] = {}
    for source, rows in sorted(wanted.items()):
        try:
            layout = _layout(source, config)
            starts = _row_group_starts(source)
        except InputError as err:
            for row in rows:
                out[(source, row)] = Thumbnail(None, f"input not readable: {err}")
            continue
        by_group: dict[int, list[int]] = {}
        for row in rows:
            group = bisect.bisect_right(starts, row) - 1
            if group < 0 or row < 0:
                out[(source, row)] = Thumbnail(None, "row not in the input file")
            else:
                by_group.setdefault(group, []).append(row)
        for group, group_rows in sorted(by_group.items()):
            pairs = read_row_group(source, layout, group)
            for row in group_rows:
                offset = row - starts[group]
                if offset >= len(pairs):
                    out[(source, row)] = Thumbnail(None, "row not in the input file")
                else:
                    out[(source, row)] = thumbnail_uri(pairs[offset].image)
    return out
