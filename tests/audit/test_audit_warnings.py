"""Warnings of a run, computed from its tables: each rule fires on its case and only there."""

from __future__ import annotations

from pathlib import Path

from audit_data import decision, write_run

from curation.audit.warnings import run_warnings


def _codes(folder: Path) -> list[str]:
    return [w.code for w in run_warnings(str(folder))]


def _healthy(n: int = 100, sources: int = 4) -> list[dict]:
    """Web rows with 60% kept, spread evenly over the sources; one caption per image."""
    rows = []
    for i in range(n):
        reason, itm = ("kept", 0.8) if i % 5 < 3 else ("low_itm", 0.2)
        source = f"part-{i % sources}.parquet"
        rows.append(decision(f"k{i}", reason, itm=itm, source=source, row=i))
        rows.append(
            decision(f"k{i}", reason, origin="synthetic", itm=itm, source=source, row=i,
                     caption_index=0)
        )  # fmt: skip
    return rows


def test_a_healthy_run_has_no_warning(tmp_path: Path) -> None:
    assert _codes(write_run(tmp_path, _healthy())) == []


def test_most_images_removed_as_near_duplicates(tmp_path: Path) -> None:
    rows = _healthy(40)
    dups = [
        {"key": f"k{i}", "dup_of": "k0", "kind": "near", "similarity": 0.99} for i in range(1, 31)
    ]
    warnings = run_warnings(str(write_run(tmp_path, rows, dups)))
    assert [w.code for w in warnings] == ["near_duplicates"]
    assert "75% of scored images (30 of 40)" in warnings[0].message


def test_most_captions_below_the_threshold(tmp_path: Path) -> None:
    rows = [r for r in _healthy(50) if r["text_origin"] == "web"]
    rows += [
        decision(f"k{i}", "low_itm" if i < 45 else "kept", origin="synthetic",
                 itm=0.1 if i < 45 else 0.9, caption_index=0)
        for i in range(50)
    ]  # fmt: skip
    warnings = run_warnings(str(write_run(tmp_path, rows)))
    assert [w.code for w in warnings] == ["low_itm_synthetic"]
    assert "90% of scored synthetic captions (45 of 50)" in warnings[0].message
    assert "threshold 0.5" in warnings[0].message


def test_a_pre_model_reason_taking_a_large_share(tmp_path: Path) -> None:
    rows = _healthy(60, sources=1)
    rows += [decision(f"bad{i}", "download_failed", source="part-0.parquet") for i in range(40)]
    assert _codes(write_run(tmp_path, rows)) == ["reason_download_failed"]


def test_a_source_dropping_far_more_than_the_others(tmp_path: Path) -> None:
    rows = _healthy(120, sources=4)
    rows += [
        decision(f"x{i}", "low_itm" if i < 27 else "kept", itm=0.2 if i < 27 else 0.9,
                 source="bad-shard.parquet", row=i)
        for i in range(30)
    ]  # fmt: skip
    warnings = run_warnings(str(write_run(tmp_path, rows)))
    assert [w.code for w in warnings] == ["source_drop_rate"]
    assert warnings[0].message.startswith("bad-shard.parquet drops 90% of its 30 rows")


def test_a_source_a_little_worse_than_the_others_is_not_flagged(tmp_path: Path) -> None:
    rows = _healthy(120, sources=4)
    rows += [
        decision(f"x{i}", "low_itm" if i < 18 else "kept", itm=0.2 if i < 18 else 0.9,
                 source="shard.parquet", row=i)
        for i in range(30)
    ]  # 60% dropped against 40%: within chance for 30 rows  # fmt: skip
    assert _codes(write_run(tmp_path, rows)) == []


def test_tiny_runs_do_not_warn(tmp_path: Path) -> None:
    rows = [decision(f"k{i}", "undecodable") for i in range(5)]
    rows += [decision("s", "low_itm", origin="synthetic", itm=0.1, caption_index=0)]
    assert _codes(write_run(tmp_path, rows)) == []
