"""Decode throughput, one core: this decoder against an earlier one, and reduced-scale decoding.

Images: skimage photos resized to 800x600 ... 1600x1200, as JPEG (quality 85), PNG and WebP
(quality 85). The earlier decoder is ``curation/decode.py`` at git revision ``--baseline``
(default: the decoder before the format allow-list, budgets and error handling), loaded from
git and run on the same images in the same process, passes alternating with this one.

Modes, each for this decoder and the baseline:

- ``size=384``: ``decode_image(data, 384)`` (JPEG: DCT-domain reduced-scale decode);
- ``hash``: ``decode_image(data)`` (validation + SHA-256 + perceptual hash, no pixels);

and, for reference, a full-resolution JPEG decode with the same hashing and resize.

Usage: python bench/bench_decode.py [--images 48] [--repeat 5] [--baseline 7697077]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from images import PHOTOS, encode, jpeg_bytes, photo  # noqa: E402

from curation import decode  # noqa: E402
from curation.hashing import HASH_SIDE, phash64, sha256_hex  # noqa: E402

SIZES = ((800, 600), (1024, 768), (1280, 960), (1600, 1200))
BASELINE = "7697077"  # the decoder before the allow-list, the budgets and the error handling


def full_decode(data: bytes, size: int) -> np.ndarray:
    """The same work as decode_image without the reduced-scale shortcut."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgb = image.convert("RGB")
    phash64(np.asarray(rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)))
    sha256_hex(data)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC))


def load_baseline(revision: str) -> ModuleType:
    """``curation/decode.py`` at ``revision``, imported as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:curation/decode.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "decode_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("decode_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_images(count: int, fmt: str) -> list[bytes]:
    photos = [photo(name) for name in PHOTOS]
    out = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        pil = Image.fromarray(photos[i % len(photos)]).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        if fmt == "JPEG":
            out.append(jpeg_bytes(pil, quality=85))
        else:
            out.append(encode(pil, fmt, **({"quality": 85} if fmt == "WEBP" else {})))
    return out


def rates(
    fns: dict[str, Callable[[bytes], object]], images: list[bytes], repeat: int
) -> dict[str, float]:
    """Images per CPU second of each function, best of ``repeat`` passes, passes interleaved.

    CPU time of this process (one core, one thread) rather than wall time, so that other work
    on a shared machine does not count.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.process_time()
            for data in images:
                fn(data)
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(images) / seconds for name, seconds in best.items()}


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
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    before = load_baseline(args.baseline)
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, pinned to 1 core")
    print(f"Python {platform.python_version()}, Pillow {PIL.__version__}")
    print(f"baseline: curation/decode.py at {args.baseline}; best of {args.repeat} passes")
    print("rates: images per CPU second")
    print(f"{'images':<22} {'mode':<10} {'baseline/s':>11} {'now/s':>9} {'now/baseline':>13}")
    for fmt in ("JPEG", "PNG", "WEBP"):
        images = make_images(args.images if fmt == "JPEG" else args.images // 2, fmt)
        mean_kb = sum(map(len, images)) / len(images) / 1024
        label = f"{len(images)} {fmt}, {mean_kb:.0f} KiB"
        for mode, size in (("size=384", 384), ("hash", None)):
            found = rates(
                {
                    "baseline": lambda d, s=size: before.decode_image(d, s),
                    "now": lambda d, s=size: decode.decode_image(d, s),
                },
                images,
                args.repeat,
            )
            ratio = found["now"] / found["baseline"]
            print(
                f"{label:<22} {mode:<10} {found['baseline']:>11.1f} {found['now']:>9.1f} "
                f"{ratio:>12.3f}x"
            )
        if fmt == "JPEG":
            full = rates({"full": lambda d: full_decode(d, 384)}, images, args.repeat)["full"]
            print(f"{label:<22} {'full':<10} {'':>11} {full:>9.1f}   (full-resolution decode)")


if __name__ == "__main__":
    main()
