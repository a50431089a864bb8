"""Decode throughput on web-sized JPEGs, one core: reduced-scale vs full decode, and hashes only.

Images: skimage photos resized to 800x600 ... 1600x1200 and re-encoded at JPEG quality 85.
Modes, on the same images in the same run:

- ``draft``: ``decode_image(data, 384)`` (DCT-domain reduced-scale decode, then bicubic);
- ``full``: full-resolution decode + the same validation, hashing and bicubic resize;
- ``hash``: ``decode_image(data)`` (validation + SHA-256 + perceptual hash, no pixels).

Usage: python bench/bench_decode.py [--images 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from images import PHOTOS, jpeg_bytes, photo  # noqa: E402

from curation.decode import decode_image  # noqa: E402
from curation.hashing import HASH_SIDE, phash64, sha256_hex  # noqa: E402

SIZES = ((800, 600), (1024, 768), (1280, 960), (1600, 1200))


def full_decode(data: bytes, size: int) -> np.ndarray:
    """The same work as decode_image without the reduced-scale shortcut."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgb = image.convert("RGB")
    phash64(np.asarray(rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)))
    sha256_hex(data)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC))


def make_images(count: int) -> list[bytes]:
    photos = [photo(name) for name in PHOTOS]
    out = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        pil = Image.fromarray(photos[i % len(photos)]).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        out.append(jpeg_bytes(pil, quality=85))
    return out


def rate(fn, images: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for data in images:
            fn(data)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    images = make_images(args.images)
    mean_kb = sum(map(len, images)) / len(images) / 1024
    results = {
        "draft": rate(lambda d: decode_image(d, 384), images, args.repeat),
        "full": rate(lambda d: full_decode(d, 384), images, args.repeat),
        "hash": rate(lambda d: decode_image(d), images, args.repeat),
    }
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, pinned to 1 core")
    print(f"images: {len(images)} JPEGs q85, 800x600..1600x1200, mean {mean_kb:.0f} KiB")
    print(f"{'mode':<34} {'images/s/core':>14} {'vs full':>8}")
    labels = {
        "draft": "decode_image(size=384), draft",
        "full": "full decode + resize to 384",
        "hash": "decode_image(size=None), hash",
    }
    for key, label in labels.items():
        print(f"{label:<34} {results[key]:>14.1f} {results[key] / results['full']:>7.2f}x")


if __name__ == "__main__":
    main()
