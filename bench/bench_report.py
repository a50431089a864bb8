"""``curation report`` on a big generated run: time, peak memory and page size.

Generates a run folder with N decisions rows (half web texts, half synthetic captions,
K = 1), 5% of the images removed as duplicates, pre-model rejections, 20 input shards
whose images are real small JPEGs (so thumbnails are read back from the inputs), and a
manifest. Then, each in a fresh subprocess (so peak memory is the case's own):

- ``arrow``: ``pyarrow.parquet.read_table`` of the eight decisions columns the statistics
  use (the floor of any scan);
- ``pylist``: the same columns as Python objects (``to_pylist``), which the report must
  not do;
- ``report``: ``write_report(run)``: the whole report, statistics, samples, clusters,
  thumbnails and HTML.

Peak RSS is sampled every 20 ms during the case (``PeakRss`` of ``bench_dedup.py``).

Usage: python bench/bench_report.py [--sizes 100000 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dedup import PeakRss, machine  # noqa: E402

from curation.schemas import DECISIONS_SCHEMA, DUPLICATES_SCHEMA  # noqa: E402

SHARDS = 20
THRESHOLD = 0.5
REJECTED = 0.04  # share of input rows rejected before the models (no caption)
STATS_COLUMNS = ["key", "image_key", "source_file", "text_origin", "decision", "reason", "itm", "threshold"]  # fmt: skip
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "blue",
    "green",
    "dog",
    "cat",
    "house",
    "car",
    "tree",
    "sky",
    "on",
    "in",
    "with",
    "small",
    "big",
]


def _jpegs(count: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((320, 240)).save(buffer, format="JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


def _texts(rng: np.random.Generator, count: int = 2000) -> pa.Array:
    return pa.array(
        [" ".join(rng.choice(WORDS, rng.integers(4, 12))) for _ in range(count)], pa.string()
    )


def generate(folder: Path, rows: int) -> Path:
    """A run folder with ``rows`` decisions (and its inputs under folder/input)."""
    rng = np.random.default_rng(0)
    images = pa.array(_jpegs(), pa.binary())
    vocabulary = _texts(rng)
    # one web decision per input row, one caption per scored image: about 2 - REJECTED
    # decisions per input row; a little margin so that the table holds at least ``rows``
    n = -(-rows * 100 // 195)
    per_shard = -(-n // SHARDS)
    inputs = folder / "input"
    inputs.mkdir(parents=True)
    sources = [str(inputs / f"part-{s:05d}.parquet") for s in range(SHARDS)]
    keys = pc.utf8_lpad(pc.cast(pa.array(np.arange(n)), pa.string()), 9, "0")
    text_ids = rng.integers(0, len(vocabulary), n)
    texts = pc.take(vocabulary, pa.array(text_ids))
    for s, path in enumerate(sources):
        lo, hi = s * per_shard, min(n, (s + 1) * per_shard)
        table = pa.table(
            {
                "key": keys[lo:hi],
                "image": pc.take(images, pa.array(rng.integers(0, len(images), hi - lo))),
                "text": texts[lo:hi],
            }
        )
        pq.write_table(table, path, row_group_size=1000, use_dictionary=True)
    # web decisions: 4% rejected before the models, 5% duplicates of another image
    source_index = np.arange(n) // per_shard
    rejected = rng.random(n) < REJECTED
    duplicate = ~rejected & (rng.random(n) < 0.05)
    web_itm = np.clip(rng.beta(2, 1.5, n), 0, 1).astype(np.float32)
    synth_itm = np.clip(rng.beta(4, 1.5, n), 0, 1).astype(np.float32)
    reason = np.where(web_itm >= THRESHOLD, "kept", "low_itm").astype(object)
    reason[duplicate] = "duplicate"
    reason[rejected] = rng.choice(["undecodable", "truncated", "too_small", "missing_image"], int(rejected.sum()))  # fmt: skip
    scored = ~rejected
    image_key = pa.array(np.where(scored, np.asarray(keys.to_pylist(), object), None), pa.string())
    common = {
        "run_id": pa.array(np.full(n, "bench"), pa.string()),
        "source_file": pc.take(pa.array(sources), pa.array(source_index)),
        "source_row": pa.array(np.arange(n) - source_index * per_shard, pa.int64()),
        "threshold": pa.array(np.full(n, THRESHOLD, np.float32)),
    }
    web = pa.table(
        {
            **common,
            "key": keys,
            "image_key": image_key,
            "text_origin": pa.array(np.full(n, "web"), pa.string()),
            "caption_index": pa.nulls(n, pa.int32()),
            "text": texts,
            "itm": pa.array(web_itm, mask=rejected),
            "itc": pa.array(web_itm / 2, mask=rejected),
            "decision": pa.array(np.where(reason == "kept", "kept", "dropped"), pa.string()),
            "reason": pa.array(reason.astype(str), pa.string()),
            "detail": pa.nulls(n, pa.string()),
        }
    )
    synth_reason = np.where(synth_itm >= THRESHOLD, "kept", "low_itm").astype(object)
    synth_reason[duplicate] = "duplicate"
    synthetic = pa.table(
        {
            **common,
            "key": keys,
            "image_key": image_key,
            "text_origin": pa.array(np.full(n, "synthetic"), pa.string()),
            "caption_index": pa.array(np.zeros(n, np.int32)),
            "text": pc.take(vocabulary, pa.array(rng.integers(0, len(vocabulary), n))),
            "itm": pa.array(synth_itm),
            "itc": pa.array(synth_itm / 2),
            "decision": pa.array(np.where(synth_reason == "kept", "kept", "dropped"), pa.string()),
            "reason": pa.array(synth_reason.astype(str), pa.string()),
            "detail": pa.nulls(n, pa.string()),
        }
    ).filter(pa.array(scored))
    run = folder / "run"
    for name in ("decisions", "duplicates", "clean", "synthetic", "index"):
        (run / name).mkdir(parents=True)
    for s in range(SHARDS):
        part = pa.concat_tables(
            [
                t.filter(pc.equal(t.column("source_file"), sources[s])).select(
                    DECISIONS_SCHEMA.names
                )
                for t in (web, synthetic)
            ]
        ).cast(DECISIONS_SCHEMA)
        pq.write_table(part, run / "decisions" / f"part-{s:05d}.parquet")
    dup_rows = np.flatnonzero(duplicate)
    kinds = rng.choice(["exact", "perceptual", "near"], len(dup_rows), p=[0.3, 0.3, 0.4])
    kept_images = np.flatnonzero(scored & ~duplicate)
    targets = rng.choice(kept_images, len(dup_rows))
    similarity = np.where(kinds == "near", rng.uniform(0.95, 1.0, len(dup_rows)), 1.0)
    duplicates = pa.table(
        {
            "key": pc.take(keys, pa.array(dup_rows)),
            "dup_of": pc.take(keys, pa.array(targets)),
            "kind": pa.array(kinds.astype(str)),
            "similarity": pa.array(similarity.astype(np.float32)),
        }
    ).cast(DUPLICATES_SCHEMA)
    pq.write_table(duplicates, run / "duplicates" / "part-00000.parquet")
    manifest = {
        "tables": {
            name: {
                "files": sorted(f"{name}/{p.name}" for p in (run / name).glob("*.parquet")),
                "rows": sum(pq.read_metadata(p).num_rows for p in (run / name).glob("*.parquet")),
            }
            for name in ("decisions", "duplicates")
        },
        "run_id": "bench",
        "config": {"threshold": THRESHOLD, "captions_per_image": 1, "near_threshold": 0.95},
        "models": {"captioner": {"name": "generated"}, "filter": {"name": "generated"}},
        "inputs": [{"path": p, "bytes": Path(p).stat().st_size} for p in sources],
        "rows": n,
        "timings": {"total": 0.0},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def run_case(case: str, run: Path) -> dict:
    decisions = run / "decisions"
    with PeakRss() as rss:
        start = time.perf_counter()
        if case == "arrow":
            rows = pq.read_table(decisions, columns=STATS_COLUMNS).num_rows
            extra = {"rows": rows}
        elif case == "pylist":
            rows = len(pq.read_table(decisions, columns=STATS_COLUMNS).to_pylist())
            extra = {"rows": rows}
        else:
            from curation.audit.report import write_report

            path = Path(write_report(str(run)))
            html = path.read_text()
            extra = {"bytes": path.stat().st_size, "images": html.count("<img ")}
        seconds = time.perf_counter() - start
    return {
        "case": case,
        "seconds": seconds,
        "peak_rss_mib": rss.peak / 2**20,
        "before_mib": rss.before / 2**20,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, help="Generate into this folder and keep it.")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], Path(args.one[1]))))
        return
    print(machine(), f"pyarrow={pa.__version__}")
    print(f"{'rows':>9} {'case':<7} {'seconds':>8} {'peak MiB':>9} {'RSS before':>10}  other")
    for size in args.sizes:
        base = (
            args.keep / str(size) if args.keep else Path(tempfile.mkdtemp(prefix="bench-report-"))
        )
        started = time.perf_counter()
        run = generate(base, size)
        rows = pq.ParquetDataset(run / "decisions").read(columns=["key"]).num_rows
        print(f"{rows:>9,} generated in {time.perf_counter() - started:.1f} s")
        results = {}
        for case in ("arrow", "pylist", "report"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", case, str(run)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout)
            results[case] = result
            other = {k: v for k, v in result.items() if k in ("rows", "bytes", "images")}
            print(
                f"{rows:>9,} {case:<7} {result['seconds']:>8.2f} {result['peak_rss_mib']:>9.0f} "
                f"{result['before_mib']:>10.0f}  {other}"
            )
        report, arrow, pylist = results["report"], results["arrow"], results["pylist"]
        print(
            f"{rows:>9,} report/arrow time {report['seconds'] / arrow['seconds']:.1f}x, "
            f"report peak growth {report['peak_rss_mib'] - report['before_mib']:.0f} MiB vs "
            f"arrow {arrow['peak_rss_mib'] - arrow['before_mib']:.0f} MiB, "
            f"pylist {pylist['peak_rss_mib'] - pylist['before_mib']:.0f} MiB"
        )
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
