"""Time to read every input footer before a run, on an S3 server: one file after another
(the baseline) against :func:`curation.footers.read_footers`.

A run (and ``inspect``) reads every input file's footer before any work: its schema for
the layout check and its row groups for the plan. The baseline reads them as the planning
did before: two reads per file (schema, then row groups), one file after another. The
current code reads each footer once, :data:`~curation.footers.FOOTER_THREADS` at a time.
The S3 server is moto's on loopback: a cloud store's round trips are longer (tens of
milliseconds), which the baseline pays per read and the threads overlap.

Usage: python bench/bench_footers.py [--files 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    try:
        from curation.footers import FOOTER_THREADS, read_footer, read_footers
        from curation.inputs import resolve_inputs

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        table = pa.table({"image": [b"x" * 100] * 10, "text": ["t"] * 10})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=5)
        body = sink.getvalue().to_pybytes()
        for i in range(args.files):
            s3.put_object(Bucket="bench", Key=f"data/{i:05d}.parquet", Body=body)
        files = resolve_inputs("s3://bench/data")
        assert len(files) == args.files
        baseline, current = [], []
        for _ in range(args.repeats):  # alternating
            start = time.perf_counter()
            for item in files:
                read_footer(item.location)  # the schema
                read_footer(item.location)  # the row groups
            baseline.append(time.perf_counter() - start)
            start = time.perf_counter()
            footers = read_footers(files)
            current.append(time.perf_counter() - start)
            assert sum(sum(f.row_counts) for f in footers.values()) == 10 * args.files
        print(
            f"{args.files} files on moto's S3 server, {FOOTER_THREADS} threads, best of {args.repeats}"
        )
        print(f"one after another, two reads a file: {min(baseline):.2f} s")
        print(f"read_footers, one read a file:       {min(current):.2f} s")
        print(f"speedup: {min(baseline) / min(current):.1f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
