"""Reading a file row group by row group, as the pipeline does, when each row is its own row
group (writers that call ``write_table`` once per downloaded image produce such files).

Each row group is one unit of the pipeline's reading stage, which opens the file for it.
Parsing the footer at every open costs time quadratic in the rows, because the footer lists
every row group; :class:`~curation.reader.Footers` keeps recent footers, so each is parsed
once. Both ways run here on the same files, in the same process:

- **footers kept**: ``Footers().open(item)`` per row group (the pipeline's reading stage);
- **footer per open**: ``ParquetInput(item)`` per row group.

Usage: python bench/bench_row_groups.py [--rows 2000 4000 8000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.inputs import resolve_inputs
from curation.layout import check_inputs
from curation.reader import Footers, ImageFiles, ParquetInput


def read_all(path: Path, keep_footers: bool) -> tuple[int, float]:
    """Rows read and seconds taken, opening the file once per row group."""
    [item] = resolve_inputs(str(path))
    layout = check_inputs([item])
    footers = Footers()
    start = time.perf_counter()
    rows = 0
    groups = pq.ParquetFile(path).metadata.num_row_groups
    for index in range(groups):
        source = footers.open(item) if keep_footers else ParquetInput(item)
        with source:
            rows += sum(map(len, source.pair_batches(layout, index, ImageFiles())))
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 4000, 8000])
    args = parser.parse_args()
    print("| rows (row groups) | footers kept s | footer per open s | ratio |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.rows:
            path = Path(folder) / f"rows-{n}.parquet"
            table = pa.table({"image": pa.array([None] * n, pa.binary()), "text": ["t"] * n})
            pq.write_table(table, path, row_group_size=1)
            kept_rows, kept = read_all(path, keep_footers=True)
            open_rows, per_open = read_all(path, keep_footers=False)
            assert kept_rows == open_rows == n
            print(f"| {n:,} | {kept:.2f} | {per_open:.2f} | {per_open / kept:.1f}x |")


if __name__ == "__main__":
    main()
