"""Dedup at scale: near-duplicates on embeddings, cell assignment, copy grouping on
perceptual hashes, and previous-round dedup on the compressed index.

Cases, each in a fresh subprocess (so peak memory is the case's own):

- ``near N``: N clustered 256-d unit embeddings (N/1000 clusters, same-cluster cosine
  about 0.74) of which 5% are planted near-copies (cosine 0.955-0.995) of other rows;
  ``find_near_duplicates(threshold=0.95)``. Recall of the planted pairs (not both images
  kept), and recall of every pair above the threshold for 1,000 sampled rows against exact
  brute force over all N (not both kept).
- ``cells N``: the cells ``find_near_duplicates`` would train for N such vectors (trained
  on their sample only), then 65,536 of the vectors assigned to their 3 nearest cells by
  the two-level quantizer and, as the baseline in the same run, by one flat list of all
  fine centroids: microseconds per vector of each, and how often they agree.
- ``copies N``: N random 64-bit perceptual hashes, 5% planted near-copies (1-4 bits
  flipped), every image with its own sha256; ``group_copies(max_hamming=4)``. Recall of
  the planted pairs and the number of merged pairs that were not planted.
- ``index N``: the compressed next-round index (``write_index`` layout above its flat
  size) over N clustered vectors, built with each codec (SQ8, PQ D/2); then 5,000 planted
  near-copies of stored vectors (cosine 0.955-0.995) and 5,000 fresh vectors queried with
  ``query_previous(threshold=0.95)``. Recall: planted copies found (and found as their
  source), against the exact flat index in the same run; false hits: fresh vectors
  reported though no stored vector is above the threshold.

Time covers the measured call only (inputs built before); peak RSS is sampled every 20 ms
during the call, next to the RSS before it (inputs built).

Usage: python bench/bench_dedup.py [--sizes 100000 1000000] [--cases near copies]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.dedup import compressed_index  # noqa: E402
from curation.dedup.cells import plan_cells, train_cells, training_rows  # noqa: E402
from curation.dedup.copies import group_copies  # noqa: E402
from curation.dedup.keep import CopyCandidate, NearCandidate  # noqa: E402
from curation.dedup.near import DEFAULT_NPROBE, find_near_duplicates, query_previous  # noqa: E402

DIM = 256
THRESHOLD = 0.95
PLANTED = 0.05


class PeakRss:
    """Samples this process's RSS in a thread; ``peak`` is the largest seen (bytes)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.before = self.process.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def clustered_embeddings(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors in n/1000 clusters; returns (x, planted sources, planted copies)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(10, n // 1000), DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    n_planted = int(n * PLANTED)
    base = n - n_planted
    x = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, base, 65536):
        stop = min(base, start + 65536)
        noise = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        block = centers[rng.integers(0, len(centers), stop - start)] + 0.6 / np.sqrt(DIM) * noise
        x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sources = rng.choice(base, n_planted, replace=False)
    for start in range(0, n_planted, 65536):
        src = sources[start : start + 65536]
        # |noise| = s gives cosine ~ 1 / sqrt(1 + s^2): s in [0.1, 0.31] -> 0.955-0.995.
        scale = rng.uniform(0.1, 0.31, (src.size, 1)).astype(np.float32) / np.sqrt(DIM)
        block = x[src] + scale * rng.standard_normal((src.size, DIM), dtype=np.float32)
        x[base + start : base + start + src.size] = block / np.linalg.norm(
            block, axis=1, keepdims=True
        )
    return x, sources, np.arange(base, n)


def run_near(n: int) -> dict:
    x, sources, copies = clustered_embeddings(n)
    keys = [f"{i:09d}" for i in range(n)]
    candidates = [NearCandidate(k, 1, 0.5) for k in keys]
    with PeakRss() as rss:
        start = time.perf_counter()
        removed = find_near_duplicates(keys, x, candidates, threshold=THRESHOLD)
        seconds = time.perf_counter() - start
    gone = np.zeros(n, dtype=bool)
    gone[[int(d.key) for d in removed]] = True
    planted_recall = float(np.mean(gone[sources] | gone[copies]))
    # Exact brute force for a sample of rows against all rows: is at least one image of
    # every pair above the threshold removed?
    sample = np.sort(np.random.default_rng(1).choice(n, 1000, replace=False))
    exact = 0
    hit = 0
    for start in range(0, n, 65536):
        rows, cols = np.nonzero(x[start : start + 65536] @ x[sample].T > THRESHOLD)
        rows += start
        pair = rows != sample[cols]
        exact += int(pair.sum())
        hit += int((gone[rows[pair]] | gone[sample[cols[pair]]]).sum())
    return {
        "case": "near",
        "n": n,
        "seconds": seconds,
        "peak_rss_mib": rss.peak / 2**20,
        "before_mib": rss.before / 2**20,
        "removed": len(removed),
        "planted": len(sources),
        "planted_recall": planted_recall,
        "sample_exact_pairs": exact,
        "sample_recall": hit / exact if exact else 1.0,
    }


def run_cells(n: int) -> dict:
    import faiss

    plan = plan_cells(n)
    x, _, _ = clustered_embeddings(n)
    sample = x[training_rows([f"{i:09d}" for i in range(n)], plan.sample, 0)]
    q = x[np.sort(np.random.default_rng(2).choice(n, min(n, 65536), replace=False))]
    start = time.perf_counter()
    cells = train_cells(sample, plan, 0)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    two_level = cells.assign(q, DEFAULT_NPROBE)
    two_level_seconds = time.perf_counter() - start
    flat = faiss.IndexFlatIP(DIM)
    flat.add(cells.fine)
    start = time.perf_counter()
    _, exact = flat.search(q, DEFAULT_NPROBE)
    flat_seconds = time.perf_counter() - start
    return {
        "case": "cells",
        "n": n,
        "cells": cells.count,
        "coarse": int(cells.coarse.shape[0]),
        "train_seconds": train_seconds,
        "two_level_us": two_level_seconds / q.shape[0] * 1e6,
        "flat_us": flat_seconds / q.shape[0] * 1e6,
        "home_agrees": float(np.mean(two_level[:, 0] == exact[:, 0])),
    }


def run_index(n: int) -> dict:
    import faiss

    m = 5000
    # Rows before the planted 5% are independent draws: the first n are stored, the next
    # m are fresh queries from the same clusters.
    x, _, _ = clustered_embeddings(int((n + m) / (1 - PLANTED)) + 1)
    stored, fresh = x[:n], x[n : n + m]
    rng = np.random.default_rng(3)
    sources = rng.choice(n, m, replace=False)
    scale = rng.uniform(0.1, 0.31, (m, 1)).astype(np.float32) / np.sqrt(DIM)
    copies = stored[sources] + scale * rng.standard_normal((m, DIM), dtype=np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    queries = np.vstack([copies, fresh])
    exact_index = faiss.IndexFlatIP(DIM)
    exact_index.add(stored)
    start = time.perf_counter()
    exact = query_previous(exact_index, queries, THRESHOLD)
    exact_seconds = time.perf_counter() - start
    exact_rows = {row for row, _, _ in exact}
    out: dict = {
        "case": "index",
        "n": n,
        "exact_found": sum(row < m for row in exact_rows) / m,
        "exact_query_ms_per_1k": exact_seconds / queries.shape[0] * 1e6,
        "codecs": {},
    }
    sample = stored[rng.choice(n, compressed_index.train_size(n), replace=False)]
    for codec in ("SQ8", f"PQ{DIM // 2}"):
        with PeakRss() as rss:
            start = time.perf_counter()
            index = compressed_index.train_index(sample, n, codec, seed=0)
            train_seconds = time.perf_counter() - start
            ids = np.arange(n, dtype=np.int64)
            for lo in range(0, n, 65536):
                codes = compressed_index.encode_shard(index, stored[lo : lo + 65536])
                compressed_index.add_codes(index, codes, ids[lo : lo + 65536])
            build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        found = query_previous(index, queries, THRESHOLD)
        query_seconds = time.perf_counter() - start
        rows = {row for row, _, _ in found}
        right = sum(row < m and i == sources[row] for row, i, _ in found)
        sims = {row: s for row, _, s in exact}
        errors = [s - sims[row] for row, _, s in found if row in sims]
        out["codecs"][codec] = {
            "layout": compressed_index.describe(index)["layout"],
            "bytes_per_vector": index.sa_code_size(),
            "train_seconds": train_seconds,
            "build_seconds": build_seconds,
            "build_peak_mib": rss.peak / 2**20,
            "query_ms_per_1k": query_seconds / queries.shape[0] * 1e6,
            "found": sum(row < m for row in rows) / m,
            "found_as_source": right / m,
            "false_hits": len(rows - exact_rows),
            "missed_of_exact": len(exact_rows - rows),
            "similarity_error_mean": float(np.mean(errors)) if errors else 0.0,
        }
    return out


def run_copies(n: int) -> dict:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    n_planted = int(n * PLANTED)
    sources = rng.choice(n - n_planted, n_planted, replace=False)
    flipped = hashes[sources].copy()
    flips = rng.integers(1, 5, n_planted)
    bits = rng.random((n_planted, 64)).argsort(axis=1)[:, :4].astype(np.uint64)  # distinct
    for k in range(4):
        on = flips > k
        flipped[on] ^= np.uint64(1) << bits[on, k]
    hashes[n - n_planted :] = flipped
    copies = np.arange(n - n_planted, n)
    items = [CopyCandidate(f"{i:09d}", f"sha{i}", int(h), 256, 256) for i, h in enumerate(hashes)]
    with PeakRss() as rss:
        start = time.perf_counter()
        links = group_copies(items, max_hamming=4)
        seconds = time.perf_counter() - start
    rep = [links[item.key].rep_key for item in items]
    planted_recall = float(
        np.mean([rep[s] == rep[c] for s, c in zip(sources, copies, strict=True)])
    )
    # Merged pairs beyond the planted ones: members linked to a representative they were
    # not planted from (uniform hashes are almost never within 4 bits by chance).
    planted_labels = np.arange(n)
    planted_labels[copies] = sources
    rep_index = np.array([int(r) for r in rep])
    unplanted = int(np.count_nonzero(planted_labels[rep_index] != planted_labels))
    return {
        "case": "copies",
        "n": n,
        "seconds": seconds,
        "peak_rss_mib": rss.peak / 2**20,
        "before_mib": rss.before / 2**20,
        "removed": sum(link.kind != "self" for link in links.values()),
        "planted": n_planted,
        "planted_recall": planted_recall,
        "unplanted_merges": unplanted,
    }


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"nproc={psutil.cpu_count()} cpu={model!r} python={platform.python_version()}"


CASES = {"near": run_near, "cells": run_cells, "copies": run_copies, "index": run_index}


def summary(r: dict) -> str:
    """One line of a case's figures."""
    head = f"{r['case']:<6} {r['n']:>10,}"
    if r["case"] == "near":
        return (
            f"{head} {r['seconds']:8.1f} s  peak {r['peak_rss_mib']:6.0f} MiB (before "
            f"{r['before_mib']:.0f})  removed {r['removed']:,}  planted recall "
            f"{r['planted_recall']:.4f}  sample recall {r['sample_recall']:.4f} "
            f"({r['sample_exact_pairs']} pairs)"
        )
    if r["case"] == "copies":
        return (
            f"{head} {r['seconds']:8.1f} s  peak {r['peak_rss_mib']:6.0f} MiB (before "
            f"{r['before_mib']:.0f})  removed {r['removed']:,}  planted recall "
            f"{r['planted_recall']:.4f}  unplanted merges {r['unplanted_merges']}"
        )
    if r["case"] == "cells":
        return (
            f"{head} cells {r['cells']:,} under {r['coarse']} coarse  train "
            f"{r['train_seconds']:.1f} s  assign two-level {r['two_level_us']:.1f} us/vector, "
            f"flat {r['flat_us']:.1f} us/vector  home agrees {r['home_agrees']:.4f}"
        )
    lines = [
        f"{head} exact: found {r['exact_found']:.4f}, "
        f"{r['exact_query_ms_per_1k']:.0f} ms per 1,000 queries"
    ]
    for _codec, c in r["codecs"].items():
        lines.append(
            f"{'':17} {c['layout']} ({c['bytes_per_vector']} B/vector): found {c['found']:.4f} "
            f"(as source {c['found_as_source']:.4f}), missed of exact {c['missed_of_exact']}, "
            f"false hits {c['false_hits']}, similarity error {c['similarity_error_mean']:+.4f}; "
            f"train {c['train_seconds']:.0f} s, build {c['build_seconds']:.0f} s, peak "
            f"{c['build_peak_mib']:.0f} MiB, {c['query_ms_per_1k']:.0f} ms per 1,000 queries"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cases", nargs="+", default=["near", "copies"], choices=list(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(CASES[args.one[0]](int(args.one[1]))))
        return
    import faiss

    print(machine(), f"faiss={faiss.__version__}", f"numpy={np.__version__}")
    for case in args.cases:
        for n in args.sizes:
            load = os.getloadavg()[0]
            out = subprocess.run(
                [sys.executable, __file__, "--one", case, str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{summary(r)}  [load {load:.1f} -> {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    main()
