"""The format allow-list: web formats decode, others are refused before their decoder runs."""

from __future__ import annotations

import io
import os
import random
import subprocess

import pytest
from images import (
    dds_unimplemented_pixel_format,
    encode,
    eps_bytes,
    format_samples,
    gradient,
)
from PIL import Image

from curation import image_formats
from curation.decode import DecodeError, decode_image
from curation.errors import ConfigError
from curation.image_formats import (
    WEB_FORMATS,
    detect_format,
    normalise_formats,
    registered_formats,
)
from curation.reasons import Reason

SAMPLES = format_samples()
# formats outside the default list that Pillow can write, as web scrapes hold them
OTHER_FORMATS = ("ICO", "PCX", "PPM", "QOI", "SGI", "JPEG2000", "DDS")


def refused(data: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode_image(data, 32, **kwargs)
    return caught.value


def other_format(fmt: str) -> bytes:
    return encode(Image.fromarray(gradient(40, 30)), fmt)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_web_format_variant_decodes(name: str) -> None:
    decoded = decode_image(SAMPLES[name], 24)
    expected = {"JPEG-mpo": "MPO"}.get(name, name.split("-")[0])
    assert decoded.format == expected
    rotated = name == "JPEG-exif-rotated"
    assert (decoded.width, decoded.height) == ((30, 40) if rotated else (40, 30))
    assert decoded.pixels is not None and decoded.pixels.shape == (24, 24, 3)


def test_samples_cover_every_default_format_this_machine_can_read() -> None:
    readable = {fmt for fmt in WEB_FORMATS if fmt in registered_formats()}
    assert {name.split("-")[0] for name in SAMPLES} == readable
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= readable


@pytest.mark.parametrize("fmt", OTHER_FORMATS)
def test_other_formats_are_unsupported_and_named(fmt: str) -> None:
    if fmt == "DDS":
        data = dds_unimplemented_pixel_format()
    else:
        data = other_format(fmt)
        assert Image.open(io.BytesIO(data)).format == fmt  # a real file of that format
    error = refused(data)
    assert error.reason is Reason.UNSUPPORTED_FORMAT
    assert str(error) == (
        f"{fmt} is not an accepted image format "
        "(accepted: JPEG, PNG, WEBP, GIF, BMP, TIFF, AVIF, HEIF)"
    )


def test_refused_formats_never_reach_their_decoder(monkeypatch) -> None:
    calls = []

    def spy(fmt: str):
        def factory(*args, **kwargs):
            calls.append(fmt)
            raise AssertionError(f"{fmt} decoder ran")

        return factory

    for fmt, (_, accept) in list(Image.OPEN.items()):
        if fmt not in WEB_FORMATS:
            monkeypatch.setitem(Image.OPEN, fmt, (spy(fmt), accept))
    for fmt in ("ICO", "PCX", "PPM", "QOI", "SGI", "JPEG2000"):
        assert refused(other_format(fmt)).reason is Reason.UNSUPPORTED_FORMAT
    assert refused(eps_bytes()).reason is Reason.UNSUPPORTED_FORMAT
    assert refused(dds_unimplemented_pixel_format()).reason is Reason.UNSUPPORTED_FORMAT
    assert calls == []


def test_formats_without_a_signature_are_refused_too() -> None:
    # IM and TGA have no magic bytes: IM looks like any bytes, TGA's first bytes like CUR's
    error = refused(other_format("IM"))
    assert error.reason is Reason.UNDECODABLE
    assert str(error) == "not an image: the first bytes match no known image format"
    assert refused(other_format("TGA")).reason is Reason.UNSUPPORTED_FORMAT


def test_dds_unimplemented_pixel_format_is_a_decision_not_a_crash() -> None:
    data = dds_unimplemented_pixel_format()
    with pytest.raises(NotImplementedError, match="Unimplemented pixel format 0"):
        Image.open(io.BytesIO(data))  # what escaped before
    assert refused(data).reason is Reason.UNSUPPORTED_FORMAT
    error = refused(data, formats=("DDS",))  # even when DDS is accepted
    assert error.reason is Reason.UNDECODABLE
    assert str(error) == (
        "DDS: NotImplementedError while reading the header: Unimplemented pixel format 0"
    )


def test_accepting_another_format_by_name() -> None:
    data = other_format("PPM")
    assert refused(data).reason is Reason.UNSUPPORTED_FORMAT
    decoded = decode_image(data, 16, formats=normalise_formats("jpg, ppm"))
    assert decoded.format == "PPM" and decoded.width == 40
    assert refused(SAMPLES["PNG-rgb"], formats=("ppm",)).reason is Reason.UNSUPPORTED_FORMAT


def test_the_accepted_formats_are_set_by_flag_and_by_config_key(tmp_path) -> None:
    """`--image-format` (repeatable) and the config key ``image_formats`` replace the
    default list: a PPM row is counted as decodable, the PNG row as unsupported."""
    import json

    from click.testing import CliRunner
    from images import write_pairs_parquet

    from app.cli import main

    data = tmp_path / "in.parquet"
    rows = [{"image": other_format("PPM"), "text": "a"}, {"image": SAMPLES["PNG-rgb"], "text": "b"}]
    write_pairs_parquet(data, rows)
    default = CliRunner().invoke(main, ["inspect", str(data), "--json"])
    by_flag = CliRunner().invoke(
        main, ["inspect", str(data), "--json", "--image-format", "ppm", "--image-format", "jpeg"]
    )
    config = tmp_path / "run.yaml"
    config.write_text("image_formats: [ppm, jpeg]\n")
    by_key = CliRunner().invoke(main, ["inspect", str(data), "--json", "--config", str(config)])
    reports = [json.loads(r.output) for r in (default, by_flag, by_key)]
    assert [r["examples"]["unsupported_format"][0]["key"] for r in reports] == [
        "in_000000",  # the PPM row
        "in_000001",  # the PNG row, twice
        "in_000001",
    ]
    assert all(r["counts"]["unsupported_format"] == r["counts"]["ok"] == 1 for r in reports)


def test_no_decoder_of_the_list_starts_a_program(monkeypatch) -> None:
    started = []

    def forbidden(*args, **kwargs):
        started.append(args)
        raise AssertionError("a decoder started a program")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    for name in ("system", "posix_spawn", "posix_spawnp", "fork", "execv", "execvp"):
        monkeypatch.setattr(os, name, forbidden)
    for name, data in SAMPLES.items():
        assert decode_image(data, 16).width in (30, 40), name
    error = refused(eps_bytes())  # EPS would run Ghostscript
    assert error.reason is Reason.UNSUPPORTED_FORMAT and str(error).startswith("EPS ")
    assert started == []


def test_random_bytes_are_undecodable_and_the_detail_says_so() -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = rng.randbytes(rng.randint(1, 400))
        if detect_format(data) is not None:  # a weak signature such as PCX's two bytes
            continue
        error = refused(data)
        assert error.reason is Reason.UNDECODABLE
        assert str(error) == "not an image: the first bytes match no known image format"


def test_an_html_page_is_named_as_such() -> None:
    error = refused(b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>")
    assert error.reason is Reason.UNDECODABLE
    assert str(error) == "not an image: the bytes are an HTML document"


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00" * 32, "JXL"),
        (b"\xff\x0a" + b"\x00" * 32, "JXL"),
    ],
)
def test_formats_pillow_cannot_open_are_named(data: bytes, fmt: str) -> None:
    error = refused(data)
    assert error.reason is Reason.UNSUPPORTED_FORMAT
    assert str(error).startswith(f"{fmt} is not an accepted image format")


def test_an_accepted_format_without_a_decoder_says_what_is_missing(monkeypatch) -> None:
    if "HEIF-still" not in SAMPLES:
        pytest.skip("no HEIF writer here")
    data = SAMPLES["HEIF-still"]
    without = frozenset(registered_formats() - {"HEIF"})
    monkeypatch.setattr(image_formats, "registered_formats", lambda: without)
    monkeypatch.delitem(Image.OPEN, "HEIF")
    image_formats.accepted.cache_clear()
    try:
        error = refused(data)
        assert error.reason is Reason.UNSUPPORTED_FORMAT
        assert str(error) == (
            "HEIF is accepted but this machine has no decoder for it (needs pillow-heif)"
        )
        assert refused(data, formats=("JPEG",)).reason is Reason.UNSUPPORTED_FORMAT
        with pytest.raises(ConfigError, match="HEIF needs pillow-heif"):
            normalise_formats(["heic"])
    finally:
        image_formats.accepted.cache_clear()


def test_normalise_formats_folds_spellings_and_keeps_order() -> None:
    assert normalise_formats("jpg, PNG ,tif,jpeg,.webp") == ("JPEG", "PNG", "TIFF", "WEBP")
    assert normalise_formats(["MPO", "apng", "gif", "bmp"]) == ("JPEG", "PNG", "GIF", "BMP")
    assert normalise_formats(["qoi"]) == ("QOI",)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("jpeg,eps", "EPS cannot be accepted: loading EPS runs Ghostscript"),
        ("jpeg,nope", "unknown image format 'nope'; known formats: AVIF, BLP, BMP"),
        (" , ", "no image format given"),
        ([], "no image format given"),
    ],
)
def test_normalise_formats_refuses_unusable_names(names, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalise_formats(names)
