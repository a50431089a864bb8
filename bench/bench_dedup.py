"""Dedup at scale: near-duplicates on embeddings and copy grouping on perceptual hashes.

Cases, each in a fresh subprocess (so peak memory is the case's own):

- ``near N``: N clustered 256-d unit embeddings (N/1000 clusters, same-cluster cosine
  about 0.74) of which 5% are planted near-copies (cosine 0.955-0.995) of other rows;
  ``find_near_duplicates(threshold=0.95)``. Recall of the planted pairs (not both images
  kept), and recall of every pair above the threshold for 1,000 sampled rows against exact
  brute force over all N (not both kept).
- ``copies N``: N random 64-bit perceptual hashes, 5% planted near-copies (1-4 bits
  flipped), every image with its own sha256; ``group_copies(max_hamming=4)``. Recall of
  the planted pairs and the number of merged pairs that were not planted.

Time covers the dedup call only (inputs built before); peak RSS is sampled every 20 ms
during the call, next to the RSS before it (inputs built: for ``near`` the embeddings,
keys and candidates; for ``copies`` the candidates).

Usage: python bench/bench_dedup.py [--sizes 100000 1000000] [--cases near copies]
"""

from __future__ import annotations

import argparse
import json
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

from curation.dedup.copies import group_copies  # noqa: E402
from curation.dedup.keep import CopyCandidate, NearCandidate  # noqa: E402
from curation.dedup.near import find_near_duplicates  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cases", nargs="+", default=["near", "copies"])
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, n = args.one[0], int(args.one[1])
        print(json.dumps(run_near(n) if case == "near" else run_copies(n)))
        return
    import faiss

    print(machine(), f"faiss={faiss.__version__}", f"numpy={np.__version__}")
    print(
        f"{'case':<7} {'N':>9} {'seconds':>8} {'peak MiB':>9} {'RSS before':>10} "
        f"{'removed':>8} {'planted recall':>14} {'sample recall':>13}"
    )
    for case in args.cases:
        for n in args.sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--one", case, str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            extra = (
                f"{r['sample_recall']:.4f} ({r['sample_exact_pairs']})"
                if case == "near"
                else f"unplanted merges {r['unplanted_merges']}"
            )
            print(
                f"{case:<7} {n:>9,} {r['seconds']:>8.1f} {r['peak_rss_mib']:>9.0f} "
                f"{r['before_mib']:>10.0f} {r['removed']:>8,} {r['planted_recall']:>14.4f} {extra}",
                flush=True,
            )


if __name__ == "__main__":
    main()
