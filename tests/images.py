"""Real and generated test images and Parquet inputs, shared by the whole test suite.

Photos come from ``skimage.data`` (bundled with scikit-image, no download). Every helper
returns plain bytes, arrays or paths so tests stay independent of each other.

Image bytes:
    photo(name)                 skimage photo as an H x W x 3 uint8 RGB array
    gradient(width, height)     deterministic synthetic RGB array
    jpeg_bytes(image, quality=90, exif_orientation=None, mode="RGB", progressive=False)
    png_bytes(image, mode=None) PNG of an array or PIL image (optionally converted to mode)
    encode(image, fmt, **save_kwargs)
    truncated(data, keep=0.6)   the first part of an encoded file
    bomb_png(width=50_000, height=50_000, color_type=2)  a tiny PNG declaring a huge image
    animated_gif(frames)        GIF of several RGB arrays
    format_samples()            small valid files of every web format variant, by name
    dds_unimplemented_pixel_format()  a DDS header PIL refuses with NotImplementedError
    eps_bytes()                 a minimal EPS file (loading it would run Ghostscript)

Parquet inputs:
    write_pairs_parquet(path, rows, row_group_size=None, schema=None)
    img2dataset_rows(images, texts, failed=())  rows shaped like img2dataset's output
    write_img2dataset_parquet(path, images, texts, failed=(), row_group_size=None)
    hf_image_rows(images, texts)                rows with a datasets Image struct column
    write_hf_parquet(path, images, texts, row_group_size=None)
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.image_formats import registered_formats

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo(name: str) -> np.ndarray:
    """A skimage.data photo as an H x W x 3 uint8 RGB array."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic smooth RGB image with some structure (H x W x 3 uint8)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    fx, fy, phase = rng.uniform(1, 4, size=3)
    r = 127 + 127 * np.sin(fx * 2 * np.pi * x / width + phase)
    g = 255 * y / max(height - 1, 1)
    b = 127 + 127 * np.cos(fy * 2 * np.pi * (x + y) / (width + height))
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _pil(image: np.ndarray | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(image)


def encode(image: np.ndarray | Image.Image, fmt: str, **save_kwargs: Any) -> bytes:
    """Encode an array or PIL image in ``fmt`` (PIL format name)."""
    buffer = io.BytesIO()
    _pil(image).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def jpeg_bytes(
    image: np.ndarray | Image.Image,
    quality: int = 90,
    exif_orientation: int | None = None,
    mode: str = "RGB",
    progressive: bool = False,
) -> bytes:
    """JPEG bytes; ``exif_orientation`` writes that EXIF Orientation tag (pixels unchanged)."""
    pil = _pil(image).convert(mode)
    kwargs: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    return encode(pil, "JPEG", **kwargs)


def png_bytes(
    image: np.ndarray | Image.Image, mode: str | None = None, **save_kwargs: Any
) -> bytes:
    """PNG bytes of an array or PIL image, optionally converted to ``mode`` first."""
    pil = _pil(image)
    if mode is not None:
        pil = pil.convert(mode)
    return encode(pil, "PNG", **save_kwargs)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first ``keep`` fraction of an encoded file."""
    return data[: int(len(data) * keep)]


def bomb_png(width: int = 50_000, height: int = 50_000, color_type: int = 2) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares width x height pixels
    (colour type 2: RGB, 6: RGBA)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    compressor = zlib.compressobj()
    idat = compressor.compress(b"\x00" * 4096) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def animated_gif(frames: Sequence[np.ndarray], duration_ms: int = 100) -> bytes:
    """An animated GIF of RGB arrays (all the same size)."""
    images = [Image.fromarray(frame) for frame in frames]
    return encode(
        images[0], "GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
    )


def format_samples(width: int = 40, height: int = 30) -> dict[str, bytes]:
    """Small valid files of every variant of the web formats, keyed ``FORMAT-variant``.

    JPEG (baseline, progressive, grayscale, CMYK, EXIF-rotated, MPO), PNG (RGB, palette with
    transparency, RGBA, 16-bit, interlaced, APNG), WebP (lossy, lossless, animated), GIF
    (still, animated), BMP (24-bit, palette, 32-bit), TIFF (raw, LZW, deflate, PackBits,
    JPEG-compressed, multi-page, 16-bit), AVIF (still, animated) and HEIF when a plugin can
    write them.
    """
    registered_formats()  # HEIF's plugin, when installed
    # saving stores encoder settings on the image, so every file gets fresh images
    first, second = gradient(width, height), gradient(width, height, seed=1)

    def rgb() -> Image.Image:
        return Image.fromarray(first)

    def other() -> Image.Image:
        return Image.fromarray(second)

    def alpha() -> Image.Image:
        image = rgb().convert("RGBA")
        image.putalpha(Image.fromarray(gradient(width, height, seed=2)[..., 0]))
        return image

    def palette() -> Image.Image:
        return rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)

    def deep() -> Image.Image:
        return Image.fromarray(first[..., 1].astype(np.uint16) * 257)

    out = {
        "JPEG-baseline": jpeg_bytes(rgb()),
        "JPEG-progressive": jpeg_bytes(rgb(), progressive=True),
        "JPEG-gray": jpeg_bytes(rgb(), mode="L"),
        "JPEG-cmyk": jpeg_bytes(rgb(), mode="CMYK"),
        "JPEG-exif-rotated": jpeg_bytes(rgb(), exif_orientation=6),
        "JPEG-mpo": encode(rgb(), "MPO", save_all=True, append_images=[other()]),
        "PNG-rgb": png_bytes(rgb()),
        "PNG-palette-transparency": encode(palette(), "PNG", transparency=0),
        "PNG-rgba": png_bytes(alpha()),
        "PNG-16bit": png_bytes(deep()),
        "PNG-interlaced": png_bytes(rgb(), interlace=1),
        "PNG-apng": encode(rgb(), "PNG", save_all=True, append_images=[other()], duration=100),
        "WEBP-lossy": encode(rgb(), "WEBP", quality=80),
        "WEBP-lossless": encode(alpha(), "WEBP", lossless=True),
        "WEBP-animated": encode(
            rgb(), "WEBP", save_all=True, append_images=[other()], duration=100
        ),
        "GIF-still": encode(palette(), "GIF"),
        "GIF-animated": animated_gif([first, second]),
        "BMP-24bit": encode(rgb(), "BMP"),
        "BMP-palette": encode(palette(), "BMP"),
        "BMP-32bit": encode(alpha(), "BMP"),
        "TIFF-raw": encode(rgb(), "TIFF"),
        "TIFF-lzw": encode(rgb(), "TIFF", compression="tiff_lzw"),
        "TIFF-deflate": encode(alpha(), "TIFF", compression="tiff_adobe_deflate"),
        "TIFF-packbits": encode(palette(), "TIFF", compression="packbits"),
        "TIFF-jpeg": encode(rgb(), "TIFF", compression="jpeg"),
        "TIFF-multipage": encode(rgb(), "TIFF", save_all=True, append_images=[other()]),
        "TIFF-16bit": encode(deep(), "TIFF"),
    }
    if "AVIF" in Image.SAVE:
        out["AVIF-still"] = encode(rgb(), "AVIF", quality=60)
        out["AVIF-animated"] = encode(rgb(), "AVIF", save_all=True, append_images=[other()])
    if "HEIF" in Image.SAVE:
        out["HEIF-still"] = encode(rgb(), "HEIF", quality=60)
    return out


def dds_unimplemented_pixel_format(width: int = 16, height: int = 16) -> bytes:
    """A DDS file whose pixel format says FourCC but whose FourCC is 0: PIL raises
    ``NotImplementedError: Unimplemented pixel format 0`` while opening it (seen in the wild)."""
    header = struct.pack(
        "<7I44x8I5I", 124, 0x1007, height, width, width * 4, 0, 0,
        32, 4, 0, 0, 0, 0, 0, 0, 0x1000, 0, 0, 0, 0,
    )  # fmt: skip
    return b"DDS " + header + b"\x00" * (width * height * 4)


def eps_bytes() -> bytes:
    """A minimal Encapsulated PostScript file with a bounding box."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n%%EndComments\n"
        b"newpath 0 0 moveto 40 30 lineto stroke\nshowpage\n%%EOF\n"
    )


def write_pairs_parquet(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    row_group_size: int | None = None,
    schema: pa.Schema | None = None,
) -> Path:
    """Write dict rows as Parquet (types inferred unless ``schema``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


IMG2DATASET_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
        ("jpg", pa.binary()),
    ]
)


def img2dataset_rows(
    images: Sequence[bytes | None],
    texts: Sequence[str | None],
    failed: Iterable[int] = (),
    shard: int = 0,
) -> list[dict[str, Any]]:
    """Rows like img2dataset's parquet output; rows in ``failed`` have status
    ``failed_to_download``, an error message and a null image."""
    failed = set(failed)
    rows = []
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        bad = i in failed
        rows.append(
            {
                "url": f"https://example.com/{shard}/{i}.jpg",
                "caption": text,
                "key": f"{shard:05d}{i:04d}",
                "status": "failed_to_download" if bad else "success",
                "error_message": "HTTP Error 404: Not Found" if bad else None,
                "width": None if bad else 0,
                "height": None if bad else 0,
                "original_width": None,
                "original_height": None,
                "exif": None,
                "sha256": None,
                "jpg": None if bad else image,
            }
        )
    return rows


def write_img2dataset_parquet(
    path: str | Path,
    images: Sequence[bytes | None],
    texts: Sequence[str | None],
    failed: Iterable[int] = (),
    row_group_size: int | None = None,
    shard: int = 0,
) -> Path:
    """Write :func:`img2dataset_rows` with img2dataset's column types."""
    rows = img2dataset_rows(images, texts, failed, shard)
    return write_pairs_parquet(path, rows, row_group_size, schema=IMG2DATASET_SCHEMA)


HF_SCHEMA = pa.schema(
    [
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("text", pa.string()),
        ("source", pa.string()),
    ]
)


def hf_image_rows(
    images: Sequence[bytes | None],
    texts: Sequence[str | None],
    paths: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Rows with a Hugging Face ``datasets`` Image struct column ``image`` {bytes, path}."""
    paths = paths if paths is not None else [None] * len(images)
    return [
        {"image": {"bytes": image, "path": p}, "text": text, "source": f"hf-{i}"}
        for i, (image, text, p) in enumerate(zip(images, texts, paths, strict=True))
    ]


def write_hf_parquet(
    path: str | Path,
    images: Sequence[bytes | None],
    texts: Sequence[str | None],
    paths: Sequence[str | None] | None = None,
    row_group_size: int | None = None,
) -> Path:
    """Write :func:`hf_image_rows` with the ``datasets`` struct type."""
    rows = hf_image_rows(images, texts, paths)
    return write_pairs_parquet(path, rows, row_group_size, schema=HF_SCHEMA)


#: Display P3's primaries (red, green, blue) in XYZ adapted to D50, as its ICC profile has them.
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))


def rgb_icc_profile(
    primaries: tuple[tuple[float, float, float], ...], gamma: float, name: str
) -> bytes:
    """A matrix/TRC RGB ICC v2 display profile (D50 white, one gamma for every channel)."""

    def fixed(*values: float) -> bytes:  # s15Fixed16Number
        return b"".join(struct.pack(">i", round(v * 65536)) for v in values)

    def xyz(values: tuple[float, float, float]) -> bytes:
        return b"XYZ \0\0\0\0" + fixed(*values)

    text = name.encode("ascii") + b"\0"
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(primaries[0])),
        (b"gXYZ", xyz(primaries[1])),
        (b"bXYZ", xyz(primaries[2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0none\0"),
    ]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        data += b"\0" * (-(start + len(data)) % 4)
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    header = struct.pack(">I", start + len(data)) + b"lcms" + bytes([2, 0x10, 0, 0])
    header += b"mntrRGB XYZ " + b"\0" * 12 + b"acspAPPL" + b"\0" * 24
    header += fixed(0.9642, 1.0, 0.8249) + b"lcms" + b"\0" * 44
    return header + struct.pack(">I", len(tags)) + table + data
