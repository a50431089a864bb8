"""Run outputs written without Beam: manifest.json, Parquet shards, rejection rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images import gradient, jpeg_bytes, write_img2dataset_parquet

from curation.manifest import read_manifest, write_manifest
from curation.reasons import Reason
from curation.records import Pair
from curation.rejections import rejection_row
from curation.schemas import DECISIONS_SCHEMA
from curation.shards import ParquetShardWriter


def test_manifest_records_inputs_counts_versions_and_timings(tmp_path: Path) -> None:
    data = write_img2dataset_parquet(
        tmp_path / "in" / "00000.parquet", [jpeg_bytes(gradient(32, 32))], ["t"]
    )
    written = write_manifest(
        tmp_path / "run",
        config={"threshold": 0.5, "seed": 0},
        inputs=[str(data)],
        counts={"kept": 3, "low_itm": 1, "rows": 4},
        timings={"decode": 1.5},
        models={"filter": {"name": "Salesforce/blip-itm-base-coco", "revision": "abc"}},
        extra={"run_id": "r1"},
    )
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk == written == read_manifest(tmp_path / "run")
    assert list(on_disk["counts"])[: len(Reason)] == [r.value for r in Reason]
    assert on_disk["counts"]["kept"] == 3 and on_disk["counts"]["too_large"] == 0
    assert on_disk["counts"]["rows"] == 4
    assert on_disk["inputs"] == [{"path": str(data), "bytes": os.path.getsize(data)}]
    assert on_disk["packages"]["pyarrow"] == pa.__version__
    assert set(on_disk["packages"]) >= {
        "torch",
        "transformers",
        "apache-beam",
        "faiss-cpu",
        "pillow",
        "numpy",
        "capfilt-curation",
    }
    assert on_disk["models"]["filter"]["revision"] == "abc"
    assert on_disk["config"] == {"threshold": 0.5, "seed": 0}
    assert on_disk["timings"] == {"decode": 1.5}
    assert on_disk["run_id"] == "r1"
    assert on_disk["created_at"].endswith("+00:00")
    assert on_disk["python"].count(".") == 2
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_manifest_path_may_name_the_file(tmp_path: Path) -> None:
    target = tmp_path / "custom.json"
    write_manifest(target, config={}, inputs=[], counts={}, timings={})
    assert read_manifest(target)["counts"] == dict.fromkeys(Reason, 0)


def test_manifest_extra_cannot_overwrite_fixed_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="counts"):
        write_manifest(tmp_path, config={}, inputs=[], counts={}, timings={}, extra={"counts": {}})


def test_manifest_reads_versions_without_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from curation.manifest import write_manifest; "
        f"m = write_manifest({str(tmp_path)!r}, config={{}}, inputs=[], counts={{}}, timings={{}}); "
        "assert 'torch' not in sys.modules and 'apache_beam' not in sys.modules; "
        "print(m['packages']['torch'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("2.")


def _pair() -> Pair:
    return Pair(
        key="k1",
        source_file="in/00000.parquet",
        source_row=7,
        image=None,
        text="a photo",
        status="failed_to_download",
        error="timeout",
    )


def test_rejection_row_fits_the_decisions_schema() -> None:
    row = rejection_row(_pair(), Reason.DOWNLOAD_FAILED, "timeout", "run-1", 0.5)
    assert list(row) == DECISIONS_SCHEMA.names
    assert row["decision"] == "dropped" and row["reason"] == "download_failed"
    assert row["text_origin"] == "web" and row["itm"] is None and row["itc"] is None
    assert (row["key"], row["source_row"], row["detail"], row["text"]) == (
        "k1",
        7,
        "timeout",
        "a photo",
    )
    table = pa.Table.from_pylist([row], schema=DECISIONS_SCHEMA)
    for field in DECISIONS_SCHEMA:
        if not field.nullable:
            assert table.column(field.name).null_count == 0, field.name


def test_shard_writer_splits_rows_into_numbered_shards(tmp_path: Path) -> None:
    rows = [rejection_row(_pair(), Reason.UNDECODABLE, f"row {i}", "run-1", None) for i in range(7)]
    with ParquetShardWriter(
        str(tmp_path / "decisions"), DECISIONS_SCHEMA, rows_per_shard=3
    ) as writer:
        writer.write(rows[:2])
        assert writer.paths == []
        writer.write(rows[2:])
        assert len(writer.paths) == 2  # full shards appear as soon as they are full
    names = sorted(p.name for p in (tmp_path / "decisions").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    tables = [pq.read_table(tmp_path / "decisions" / n) for n in names]
    assert [t.num_rows for t in tables] == [3, 3, 1]
    assert all(t.schema.equals(DECISIONS_SCHEMA) for t in tables)
    details = [d for t in tables for d in t.column("detail").to_pylist()]
    assert details == [f"row {i}" for i in range(7)]


def test_shard_writer_prefix_start_and_empty_close(tmp_path: Path) -> None:
    writer = ParquetShardWriter(str(tmp_path), DECISIONS_SCHEMA, 10, prefix="w3", start=5)
    assert writer.close() == []
    writer = ParquetShardWriter(str(tmp_path), DECISIONS_SCHEMA, 10, prefix="w3", start=5)
    writer.write([rejection_row(_pair(), Reason.TOO_SMALL, None, "r", None)])
    assert writer.close() == [str(tmp_path / "w3-00005.parquet")]
    assert sorted(os.listdir(tmp_path)) == ["w3-00005.parquet"]


def test_shard_writer_leaves_no_partial_shard_on_error(tmp_path: Path) -> None:
    writer = ParquetShardWriter(str(tmp_path), DECISIONS_SCHEMA, 1)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        writer.write([{"run_id": "r", "key": "k", "source_row": "not a number"}])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".parquet")] == []
