"""Decoding and hashing: real photos, every PIL mode that shows up on the web, broken files."""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from images import (
    DISPLAY_P3,
    PHOTOS,
    animated_gif,
    bomb_png,
    encode,
    format_samples,
    gradient,
    jpeg_bytes,
    photo,
    png_bytes,
    rgb_icc_profile,
    truncated,
)
from mutations import Field, fix_png_crcs, set_field
from PIL import (
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from curation import decode as decode_module
from curation.decode import DecodedImage, DecodeError, decode_image
from curation.dedup.copies import _hash_codes
from curation.hashing import hamming, phash64, sha256_hex
from curation.reasons import Reason


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def reference(data: bytes, size: int) -> np.ndarray:
    """Full decode + bicubic squash resize, the BLIP preprocessing without shortcuts."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def test_jpeg_photo_decodes_to_model_resolution() -> None:
    data = jpeg_bytes(photo("coffee"))  # 600 x 400
    decoded = decode_image(data, 384)
    assert isinstance(decoded, DecodedImage)
    assert decoded.pixels is not None
    assert decoded.pixels.shape == (384, 384, 3) and decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height) == (600, 400)
    assert decoded.format == "JPEG"
    assert decoded.sha256 == hashlib.sha256(data).hexdigest() == sha256_hex(data)
    assert 0 <= decoded.phash < 2**64
    assert mean_abs_diff(decoded.pixels, reference(data, 384)) < 1.0


def test_png_at_native_size_is_pixel_exact() -> None:
    source = photo("astronaut")
    decoded = decode_image(png_bytes(source), 512)
    assert np.array_equal(decoded.pixels, source)


def test_reduced_scale_jpeg_decode_stays_close_to_full_decode() -> None:
    big = np.asarray(Image.fromarray(photo("astronaut")).resize((1600, 1200)))
    data = jpeg_bytes(big, quality=85)
    decoded = decode_image(data, 384)  # drafted at 1/2 scale (800 x 600), then resized
    assert (decoded.width, decoded.height) == (1600, 1200)
    assert mean_abs_diff(decoded.pixels, reference(data, 384)) < 2.0


def test_hash_only_path_returns_no_pixels_and_the_same_identity() -> None:
    data = jpeg_bytes(np.asarray(Image.fromarray(photo("rocket")).resize((1280, 854))))
    hashes_only = decode_image(data)
    with_pixels = decode_image(data, 384)
    assert hashes_only.pixels is None
    assert (hashes_only.width, hashes_only.height) == (1280, 854)
    assert hashes_only.sha256 == with_pixels.sha256
    assert hamming(hashes_only.phash, with_pixels.phash) <= 2  # decode scale barely matters


def test_phash_survives_resize_and_recompression() -> None:
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        source = photo(name)
        original = decode_image(png_bytes(source)).phash
        half = Image.fromarray(source).resize((source.shape[1] // 2, source.shape[0] // 2))
        copy = decode_image(jpeg_bytes(half, quality=60)).phash
        assert hamming(original, copy) <= 6, name


def test_distinct_photos_have_distant_phashes() -> None:
    hashes = {name: decode_image(png_bytes(photo(name))).phash for name in PHOTOS}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(hashes[a], hashes[b]) > 20, (a, b)


def test_phash_to_bytes_matches_bits_andhamming() -> None:
    hashes = [decode_image(png_bytes(photo(n))).phash for n in ("coffee", "chelsea")]
    packed = _hash_codes(np.asarray(hashes + [0, 2**64 - 1], dtype=np.uint64))
    assert packed.shape == (4, 8) and packed.dtype == np.uint8
    assert packed[2].tolist() == [0] * 8 and packed[3].tolist() == [255] * 8
    bits = np.unpackbits(packed[:2], axis=1)
    assert int((bits[0] != bits[1]).sum()) == hamming(*hashes)
    assert int.from_bytes(packed[0].tobytes(), "big") == hashes[0]


def test_phash64_needs_a_32x32_array() -> None:
    with pytest.raises(ValueError, match="32x32"):
        phash64(np.zeros((16, 16)))
    assert phash64(np.zeros((32, 32))) == 0  # flat image: nothing above the median


@pytest.mark.parametrize("data", [None, b""])
def test_no_bytes_is_missing_image(data: bytes | None) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(data, 64)
    assert caught.value.reason is Reason.MISSING_IMAGE


def test_garbage_is_undecodable() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(b"<html>404 not found</html>" * 20, 64)
    assert caught.value.reason is Reason.UNDECODABLE


@pytest.mark.parametrize("encoder", [jpeg_bytes, png_bytes], ids=["jpeg", "png"])
def test_truncated_file_is_refused_not_padded(encoder) -> None:
    data = truncated(encoder(photo("chelsea")), keep=0.6)
    for size in (None, 64):
        with pytest.raises(DecodeError) as caught:
            decode_image(data, size)
        assert caught.value.reason is Reason.TRUNCATED


def test_png_with_a_corrupted_chunk_is_refused_and_the_detail_says_so() -> None:
    data = bytearray(png_bytes(photo("chelsea")))
    data[len(data) // 2] ^= 0xFF  # inside the IDAT payload: the chunk CRC no longer matches
    with pytest.raises(DecodeError) as caught:
        decode_image(bytes(data), 64)
    assert caught.value.reason is Reason.UNDECODABLE
    assert str(caught.value) == (
        "PNG: SyntaxError while checking chunk checksums: "
        "broken PNG file (bad header checksum in b'IDAT')"
    )


@pytest.mark.parametrize("side", [50_000, 10_000])
def test_decompression_bomb_is_refused_from_the_header(side: int) -> None:
    data = bomb_png(side, side)
    assert len(data) < 1000
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape
            with pytest.raises(DecodeError) as caught:
                decode_image(data, 384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason is Reason.TOO_LARGE
    assert peak < 5_000_000  # nothing near side * side * 3 bytes was allocated


def test_max_pixels_is_a_per_call_budget() -> None:
    data = jpeg_bytes(gradient(200, 100))
    with pytest.raises(DecodeError) as caught:
        decode_image(data, 32, max_pixels=19_999)
    assert caught.value.reason is Reason.TOO_LARGE
    assert decode_image(data, 32, max_pixels=20_000).width == 200


def test_small_images_are_refused_below_min_side() -> None:
    data = png_bytes(gradient(100, 6))
    with pytest.raises(DecodeError) as caught:
        decode_image(data, 32)
    assert caught.value.reason is Reason.TOO_SMALL
    assert decode_image(data, 32, min_side=6).height == 6


def test_exif_rotation_swaps_dimensions_and_rotates_pixels() -> None:
    source = gradient(120, 80)
    plain = jpeg_bytes(source, quality=95)
    rotated = jpeg_bytes(source, quality=95, exif_orientation=6)  # display: 90 degrees clockwise
    a, b = decode_image(plain, 40), decode_image(rotated, 40)
    assert (a.width, a.height) == (120, 80)
    assert (b.width, b.height) == (80, 120)
    assert mean_abs_diff(b.pixels, np.rot90(a.pixels, k=-1)) < 1.0
    assert mean_abs_diff(b.pixels, a.pixels) > 10  # really rotated, not ignored


def test_cmyk_jpeg_becomes_rgb() -> None:
    source = photo("coffee")
    cmyk = decode_image(jpeg_bytes(source, mode="CMYK"), 128)
    rgb = decode_image(jpeg_bytes(source), 128)
    assert cmyk.pixels.shape == (128, 128, 3)
    assert mean_abs_diff(cmyk.pixels, rgb.pixels) < 4.0


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    values = np.zeros((32, 64), dtype=np.uint16)
    values[:, 32:] = 65535
    values[:16, :32] = 32896  # 128 * 257
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data, None)
    assert decoded.pixels is None
    pixels = decode_image(data, 64).pixels  # squash 64x32 -> 64x64, columns untouched
    assert pixels[40, 2].tolist() == [0, 0, 0]
    assert pixels[5, 2].tolist() == [128, 128, 128]
    assert pixels[40, 60].tolist() == [255, 255, 255]


def test_float_tiff_in_unit_range_is_scaled() -> None:
    values = np.full((16, 16), 0.5, dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(values, "F"), "TIFF"), 16)
    assert decoded.format == "TIFF"
    assert decoded.pixels[0, 0].tolist() == [128, 128, 128]


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 20, 40))  # left half red, right half index 0 = transparent black
    decoded = decode_image(encode(image, "PNG", transparency=0), 40)
    assert decoded.pixels[10, 5].tolist() == [255, 0, 0]
    assert decoded.pixels[10, 35].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent black
    rgba[:, :10, 3] = 255  # left half opaque black
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    pixels = decode_image(png_bytes(image), 20).pixels
    assert pixels[5, 2].tolist() == [0, 0, 0]
    assert pixels[5, 17].tolist() == [255, 255, 255]


def test_animated_gif_uses_the_first_frame() -> None:
    red = np.zeros((30, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = np.zeros((30, 40, 3), dtype=np.uint8)
    blue[..., 2] = 255
    decoded = decode_image(animated_gif([red, blue, blue]), 16)
    assert decoded.format == "GIF"
    assert (decoded.width, decoded.height) == (40, 30)
    assert decoded.pixels[8, 8].tolist() == [255, 0, 0]


def test_grayscale_jpeg_has_three_equal_channels() -> None:
    decoded = decode_image(jpeg_bytes(photo("coffee"), mode="L"), 64)
    assert decoded.pixels.shape == (64, 64, 3)
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


def test_same_bytes_decode_identically() -> None:
    data = jpeg_bytes(photo("chelsea"))
    a, b = decode_image(data, 96), decode_image(data, 96)
    assert np.array_equal(a.pixels, b.pixels) and a.phash == b.phash


def test_decode_error_carries_reason_and_a_readable_detail() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(png_bytes(gradient(3, 3)))
    assert caught.value.reason is Reason.TOO_SMALL
    assert str(caught.value) == "3x3 has a side below min_side=8"


def test_pil_global_pixel_guard_becomes_too_large_without_warnings(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    warning_range = jpeg_bytes(gradient(120, 100))  # 12,000 pixels: PIL warns
    error_range = jpeg_bytes(gradient(210, 100))  # 21,000 pixels: PIL raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in (warning_range, error_range):
            with pytest.raises(DecodeError) as caught:
                decode_image(data, 32, max_pixels=10_000)
            assert caught.value.reason is Reason.TOO_LARGE
        # a larger per-call budget wins over PIL's warning, not over its hard error
        assert decode_image(warning_range, 32, max_pixels=50_000).width == 120
        with pytest.raises(DecodeError) as caught:
            decode_image(error_range, 32, max_pixels=50_000)
        assert caught.value.reason is Reason.TOO_LARGE


# --- no exception escapes: every failure of one image is a decision ----------------------

SAMPLES = format_samples()


def decode_error(data: bytes, size: int | None = 32, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode_image(data, size, **kwargs)
    return caught.value


def raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (NotImplementedError("Unimplemented pixel format 0"), Reason.UNDECODABLE),
        (IndexError("list index out of range"), Reason.UNDECODABLE),
        (ZeroDivisionError("division by zero"), Reason.UNDECODABLE),
        (RuntimeError("Failed to decode image: Not implemented"), Reason.UNDECODABLE),
        (KeyError(0x0112), Reason.UNDECODABLE),
        (struct.error("unpack requires a buffer of 4 bytes"), Reason.UNDECODABLE),
        (TypeError("function takes at most 3 arguments (4 given)"), Reason.UNDECODABLE),
        (EOFError(), Reason.TRUNCATED),
        (OSError("image file is truncated (3 bytes not processed)"), Reason.TRUNCATED),
        (MemoryError(), Reason.TOO_LARGE),
        (Image.DecompressionBombError("Image size exceeds limit"), Reason.TOO_LARGE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
@pytest.mark.parametrize(
    ("target", "step"),
    [
        ((PngImagePlugin.PngImageFile, "_open"), "reading the header"),
        ((PngImagePlugin.PngImageFile, "verify"), "checking chunk checksums"),
        ((ImageFile.ImageFile, "load"), "decoding pixels"),
        ((Image.Image, "convert"), "converting to RGB"),
        ((decode_module, "phash64"), "hashing"),
        ((Image.Image, "resize"), "resizing"),  # only the resize to the model size fails
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_any_exception_of_a_decoder_becomes_a_decision(
    monkeypatch, exc: BaseException, reason: Reason, target, step: str
) -> None:
    data = png_bytes(gradient(40, 30, seed=3), mode="LA")  # LA: converted, so convert runs
    fail = raising(exc)
    if step == "resizing":
        resize = Image.Image.resize

        def fail(self, size, *args, **kwargs):
            if size == (24, 24):
                raise exc
            return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(*target, fail)
    error = decode_error(data, 24)
    assert error.reason is reason
    name = type(exc).__name__
    assert str(error) == f"PNG: {name} while {step}: {' '.join(str(exc).split()) or name}"


def test_an_interrupt_is_not_swallowed(monkeypatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        decode_image(png_bytes(gradient(40, 30)), 32)


def test_png_without_image_data_is_refused_not_an_index_error() -> None:
    data = fix_png_crcs(SAMPLES["PNG-rgb"].replace(b"IDAT", b"IDAU"))
    with pytest.raises(IndexError):  # what escaped before
        Image.open(io.BytesIO(data)).verify()
    error = decode_error(data)
    assert error.reason is Reason.UNDECODABLE
    assert str(error).startswith("PNG: IndexError while checking chunk checksums")


def test_png_with_a_broken_header_names_the_chunk() -> None:
    data = bytearray(SAMPLES["PNG-rgb"])
    data[29] ^= 0x01  # the IHDR CRC
    error = decode_error(bytes(data))
    assert error.reason is Reason.UNDECODABLE
    assert str(error) == (
        "PNG: SyntaxError while reading the header: "
        "broken PNG file (bad header checksum in b'IHDR')"
    )


def test_png_with_broken_pixel_data_is_refused_not_decoded_blank() -> None:
    source = SAMPLES["PNG-rgb"]
    data = fix_png_crcs(source[:60] + b"\xff" * 8 + source[68:])  # valid CRCs, bad zlib data
    error = decode_error(data)
    assert error.reason is Reason.UNDECODABLE
    assert str(error) == (
        "PNG: OSError while decoding pixels: broken data stream when reading image file"
    )


@pytest.mark.parametrize(
    ("sample", "field", "value", "escaped", "reason"),
    [
        ("AVIF-animated", Field(575, 1, True), 0, ZeroDivisionError, Reason.UNDECODABLE),
        ("AVIF-still", Field(81, 1, True), 0, RuntimeError, Reason.UNDECODABLE),
        ("HEIF-still", Field(320, 4, True), 2**31 - 1, RuntimeError, Reason.TOO_LARGE),
    ],
)
def test_decoder_errors_seen_in_fuzzing_are_decisions(
    sample: str, field: Field, value: int, escaped: type, reason: Reason
) -> None:
    if sample not in SAMPLES:
        pytest.skip(f"no {sample.split('-')[0]} writer here")
    data = set_field(SAMPLES[sample], field, value)
    try:
        Image.open(io.BytesIO(data)).load()
    except escaped:
        pass
    else:
        pytest.skip("this encoder's file does not reproduce the error")
    error = decode_error(data)
    assert error.reason is reason
    assert str(error).startswith(f"{sample.split('-')[0]}: {escaped.__name__} while ")


def test_corrupt_exif_means_upright_not_refused() -> None:
    good = jpeg_bytes(gradient(40, 30))
    app1 = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x01" * 16  # 65535 IFD entries
    data = good[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + good[2:]
    decoded = decode_image(data, 16)
    assert (decoded.width, decoded.height) == (40, 30)
    assert np.array_equal(decoded.pixels, decode_image(good, 16).pixels)


def test_no_pil_warning_escapes() -> None:
    data = SAMPLES["TIFF-raw"][:2000]  # TIFF warns "Truncated File Read" for cut metadata
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_error(data).reason is Reason.TRUNCATED
        assert decode_error(bomb_png(20_000, 20_000)).reason is Reason.TOO_LARGE


# --- resource budgets: memory and frames ----------------------------------------------------


def test_memory_budget_is_checked_before_any_pixel_is_decoded(monkeypatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", raising(AssertionError("decoding ran")))
    error = decode_error(bomb_png(12_000, 12_000, color_type=6), max_pixels=10**9)
    assert error.reason is Reason.TOO_LARGE
    assert str(error) == ("12000x12000 RGBA needs about 3433 MiB to decode > max_bytes=1073741824")


def test_max_bytes_is_a_per_call_budget() -> None:
    rgba = png_bytes(gradient(40, 30), mode="RGBA")  # 1,200 pixels x 25 bytes at the peak
    assert decode_error(rgba, max_bytes=29_999).reason is Reason.TOO_LARGE
    assert decode_image(rgba, 32, max_bytes=30_000).width == 40
    rgb = png_bytes(gradient(40, 30))  # no alpha to composite: 1,200 pixels x 9 bytes
    assert decode_image(rgb, 32, max_bytes=10_800).width == 40


def test_reduced_scale_jpeg_needs_only_its_reduced_size() -> None:
    big = jpeg_bytes(np.asarray(Image.fromarray(photo("coffee")).resize((1600, 1200))))
    budget = 800 * 600 * 9  # the 1/2-scale decode that size=384 needs
    assert decode_image(big, 384, max_bytes=budget).width == 1600
    assert decode_image(big, None, max_bytes=budget).width == 1600  # 1/8 scale
    assert decode_error(png_bytes(Image.open(io.BytesIO(big))), max_bytes=budget).reason is (
        Reason.TOO_LARGE
    )


def test_an_embedded_icc_profile_is_converted_to_srgb() -> None:
    numbers = np.asarray(Image.fromarray(photo("coffee")).resize((64, 48)))
    p3 = rgb_icc_profile(DISPLAY_P3, 2.2, "Display P3")
    srgb = ImageCms.createProfile("sRGB")
    expected = ImageCms.profileToProfile(
        Image.fromarray(numbers), ImageCms.ImageCmsProfile(io.BytesIO(p3)), srgb, outputMode="RGB"
    )
    for fmt in ("PNG", "TIFF"):
        pixels = decode_image(encode(Image.fromarray(numbers), fmt, icc_profile=p3), 48).pixels
        want = np.asarray(expected.resize((48, 48), Image.Resampling.BICUBIC))
        assert np.abs(pixels.astype(int) - want).max() <= 1
        assert np.abs(pixels.astype(int) - np.asarray(Image.fromarray(numbers).resize(
            (48, 48), Image.Resampling.BICUBIC))).mean() > 2  # fmt: skip
    srgb_bytes = ImageCms.ImageCmsProfile(srgb).tobytes()
    lab_bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    for ignored in (b"not a profile" * 20, lab_bytes, srgb_bytes):  # broken, unfitting, sRGB
        data = encode(Image.fromarray(numbers), "PNG", icc_profile=ignored)
        assert (decode_image(data, None).phash, decode_image(data).format) == (
            decode_image(encode(Image.fromarray(numbers), "PNG")).phash,
            "PNG",
        )


def _tiled_tiff(tile: int, side: int = 16) -> bytes:
    """A ``side`` x ``side`` RGB TIFF whose header declares ``tile`` x ``tile`` deflate tiles
    (one tile, its data a deflated all-grey tile)."""
    payload = zlib.compress(b"\x80" * (tile * tile * 3))
    bits_at, data_at = 8, 14
    ifd_at = data_at + len(payload) + (data_at + len(payload)) % 2
    entries = [  # tag, type (3 short, 4 long), value
        (256, 3, side), (257, 3, side), (258, 3, bits_at), (259, 3, 8), (262, 3, 2),
        (277, 3, 3), (284, 3, 1), (322, 4, tile), (323, 4, tile), (324, 4, data_at),
        (325, 4, len(payload)),
    ]  # fmt: skip
    body = bytearray(b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<3H", 8, 8, 8))
    body += payload + b"\0" * (ifd_at - data_at - len(payload))
    body += struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        count = 3 if tag == 258 else 1
        packed = (
            struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        )
        body += struct.pack("<HHI", tag, kind, count) + packed
    return bytes(body + struct.pack("<I", 0))


def test_a_tiffs_tile_buffer_counts_against_the_memory_budget(monkeypatch) -> None:
    assert decode_image(_tiled_tiff(16), 16).pixels[4, 4].tolist() == [128, 128, 128]
    bomb = _tiled_tiff(1024)  # 16x16 pixels, but the decoder fills a 1024x1024 tile: 3 MiB
    assert decode_image(bomb, 16, max_bytes=4 << 20).width == 16
    monkeypatch.setattr(ImageFile.ImageFile, "load", raising(AssertionError("decoding ran")))
    error = decode_error(bomb, max_bytes=2 << 20)
    assert error.reason is Reason.TOO_LARGE and "3 MiB of it decoder buffers" in str(error)


def _repeated_scans(image: np.ndarray, repeats: int) -> bytes:
    """A progressive JPEG of ``image`` with its refinement scans repeated ``repeats`` times
    (each repeat a few bytes of file and one more pass over the image)."""
    data = encode(Image.fromarray(image), "JPEG", progressive=True, quality=90)
    first = data.index(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    last = data.rindex(b"\xff\xda", first, end)
    return data[:end] + data[last:end] * repeats + data[end:]


def test_a_jpeg_whose_scans_pass_over_too_many_pixels_is_refused_unread(monkeypatch) -> None:
    image = np.asarray(Image.fromarray(photo("coffee")).resize((256, 256)))
    plain = encode(Image.fromarray(image), "JPEG", progressive=True, quality=90)
    many = _repeated_scans(image, 40)
    budget = 256 * 256  # max_pixels: 32 passes of it allowed
    assert plain.count(b"\xff\xda") < 32 < many.count(b"\xff\xda")
    assert decode_image(plain, 64, max_pixels=budget).width == 256
    assert decode_image(many, 64).width == 256  # the same scans pass under the default budget
    monkeypatch.setattr(ImageFile.ImageFile, "load", raising(AssertionError("decoding ran")))
    error = decode_error(many, max_pixels=budget)
    assert error.reason is Reason.TOO_LARGE and "scans over 256x256 pixels" in str(error)


def test_a_progressive_jpegs_full_size_coefficients_count_against_the_memory_budget() -> None:
    image = np.asarray(Image.fromarray(photo("coffee")).resize((1024, 768)))
    baseline = encode(Image.fromarray(image), "JPEG", quality=90)
    progressive = encode(Image.fromarray(image), "JPEG", quality=90, progressive=True)
    budget = 3 << 20  # the 1/8-scale frame fits; 1024x768x3 coefficients of 2 bytes do not
    assert decode_image(baseline, None, max_bytes=budget).width == 1024
    assert decode_error(progressive, max_bytes=budget).reason is Reason.TOO_LARGE


def test_a_colour_key_of_an_rgb_or_16_bit_png_is_composited_on_white() -> None:
    logo = np.zeros((20, 20, 3), np.uint8)  # black, keyed transparent
    logo[5:15, 5:15] = (200, 30, 30)
    pixels = decode_image(encode(Image.fromarray(logo), "PNG", transparency=(0, 0, 0)), 20).pixels
    assert pixels[1, 1].tolist() == [255, 255, 255] and pixels[10, 10].tolist() == [200, 30, 30]
    deep = np.full((20, 20), 20_000, np.uint16)
    deep[:, :10] = 0  # keyed transparent
    pixels = decode_image(encode(Image.fromarray(deep), "PNG", transparency=0), 20).pixels
    assert pixels[5, 2].tolist() == [255, 255, 255] and pixels[5, 15].tolist() == [78, 78, 78]


@pytest.mark.parametrize("cut", [0.05, -14], ids=["early", "in-the-pixel-data-checksum"])
def test_a_png_cut_anywhere_is_truncated(cut: float) -> None:
    data = png_bytes(photo("chelsea"))  # ends with the last IDAT's checksum, then IEND (12 bytes)
    end = int(len(data) * cut) if cut > 0 else len(data) + int(cut)
    assert decode_error(data[:end]).reason is Reason.TRUNCATED


@pytest.mark.parametrize("cut", [0.5, -5, 30], ids=["half", "last-bytes", "in-the-header"])
def test_a_webp_cut_anywhere_is_truncated(cut: float) -> None:
    data = encode(Image.fromarray(photo("chelsea")), "WEBP")
    end = int(len(data) * cut) if 0 < cut < 1 else len(data) + int(cut) if cut < 0 else int(cut)
    error = decode_error(data[:end])
    assert error.reason is Reason.TRUNCATED
    assert f"the file declares {len(data)} bytes and has {end}" in str(error)
    # a RIFF file whose declared length it has is refused for what it is
    broken = data[:12] + b"VP8 " + b"\xff" * (len(data) - 16)
    assert decode_error(broken).reason is Reason.UNDECODABLE


def test_only_the_first_frame_is_decoded_and_frames_are_never_walked(monkeypatch) -> None:
    classes = [
        GifImagePlugin.GifImageFile,
        PngImagePlugin.PngImageFile,
        WebPImagePlugin.WebPImageFile,
        TiffImagePlugin.TiffImageFile,
        MpoImagePlugin.MpoImageFile,
    ]
    classes += [Image.OPEN[fmt][0] for fmt in ("AVIF", "HEIF") if fmt in Image.OPEN]
    for cls in classes:
        original = cls.seek

        def first_only(self, frame, _original=original):
            assert frame == 0, f"frame {frame} sought"
            return _original(self, frame)

        monkeypatch.setattr(cls, "seek", first_only)
    counted = property(raising(AssertionError("frames counted")))  # these walk the file
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", counted)
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "is_animated", counted)
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", counted)
    red, blue = np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    many = animated_gif([red, blue] * 1500)  # 3,000 frames
    assert decode_image(many, 16).pixels[8, 8].tolist() == [255, 0, 0]
    for name in ("JPEG-mpo", "PNG-apng", "WEBP-animated", "GIF-animated", "TIFF-multipage"):
        first = decode_image(SAMPLES[name], 16)
        assert first.width == 40, name
    if "AVIF-animated" in SAMPLES:
        assert decode_image(SAMPLES["AVIF-animated"], 16).width == 40
