"""Peak memory of streaming an input: N rows vs 10N rows through ``iter_rows`` + hashing.

Each size is read in a fresh subprocess that iterates every pair, validates and hashes its
image (``decode_image(data)``: SHA-256 + perceptual hash) and reports its peak RSS
(``VmHWM``) and its RSS after imports. Streaming holds, when the peak grows by
at most 20% from N to 10N rows.

Usage: python bench/bench_streaming.py [--rows 1000] [--row-group 250] [--kib 24]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def child(path: str) -> None:
    """Read one file and print its figures as JSON."""
    import psutil

    from curation.decode import decode_image
    from curation.inputs import resolve_inputs
    from curation.layout import check_inputs
    from curation.reader import iter_rows

    base = psutil.Process().memory_info().rss
    [item] = resolve_inputs(path)
    layout = check_inputs([item])
    start = time.perf_counter()
    rows = 0
    for pair, _ in iter_rows(item, layout):
        decode_image(pair.image)
        rows += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "base": base, "peak": own_peak_rss(), "seconds": seconds}))


def own_peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM``, counted since its exec (``ru_maxrss``
    of a child can hold its parent's RSS at the fork)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_input(path: Path, rows: int, row_group: int, kib: int) -> None:
    """Rows of distinct JPEGs of about ``kib`` KiB (noise photos), written without dictionary."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from images import jpeg_bytes

    rng = np.random.default_rng(0)
    side = int((kib * 1024 / 1.4) ** 0.5)  # noisy q90 JPEG: about 1.4 bytes per pixel
    pool = [jpeg_bytes(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(16)]
    schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema, use_dictionary=False) as writer:
        for first in range(0, rows, row_group):
            n = min(row_group, rows - first)
            batch = {
                "key": [f"k{first + i}" for i in range(n)],
                "image": [
                    pool[(first + i) % 16] + (first + i).to_bytes(4, "big") for i in range(n)
                ],
                "text": [f"a noisy picture number {first + i}" for i in range(n)],
            }
            writer.write_table(pa.table(batch, schema=schema))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--row-group", type=int, default=250)
    parser.add_argument("--kib", type=int, default=24)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for rows in (args.rows, 10 * args.rows):
            path = Path(folder) / f"rows-{rows}.parquet"
            write_input(path, rows, args.row_group, args.kib)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            figures = json.loads(out.stdout)
            figures["file_mib"] = path.stat().st_size / 2**20
            results.append(figures)
            path.unlink()
    mib = 2**20
    print(f"row group: {args.row_group} rows, ~{args.kib} KiB per image")
    print(f"{'rows':>7} {'file MiB':>9} {'RSS after imports':>18} {'peak RSS':>9} {'rows/s':>8}")
    for r in results:
        print(
            f"{r['rows']:>7} {r['file_mib']:>9.1f} {r['base'] / mib:>17.1f}M "
            f"{r['peak'] / mib:>8.1f}M {r['rows'] / r['seconds']:>8.0f}"
        )
    ratio = results[1]["peak"] / results[0]["peak"]
    growth = (results[1]["peak"] - results[1]["base"]) / max(
        results[0]["peak"] - results[0]["base"], 1
    )
    print(f"peak ratio 10N/N: {ratio:.3f} (limit 1.2); growth above imports: {growth:.2f}x")
    sys.exit(0 if ratio <= 1.2 else 1)


if __name__ == "__main__":
    main()
