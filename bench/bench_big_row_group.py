"""Peak memory of reading one large row group: whole (the baseline) against in batches.

Writers that buffer a whole shard (pandas, img2dataset, a ``write_table`` call) put
thousands of images in one row group. The file is written with pyarrow's defaults, as they
write it; each image is a small JPEG padded to ``--kib`` KiB with random bytes (decoders
stop at the end of the JPEG). Each way runs in a fresh subprocess that reads every pair and
decodes and hashes its image (``decode_image``), and reports its peak RSS:

- **whole**: the row group read at once (``read_row_group``), then its pairs, as the
  reader did before it read in batches;
- **batches**: ``iter_rows``, which reads the row group in batches of about
  ``READ_BATCH_BYTES``.

With ``--run``, a whole ``curation run`` (bundled models, no captions) on the same file is
timed and its peak RSS measured too.

Usage: python bench/bench_big_row_group.py [--rows 1500] [--kib 500] [--run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_streaming import own_peak_rss  # noqa: E402

MIB = 2**20


def child(path: str, way: str) -> None:
    """Read one file one way and print its figures as JSON."""
    import psutil
    import pyarrow.parquet as pq

    from curation.decode import decode_image
    from curation.inputs import resolve_inputs
    from curation.layout import check_inputs
    from curation.reader import ImageFiles, _pairs, iter_rows

    base = psutil.Process().memory_info().rss
    [item] = resolve_inputs(path)
    layout = check_inputs([item])
    start = time.perf_counter()
    if way == "whole":
        with open(path, "rb") as handle:
            table = pq.ParquetFile(handle, pre_buffer=False).read_row_group(0)
            pairs = list(_pairs(table, item, layout, 0, ImageFiles()))
            del table
    else:
        pairs = (pair for pair, _ in iter_rows(item, layout))
    rows = 0
    for pair in pairs:
        decode_image(pair.image)
        rows += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "base": base, "peak": own_peak_rss(), "seconds": seconds}))


def write_input(path: Path, rows: int, kib: int) -> None:
    """``rows`` distinct padded JPEGs in one row group, with pyarrow's default settings."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from images import gradient, jpeg_bytes

    rng = os.urandom
    images = []
    for i in range(rows):
        jpeg = jpeg_bytes(gradient(96, 72, seed=i))
        images.append(jpeg + rng(max(0, kib * 1024 - len(jpeg))))
    table = pa.table({"image": images, "text": [f"picture {i}" for i in range(rows)]})
    pq.write_table(table, path, row_group_size=rows)


def run_peak(path: Path, out: Path) -> dict[str, float]:
    """Seconds and peak RSS of a whole ``curation run`` on ``path`` (bundled models)."""
    from bench_pipeline import peak_rss

    from app.demo import bundled_model

    args = [
        sys.executable, "-m", "app.cli", "run", str(path), "--out", str(out),
        "--captioner", str(bundled_model("captioner")), "--filter", str(bundled_model("filter")),
        "--captions-per-image", "0", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    peak = peak_rss(args) * MIB
    return {"seconds": time.perf_counter() - start, "peak": peak}


def in_child(path: Path, way: str) -> dict[str, float]:
    """:func:`child` in a fresh process; its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), way],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--kib", type=int, default=500)
    parser.add_argument("--run", action="store_true", help="Also time a whole curation run.")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "one-row-group.parquet"
        write_input(path, args.rows, args.kib)
        print(
            f"{args.rows} rows of ~{args.kib} KiB in one row group: {path.stat().st_size / MIB:.0f} MiB"
        )
        figures = {way: in_child(path, way) for way in ("whole", "batches")}
        print(f"{'way':>8} {'rows':>6} {'peak RSS MiB':>13} {'above imports MiB':>18} {'s':>6}")
        for way, f in figures.items():
            print(
                f"{way:>8} {f['rows']:>6} {f['peak'] / MIB:>13.0f} "
                f"{(f['peak'] - f['base']) / MIB:>18.0f} {f['seconds']:>6.1f}"
            )
        ratio = figures["whole"]["peak"] / figures["batches"]["peak"]
        print(f"peak RSS whole / batches: {ratio:.2f}x")
        if args.run:
            run = run_peak(path, Path(folder) / "run")
            print(f"curation run: {run['seconds']:.1f} s, peak RSS {run['peak'] / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
