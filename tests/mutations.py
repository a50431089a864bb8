"""Structure-aware mutations of image files, for fuzzing the decoder.

Each container format is split into its units (PNG chunks, JPEG marker segments, RIFF chunks
of WebP, ISO-BMFF boxes of AVIF/HEIF, GIF blocks, BMP headers, TIFF IFD entries) so mutations
can hit real structure:

    layout(data)                 Layout: reorderable units, header fields, byte order
    cut_points(data)             truncation offsets: every byte of the first 64, and each unit's
                                 boundaries, first bytes and middle
    set_field(data, field, v)    an integer header field set to v (PNG CRCs recomputed)
    reorder(data, order)         units permuted, dropped or repeated (indices into the units)
    flip_bits(data, positions)   bits flipped at the given bit positions
    fix_png_crcs(data)           every walkable PNG chunk gets a valid CRC again
    extremes(width)              extreme values of a width-byte unsigned field
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FIELD_SPAN = 24  # bytes at the start of each unit whose integers count as header fields
_BMFF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"moov": 0, b"trak": 0, b"mdia": 0}
_BMFF_CONTAINERS |= {b"minf": 0, b"stbl": 0, b"dinf": 0}  # box type -> bytes before children


@dataclass(frozen=True)
class Field:
    """An unsigned integer of ``width`` bytes at ``offset``."""

    offset: int
    width: int
    big_endian: bool


@dataclass
class Layout:
    """Units that may be reordered (``start, end`` spans in file order) and header fields."""

    units: list[tuple[int, int]] = field(default_factory=list)
    fields: list[Field] = field(default_factory=list)
    big_endian: bool = True


def extremes(width: int) -> tuple[int, ...]:
    """0, 1, the signed extremes and the maximum of a ``width``-byte field."""
    top = (1 << (8 * width)) - 1
    return (0, 1, top >> 1, (top >> 1) + 1, top)


def flip_bits(data: bytes, positions: Sequence[int]) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[(position // 8) % len(out)] ^= 1 << (position % 8)
    return bytes(out)


def set_field(data: bytes, target: Field, value: int) -> bytes:
    """``data`` with ``target`` set to ``value`` (wrapped to its width); PNG CRCs fixed."""
    value &= (1 << (8 * target.width)) - 1
    raw = value.to_bytes(target.width, "big" if target.big_endian else "little")
    out = data[: target.offset] + raw + data[target.offset + target.width :]
    return fix_png_crcs(out) if out.startswith(_PNG_SIGNATURE) else out


def reorder(data: bytes, order: Sequence[int]) -> bytes:
    """The units of ``data`` in ``order`` (indices may repeat or be left out)."""
    units = layout(data).units
    if not units:
        return data
    head, tail = data[: units[0][0]], data[units[-1][1] :]
    body = b"".join(data[slice(*units[i % len(units)])] for i in order)
    out = head + body + tail
    return fix_png_crcs(out) if out.startswith(_PNG_SIGNATURE) else out


def cut_points(data: bytes) -> list[int]:
    """Truncation offsets that reach every region of the file."""
    points = set(range(min(64, len(data))))
    for start, end in layout(data).units:
        points.update((start, start + 1, start + 4, start + 8, (start + end) // 2, end - 1))
    return sorted(p for p in points if 0 < p < len(data))


def fix_png_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[pos + 4 : end])))
        pos = end + 4
    return bytes(out)


def layout(data: bytes) -> Layout:
    """The units and header fields of ``data``, by its signature (empty when unknown)."""
    if data.startswith(_PNG_SIGNATURE):
        return _with_fields(_png_units(data), True, header=len(_PNG_SIGNATURE))
    if data.startswith(b"\xff\xd8"):
        return _with_fields(_jpeg_units(data), True, header=2)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _with_fields(_riff_units(data), False, header=12)
    if data[4:8] == b"ftyp":
        boxes = _bmff_units(data, 0, len(data))
        nested = _with_fields(boxes, True, header=0)
        return Layout(units=_chain(boxes), fields=nested.fields, big_endian=True)
    if data[:3] == b"GIF":
        return _with_fields(_gif_units(data), False, header=13)
    if data[:2] == b"BM":
        return _with_fields(_bmp_units(data), False, header=0)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _with_fields(_tiff_units(data), data[:2] == b"MM", header=8)
    return Layout()


def _with_fields(units: list[tuple[int, int]], big_endian: bool, header: int) -> Layout:
    fields = [Field(o, w, big_endian) for o in range(header) for w in (1, 2, 4)]
    for start, end in units:
        for offset in range(start, min(end, start + _FIELD_SPAN)):
            fields.extend(Field(offset, w, big_endian) for w in (1, 2, 4) if offset + w <= end)
    return Layout(units=units, fields=fields, big_endian=big_endian)


def _chain(boxes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The top-level boxes: the chain of spans that starts at offset 0."""
    ends = {start: end for start, end in boxes}
    chain, pos = [], 0
    while pos in ends:
        chain.append((pos, ends[pos]))
        pos = ends[pos]
    return chain


def _png_units(data: bytes) -> list[tuple[int, int]]:
    units, pos = [], len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = min(pos + 12 + length, len(data))
        units.append((pos, end))
        pos = end
    return units


def _jpeg_units(data: bytes) -> list[tuple[int, int]]:
    units, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = min(pos + 2 + length, len(data))
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to the next marker
            end = _next_marker(data, end)
        units.append((pos, end))
        pos = end
        if marker == 0xD9:
            break
    if pos < len(data):
        units.append((pos, len(data)))  # EOI, or the further pictures of an MPO file
    return units


def _next_marker(data: bytes, pos: int) -> int:
    while pos + 1 < len(data):
        if data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8)):
            return pos
        pos += 1
    return len(data)


def _riff_units(data: bytes) -> list[tuple[int, int]]:
    units, pos = [], 12
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        end = min(pos + 8 + length + (length & 1), len(data))
        units.append((pos, end))
        pos = end
    return units


def _bmff_units(data: bytes, start: int, stop: int, depth: int = 0) -> list[tuple[int, int]]:
    """Boxes from ``start`` to ``stop``, followed by the boxes nested in container boxes."""
    units, nested, pos = [], [], start
    while pos + 8 <= stop:
        (size,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = stop if size == 0 else min(pos + max(size, 8), stop)
        units.append((pos, end))
        if kind in _BMFF_CONTAINERS and depth < 4:
            nested.extend(_bmff_units(data, pos + 8 + _BMFF_CONTAINERS[kind], end, depth + 1))
        pos = end
    return units + nested


def _gif_units(data: bytes) -> list[tuple[int, int]]:
    pos = 13
    if len(data) > 10 and data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    units = []
    while pos < len(data) and data[pos] != 0x3B:
        start = pos
        if data[pos] == 0x21:
            pos = _gif_sub_blocks(data, pos + 2)
        elif data[pos] == 0x2C and pos + 10 <= len(data):
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            pos = _gif_sub_blocks(data, pos)
        else:
            break
        units.append((start, min(pos, len(data))))
    return units


def _gif_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _bmp_units(data: bytes) -> list[tuple[int, int]]:
    if len(data) < 18:
        return []
    (dib_size,) = struct.unpack_from("<I", data, 14)
    (pixels,) = struct.unpack_from("<I", data, 10)
    cuts = sorted({0, 14, min(14 + dib_size, len(data)), min(pixels, len(data)), len(data)})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if a < b]


def _tiff_units(data: bytes) -> list[tuple[int, int]]:
    order = ">" if data[:2] == b"MM" else "<"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return []
    (count,) = struct.unpack_from(order + "H", data, ifd)
    first = ifd + 2
    return [
        (first + 12 * i, first + 12 * i + 12)
        for i in range(count)
        if first + 12 * i + 12 <= len(data)
    ]
