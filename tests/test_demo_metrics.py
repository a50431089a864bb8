"""Demo metrics on hand-made decision tables and ground truth."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.demo import check_demo_folder
from app.demo_metrics import caption_metrics, rejection_metrics, run_metrics, write_metrics
from curation.schemas import DECISIONS_SCHEMA
from curation.storage import Location

RED_LEFT = '[{"shape":"circle","colour":"red","size":"large","position":"left"}]'
BLUE_RIGHT = '[{"shape":"square","colour":"blue","size":"small","position":"right"}]'


def test_rejection_precision_recall_and_per_type_shares() -> None:
    types = ["correct", "correct", "spam", "wrong_attribute", "other_image", "wrong_attribute"]
    rejected = [False, True, True, False, True, True]
    m = rejection_metrics(types, rejected)
    assert m["texts"] == 6 and m["noisy_texts"] == 4
    assert m["precision"] == pytest.approx(3 / 4)  # one correct text rejected
    assert m["recall"] == pytest.approx(3 / 4)  # one wrong_attribute kept
    assert m["per_noise_type"]["wrong_attribute"] == {
        "texts": 2,
        "rejected": 1,
        "rejected_share": 0.5,
    }
    assert m["per_noise_type"]["correct"]["rejected_share"] == 0.5
    assert "filename" not in m["per_noise_type"]


def test_true_types_count_as_texts_to_keep_and_binding_types_are_summarised() -> None:
    types = ["correct", "rewritten", "rewritten", "partial", "partial"]
    types += ["exchanged_attribute", "exchanged_position", "exchanged_position", "spam"]
    rejected = [False, False, True, True, False, True, True, False, True]
    m = rejection_metrics(types, rejected)
    assert m["noisy_texts"] == 4
    # Two true texts rejected (one rewritten, one partial) count against precision.
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["correct_kept_share"] == pytest.approx(2 / 3)
    assert m["partial_kept_share"] == pytest.approx(1 / 2)
    assert m["binding_recall"] == pytest.approx(2 / 3)
    assert m["per_noise_type"]["exchanged_position"]["rejected"] == 1
    empty = rejection_metrics(["spam"], [True])
    assert empty["partial_kept_share"] is None and empty["binding_recall"] is None


def test_rejection_metrics_are_none_when_undefined() -> None:
    m = rejection_metrics(["correct", "correct"], [False, False])
    assert m["precision"] is None and m["recall"] is None
    with pytest.raises(ValueError):
        rejection_metrics(["correct"], [])


def test_caption_metrics_parse_captions_against_the_scene() -> None:
    captions = [
        "a large red circle on the left",  # correct, kept
        "a big red circle to the left",  # correct paraphrase, kept
        "a small red circle on the left",  # wrong size, kept
        "a large red circle on the",  # unparseable, dropped
    ]
    m = caption_metrics(captions, [RED_LEFT] * 4, [True, True, True, False])
    assert m["kept"] == 3
    assert m["kept_correct_share"] == pytest.approx(2 / 3)
    assert m["correct_share"] == pytest.approx(2 / 4)
    assert m["noise_ratio"] == pytest.approx(1 / 4)


def _decision(
    key: str, origin: str, text: str | None, itm: float | None, reason: str, **extra
) -> dict:
    row = {
        "run_id": "r1",
        "key": key,
        "source_file": "in.parquet",
        "source_row": 0,
        "image_key": key,
        "text_origin": origin,
        "caption_index": 0 if origin == "synthetic" else None,
        "text": text,
        "itm": itm,
        "itc": None if itm is None else 0.1,
        "decision": "kept" if reason == "kept" else "dropped",
        "reason": reason,
        "detail": None,
        "threshold": 0.5,
    }
    row.update(extra)
    return row


def test_run_metrics_join_decisions_with_ground_truth_by_key(tmp_path) -> None:
    truth = pa.table(
        {
            "key": ["a", "b", "c", "d", "e"],
            "noise_type": ["correct", "spam", "empty_or_truncated", "correct", "wrong_attribute"],
            "scene": [RED_LEFT, BLUE_RIGHT, RED_LEFT, BLUE_RIGHT, RED_LEFT],
        }
    )
    pq.write_table(truth, tmp_path / "input.parquet")
    rows = [
        _decision("a", "web", "a large red circle on the left", 0.9, "kept"),
        _decision("b", "web", "click here to buy", 0.1, "low_itm"),
        _decision("c", "web", "", None, "empty_text"),
        _decision("d", "web", None, None, "undecodable"),  # no score: says nothing of the filter
        # a duplicate keeps its score: judged by the score, not by the dedup reason
        _decision("e", "web", "a small red circle on the left", 0.7, "duplicate"),
        _decision("a", "synthetic", "a big red circle to the left", 0.8, "kept"),
        _decision("b", "synthetic", "a small blue square on the left", 0.6, "kept"),
        _decision("e", "synthetic", "a red circle", 0.2, "low_itm"),
        _decision("zz", "web", "unknown key", 0.9, "kept"),  # not in the ground truth
    ]
    folder = tmp_path / "run" / "decisions"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows[:4], schema=DECISIONS_SCHEMA), folder / "part-0.parquet"
    )
    pq.write_table(
        pa.Table.from_pylist(rows[4:], schema=DECISIONS_SCHEMA), folder / "part-1.parquet"
    )
    # a file a killed command left behind: not in the committed state, not counted
    pq.write_table(
        pa.Table.from_pylist(rows[:1], schema=DECISIONS_SCHEMA), folder / "part-stale.parquet"
    )
    files = ["decisions/part-0.parquet", "decisions/part-1.parquet"]
    (tmp_path / "run" / "manifest.json").write_text(
        json.dumps({"tables": {"decisions": {"files": files}}})
    )

    m = run_metrics(str(tmp_path / "run"), str(tmp_path / "input.parquet"))
    f = m["filter"]
    assert f["texts"] == 4  # a, b, c, e
    assert f["precision"] == pytest.approx(1.0)
    assert f["recall"] == pytest.approx(2 / 3)  # e (wrong_attribute) scored above threshold
    assert f["per_noise_type"]["empty_or_truncated"]["rejected"] == 1
    c = m["captioner"]
    assert c["captions"] == 3 and c["kept"] == 2
    assert c["kept_correct_share"] == pytest.approx(1 / 2)
    assert c["noise_ratio"] == pytest.approx(1 / 3)

    write_metrics(m, Location(str(tmp_path / "metrics.json")))
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(m))


def test_demo_command_curates_a_small_generated_split_with_the_bundled_models(tmp_path) -> None:
    from click.testing import CliRunner

    from app.demo import demo_command

    # 200 texts: enough that one or two borderline texts do not decide the bounds below
    out, rows = tmp_path / "demo", 200
    result = CliRunner().invoke(
        demo_command, ["--out", str(out), "--rows", str(rows)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "filter: precision" in result.output
    assert "wrong binding rejected" in result.output and "partial" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["filter"]["texts"] == rows  # every web text judged (scored or empty)
    assert m["filter"]["precision"] >= 0.9 and m["filter"]["recall"] >= 0.8
    assert m["filter"]["binding_recall"] >= 0.6 and m["filter"]["correct_kept_share"] >= 0.85
    assert m["captioner"]["captions"] == rows and m["captioner"]["kept_correct_share"] >= 0.8
    assert m["throughput"]["images"] == rows and m["throughput"]["images_per_second"] > 0
    check_demo_folder(Location(str(out)))  # a finished demo's folder may be run into again


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ("mine.txt", "holds files a demo does not write (mine.txt)"),
        ("input/data.parquet", "holds files a demo does not write (input/data.parquet)"),
        ("run/clean/old.parquet", "run holds other files (clean) and is not a run folder"),
    ],
)
def test_demo_refuses_a_folder_of_other_files_before_work(tmp_path, entry: str, shown: str) -> None:
    from click.testing import CliRunner

    from app.cli import main

    users = tmp_path / "out" / entry
    users.parent.mkdir(parents=True)
    users.write_bytes(b"a user's file")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), "--rows", "10"])
    assert result.exit_code == 2 and shown in result.stderr, result.output
    assert users.read_bytes() == b"a user's file"
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == [users]  # nothing written
