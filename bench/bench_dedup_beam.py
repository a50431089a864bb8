"""Near-duplicate removal and the next round's index on the engine: `curation dedup`'s
finalize job over N staged images, against the single-machine function, with the memory
of the launcher, the job server and the workers apart.

For each N, a run folder is generated whose committed stage holds N images (the
clustered 256-d embeddings of ``bench_dedup.py``: N/1000 clusters, 5% planted near-copies
at cosine 0.955-0.995) and one kept web decision per image. Then, in this process (the
launcher), ``republish(run, "dedup", RepublishSettings(near_threshold=0.95))`` runs the finalize job on a
portable job server in its own process, whose SDK workers come from a worker pool process
(``--environment_type=EXTERNAL``): the three kinds of memory are separate processes, as on
Dataflow (launcher, shuffle service, workers). The job server is Beam's in-memory runner:
it holds every shuffled element, so its memory is what Dataflow's shuffle stores on disk,
and it sends each stage's whole input to a worker as one gRPC message, which must stay
under 2 GiB (the largest shuffle, an image with its probed cells, is about 3.7 KiB per
image: about 500,000 images). With ``--in-process`` the job runs as
``curation dedup RUN --workers 1`` runs it, Beam's runner inside this process (no message
limit; one memory for everything).

Reported per N: wall time of the job; peak RSS of this process during the job and before
it; peak RSS of the job server (the local stand-in for Dataflow's shuffle, which holds
every grouped element) and of the worker pool with its workers (summed); the images
removed, and their agreement with ``find_near_duplicates`` over the same keys, vectors
and ranks on one machine (run afterwards in a fresh process).

Usage: python bench/bench_dedup_beam.py [--sizes 100000 200000 400000] [--workers 2]
       python bench/bench_dedup_beam.py --in-process --sizes 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dedup import THRESHOLD, PeakRss, clustered_embeddings, machine  # noqa: E402

from curation.run_folder import STAGE_LISTING  # noqa: E402
from curation.schemas import DECISIONS_SCHEMA, IMAGES_SCHEMA, run_schemas, schema_to_text  # noqa: E402

ROWS_PER_SHARD = 50_000
GENERATION = "20260101000000bench000"
JOB_TIMEOUT = 7200  # seconds the launcher waits on the job server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _best_itm(n: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(0.5, 1.0, n).astype(np.float32)


def generate(folder: Path, n: int) -> Path:
    """A finished run folder whose stage holds ``n`` images with one kept web text each."""
    x, _, _ = clustered_embeddings(n)
    itm = _best_itm(n)
    run = folder / "run"
    stage = run / "_stage" / GENERATION
    tables: dict[str, list[str]] = {name: [] for name in run_schemas(None)}
    for name in tables:
        (stage / name).mkdir(parents=True)
    for s, start in enumerate(range(0, n, ROWS_PER_SHARD)):
        stop = min(n, start + ROWS_PER_SHARD)
        keys = pa.array([f"{i:09d}" for i in range(start, stop)])
        m = stop - start
        images = pa.table(
            {
                "key": keys,
                "sha256": keys,
                "width": pa.array(np.full(m, 640, np.int32)),
                "height": pa.array(np.full(m, 480, np.int32)),
                "kept_texts": pa.array(np.ones(m, np.int32)),
                "best_itm": pa.array(itm[start:stop]),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(x[start:stop].reshape(-1)), x.shape[1]
                ).cast(pa.list_(pa.float32())),
            }
        ).cast(IMAGES_SCHEMA)
        decisions = pa.table(
            {
                "run_id": pa.array(["bench"] * m),
                "key": keys,
                "source_file": pa.array(["bench.parquet"] * m),
                "source_row": pa.array(np.arange(start, stop, dtype=np.int64)),
                "image_key": keys,
                "text_origin": pa.array(["web"] * m),
                "caption_index": pa.nulls(m, pa.int32()),
                "text": pa.array(["a photo"] * m),
                "itm": pa.array(itm[start:stop]),
                "itc": pa.array(np.full(m, 0.3, np.float32)),
                "decision": pa.array(["kept"] * m),
                "reason": pa.array(["kept"] * m),
                "detail": pa.nulls(m, pa.string()),
                "threshold": pa.array(np.full(m, 0.5, np.float32)),
            }
        ).cast(DECISIONS_SCHEMA)
        for name, table in (("images", images), ("decisions", decisions)):
            pq.write_table(table, stage / name / f"part-{s:05d}.parquet")
            tables[name].append(f"_stage/{GENERATION}/{name}/part-{s:05d}.parquet")
    listing = {
        "generation": GENERATION,
        "run_id": "bench",
        "tables": tables,
        "rows": {name: (n if files else 0) for name, files in tables.items()},
        "clean_schema": schema_to_text(run_schemas(None)["clean"]),
        "images": {"scored": n, "cached": 0},
    }
    (run / "_stage" / STAGE_LISTING).write_text(json.dumps(listing))
    manifest = {
        "run_id": "bench",
        "generation": GENERATION,
        "config": {"threshold": 0.5, "synthetic_threshold": 0.5, "near_threshold": 0.95},
        "index": {"dimension": int(x.shape[1]), "count": 0},
        "history": [],
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


class TreeRss:
    """Samples the summed RSS of processes and their children; ``peak`` in bytes."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the processes and their live children so far."""
        total = 0.0
        for root in self.processes:
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def _sample(self) -> int:
        total = 0
        for root in self.processes:
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_server(run: Path, workers: int) -> dict:
    """The finalize job of `curation dedup` on an out-of-process job server and worker pool."""
    from curation.config import RepublishSettings
    from pipelines.publish import republish

    pool_port, job_port = _free_port(), _free_port()
    # The pool starts its workers as `python` from PATH: this interpreter's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with (
        open(run.parent / "pool.log", "w") as pool_log,
        open(run.parent / "job_server.log", "w") as server_log,
    ):
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
             f"--service_port={pool_port}"], env={**os.environ, "PATH": path},
            stdout=pool_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
             f"--port={job_port}"], stdout=server_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(5)
            beam_args = (
                "--runner=PortableRunner",
                f"--job_endpoint=localhost:{job_port}",
                f"--job_server_timeout={JOB_TIMEOUT}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{pool_port}",
                f"--sdk_worker_parallelism={workers}",
            )
            with (
                PeakRss() as launcher,
                TreeRss([server.pid]) as shuffle,
                TreeRss([pool.pid]) as pool_rss,
            ):
                start = time.perf_counter()
                manifest = republish(
                    str(run),
                    "dedup",
                    RepublishSettings(near_threshold=THRESHOLD, beam_args=beam_args),
                )
                seconds = time.perf_counter() - start
            cpu = {
                "job_server_cpu_s": shuffle.cpu_seconds(),
                "workers_cpu_s": pool_rss.cpu_seconds(),
            }
        finally:
            for proc in (server, pool):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()
    return {
        "seconds": seconds,
        "launcher_peak_mib": launcher.peak / 2**20,
        "launcher_before_mib": launcher.before / 2**20,
        "job_server_peak_mib": shuffle.peak / 2**20,
        "workers_peak_mib": pool_rss.peak / 2**20,
        **cpu,
        **_outcome(manifest),
    }


def run_in_process(run: Path) -> dict:
    """The same job as `curation dedup RUN --workers 1` runs it: Beam's runner in this process."""
    from curation.config import RepublishSettings
    from pipelines.publish import republish

    with PeakRss() as rss:
        start = time.perf_counter()
        manifest = republish(str(run), "dedup", RepublishSettings(near_threshold=THRESHOLD))
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mib": rss.peak / 2**20,
        "before_mib": rss.before / 2**20,
        **_outcome(manifest),
    }


def _outcome(manifest: dict) -> dict:
    return {
        "removed_near": manifest["duplicates"].get("near", 0),
        "index": {k: manifest["index"].get(k) for k in ("count", "layout", "nlist")},
    }


def beam_removed(run: Path) -> set[str]:
    manifest = json.loads((run / "manifest.json").read_text())
    files = [run / f for f in manifest["tables"]["duplicates"]["files"]]
    table = pa.concat_tables(pq.read_table(f, columns=["key", "kind"]) for f in files)
    return {k for k, kind in zip(*table.to_pydict().values(), strict=True) if kind == "near"}


def single_machine(n: int) -> dict:
    """``find_near_duplicates`` over the same keys, vectors and ranks (one kept text each)."""
    from curation.dedup.keep import NearCandidate
    from curation.dedup.near import find_near_duplicates

    x, _, _ = clustered_embeddings(n)
    itm = _best_itm(n)
    keys = [f"{i:09d}" for i in range(n)]
    candidates = [NearCandidate(k, 1, float(s)) for k, s in zip(keys, itm, strict=True)]
    with PeakRss() as rss:
        start = time.perf_counter()
        removed = find_near_duplicates(keys, x, candidates, threshold=THRESHOLD)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mib": rss.peak / 2**20,
        "removed": sorted(d.key for d in removed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000, 400_000])
    parser.add_argument(
        "--in-process", action="store_true", help="Run the job in one process (--workers 1)."
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-single", action="store_true", help="No single-machine check.")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, arg = args.one
        result = {
            "single": lambda: single_machine(int(arg)),
            "server": lambda: run_server(Path(arg), args.workers),
            "in-process": lambda: run_in_process(Path(arg)),
        }[case]()
        print(json.dumps(result))
        return
    case = "in-process" if args.in_process else "server"
    print(machine(), case, "" if args.in_process else f"workers={args.workers}")
    for n in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="bench-dedup-beam-"))
        started = time.perf_counter()
        run = generate(folder, n)
        print(f"{n:,} images generated in {time.perf_counter() - started:.0f} s", flush=True)
        beam = _child(case, str(run), "--workers", str(args.workers))
        if args.in_process:
            memory = f"peak {beam['peak_mib']:.0f} MiB (before {beam['before_mib']:.0f})"
        else:
            memory = (
                f"launcher peak {beam['launcher_peak_mib']:.0f} MiB (before "
                f"{beam['launcher_before_mib']:.0f}); job server peak "
                f"{beam['job_server_peak_mib']:.0f} MiB; workers peak "
                f"{beam['workers_peak_mib']:.0f} MiB; CPU s: job server "
                f"{beam['job_server_cpu_s']:.0f}, workers {beam['workers_cpu_s']:.0f}"
            )
        print(
            f"beam {n:,}: {beam['seconds']:.0f} s; {memory}; removed {beam['removed_near']:,};"
            f" index {beam['index']}",
            flush=True,
        )
        if not args.skip_single:
            single = _child("single", str(n))
            ours = beam_removed(run)
            theirs = set(single["removed"])
            print(
                f"single {n:,}: {single['seconds']:.0f} s, peak {single['peak_mib']:.0f} MiB;"
                f" removed {len(theirs):,}; same removals: {ours == theirs}"
                f" (only beam {len(ours - theirs)}, only single {len(theirs - ours)})",
                flush=True,
            )
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def _child(case: str, arg: str, *extra: str) -> dict:
    """One case in a fresh process (its memory apart); its stderr shown when it fails."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", case, arg, *extra], capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(f"{case} {arg} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
