"""Run outputs written without Beam: manifest.json, Parquet shards, decision rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curation.decide import rejection_row
from curation.finalize import FinalizeResult, TableFiles
from curation.manifest import build_manifest, rebuild_manifest
from curation.reasons import Reason
from curation.records import Pair
from curation.schemas import DECISIONS_SCHEMA
from curation.screen import Rejection
from curation.shards import write_shard
from curation.storage import Location


def _result() -> FinalizeResult:
    return FinalizeResult(
        tables={"decisions": TableFiles(["decisions/part-g-00000.parquet"], 4)},
        reasons={"kept": 3, "low_itm": 1},
        texts={"web": {"kept": 2, "dropped": 1}, "synthetic": {"kept": 1, "dropped": 0}},
        index={"count": 3, "added": 3, "dimension": 8},
    )


def test_manifest_records_counts_versions_history_and_facts() -> None:
    manifest = build_manifest(
        run_id="r1",
        generation="g1",
        command="run",
        config={"threshold": 0.5},
        result=_result(),
        timings={"total": 1.5},
        history=[],
        changes={"threshold": 0.5},
        extra={"rows": 4},
    )
    assert list(manifest["counts"]) == [r.value for r in Reason]
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["too_large"] == 0
    assert manifest["tables"]["decisions"] == {
        "files": ["decisions/part-g-00000.parquet"],
        "rows": 4,
    }
    assert manifest["packages"]["pyarrow"] == pa.__version__
    assert manifest["texts"]["web"] == {"kept": 2, "dropped": 1}
    assert manifest["history"][0]["command"] == "run" and manifest["history"][0]["threshold"] == 0.5
    assert manifest["created_at"].endswith("+00:00") and manifest["rows"] == 4


def test_rebuilt_manifest_keeps_run_facts_and_extends_history() -> None:
    first = build_manifest(
        run_id="r1", generation="g1", command="run", config={"threshold": 0.5, "near_threshold": 0.9},
        result=_result(), timings={"total": 1.5}, history=[], extra={"rows": 4, "models": {"f": 1}},
    )  # fmt: skip
    second = rebuild_manifest(
        first, command="dedup", generation="g2", changes={"near_threshold": 0.8},
        result=_result(), timings={"dedup": 0.2},
    )  # fmt: skip
    assert second["rows"] == 4 and second["models"] == {"f": 1} and second["run_id"] == "r1"
    assert second["config"] == {"threshold": 0.5, "near_threshold": 0.8}
    assert [h["command"] for h in second["history"]] == ["run", "dedup"]
    assert second["timings"] == {"total": 1.5, "dedup": 0.2}


def test_manifest_extra_cannot_overwrite_fixed_keys() -> None:
    with pytest.raises(ValueError, match="counts"):
        build_manifest(
            run_id="r", generation="g", command="run", config={}, result=_result(),
            timings={}, history=[], extra={"counts": {}},
        )  # fmt: skip


def test_manifest_reads_versions_without_importing_torch() -> None:
    code = (
        "import sys; from curation.manifest import package_versions; "
        "v = package_versions(); "
        "assert 'torch' not in sys.modules and 'apache_beam' not in sys.modules; print(v['torch'])"
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
    row = rejection_row(Rejection(_pair(), Reason.DOWNLOAD_FAILED, "timeout"), "run-1", 0.5)
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


def test_shard_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    rows = [
        rejection_row(Rejection(_pair(), Reason.UNDECODABLE, f"row {i}"), "run-1", None)
        for i in range(7)
    ]
    shard = write_shard(Location(str(tmp_path)), rows, DECISIONS_SCHEMA)
    assert shard.rows == 7 and Path(shard.url).parent == tmp_path
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_shard(
            Location(str(tmp_path)),
            [{"run_id": "r", "key": "k", "source_row": "x"}],
            DECISIONS_SCHEMA,
        )
    assert [p.name for p in tmp_path.iterdir()] == [Path(shard.url).name]
