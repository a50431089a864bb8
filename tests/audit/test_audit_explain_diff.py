"""``curation explain`` and ``curation diff`` on real runs with copies and near duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from audit_data import (
    PAYLOAD_KEY,
    PAYLOAD_TEXTS,
    AuditRuns,
    assert_refused_damaged,
    damaged_copy,
)
from click.testing import CliRunner

from app.cli import main
from curation.audit.diff import diff_runs
from curation.audit.explain import TEXT_CHARS, explain_key, format_explanation
from curation.audit.tables import RunTables


def _explain(run: Path, key: str) -> dict:
    result = CliRunner().invoke(main, ["explain", str(run), key, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _duplicates(run: Path) -> list[dict]:
    return pq.read_table(run / "duplicates").to_pylist()


def _kept_astronaut(run: Path) -> tuple[str, dict[str, str]]:
    """The astronaut image kept for its copies, and its removed copies (key -> kind)."""
    copies = {r["key"]: r for r in _duplicates(run) if r["kind"] in ("exact", "perceptual")}
    (kept,) = {r["dup_of"] for r in copies.values()}
    assert set(copies) | {kept} == {"p0", "copy_exact", "copy_resized"}
    return kept, {key: r["kind"] for key, r in copies.items()}


def test_explain_a_copy_names_what_it_copies_and_the_captions_it_was_scored_with(
    audit_runs: AuditRuns,
) -> None:
    kept, copies = _kept_astronaut(audit_runs.b)
    record = _explain(audit_runs.b, "copy_resized")
    (web,) = record["web"]
    assert web["text"] == "astronaut portrait" and web["image_key"] == kept
    assert web["itm"] is not None and web["reason"] in ("kept", "low_itm")
    assert [(r["dup_of"], r["kind"]) for r in record["copy_of"]] == [(kept, "perceptual")]
    assert record["image_key"] == kept
    assert [c["caption_index"] for c in record["captions"]] == [0, 1]  # K = 2
    assert all(c["image_key"] == kept and c["itm"] is not None for c in record["captions"])


def test_explain_the_kept_image_lists_what_was_removed_as_its_copy(audit_runs: AuditRuns) -> None:
    kept, copies = _kept_astronaut(audit_runs.b)
    record = _explain(audit_runs.b, kept)
    assert {r["key"]: r["kind"] for r in record["copies"]["rows"]} == copies
    assert record["copies"]["total"] == 2
    texts = {r["key"] for r in record["texts_on_image"]["rows"]}
    assert texts == set(copies)  # their texts were scored against the kept image
    assert len(record["captions"]) == 2 and record["copy_of"] == []


def test_explain_near_duplicates_both_ways(audit_runs: AuditRuns) -> None:
    near = [r for r in _duplicates(audit_runs.b) if r["kind"] == "near"]
    assert near
    removed, kept = near[0]["key"], near[0]["dup_of"]
    record = _explain(audit_runs.b, removed)
    (relation,) = record["copy_of"]
    assert relation["dup_of"] == kept and relation["similarity"] > audit_runs.near_threshold
    dropped = [r for r in record["web"] + record["captions"] if r["reason"] == "duplicate"]
    assert all(kept in (r["detail"] or "") for r in dropped)
    other = _explain(audit_runs.b, kept)
    assert removed in {r["key"] for r in other["copies"]["rows"]}


def test_explain_text_output_quotes_data_and_unknown_key_exits_2(audit_runs: AuditRuns) -> None:
    result = CliRunner().invoke(main, ["explain", str(audit_runs.b), PAYLOAD_KEY])
    assert result.exit_code == 0, result.output
    assert repr(PAYLOAD_KEY) in result.output and repr(PAYLOAD_TEXTS[0]) in result.output
    missing = CliRunner().invoke(main, ["explain", str(audit_runs.b), "no-such-key"])
    assert missing.exit_code == 2 and "no-such-key" in missing.output


def test_explain_text_output_cuts_huge_values(audit_runs: AuditRuns) -> None:
    record = _explain(audit_runs.b, PAYLOAD_KEY)
    huge_text, huge_key = "a red circle " * 400_000, "k" * 50_000
    record["key"] = huge_key
    record["web"][0] |= {"text": huge_text, "detail": "\x1b]0;title\x07" * 1000}
    record["texts_on_image"] = {"total": 3, "rows": [record["web"][0] | {"key": huge_key}] * 3}
    out = format_explanation(record)
    assert len(out) < 20_000 and "\x1b" not in out
    assert f"{len(huge_text) - TEXT_CHARS} more characters" in out
    assert repr(huge_text[:TEXT_CHARS]) in out


def test_explain_a_row_rejected_before_the_models(audit_runs: AuditRuns) -> None:
    record = explain_key(RunTables(str(audit_runs.b)), "bad3")
    (web,) = record["web"]
    assert web["reason"] == "undecodable" and web["itm"] is None and web["image_key"] is None
    assert record["captions"] == [] and record["copy_of"] == []


def _decisions(run: Path) -> dict[tuple, dict]:
    rows = pq.read_table(run / "decisions").to_pylist()
    out = {}
    for r in rows:
        ident = (r["key"],) if r["text_origin"] == "web" else (r["image_key"], r["caption_index"])
        out[(r["text_origin"], *ident)] = r
    return out


def test_diff_counts_and_changed_decisions_match_the_tables(audit_runs: AuditRuns) -> None:
    result = CliRunner().invoke(
        main, ["diff", str(audit_runs.a), str(audit_runs.b), "--json", "--limit", "1000"]
    )
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    a, b = _decisions(audit_runs.a), _decisions(audit_runs.b)
    for origin in ("web", "synthetic"):
        for reason, (na, nb) in diff["counts"][origin].items():
            assert na == sum(1 for k, r in a.items() if k[0] == origin and r["reason"] == reason)
            assert nb == sum(1 for k, r in b.items() if k[0] == origin and r["reason"] == reason)
        expected_down = sorted(
            k[1:] for k in a if k[0] == origin and k in b
            and a[k]["decision"] == "kept" and b[k]["decision"] == "dropped"
        )  # fmt: skip
        expected_up = sorted(
            k[1:] for k in a if k[0] == origin and k in b
            and a[k]["decision"] == "dropped" and b[k]["decision"] == "kept"
        )  # fmt: skip
        change = diff["changes"][origin]
        ident = ["key"] if origin == "web" else ["image_key", "caption_index"]
        listed = {
            name: [tuple(r[c] for c in ident) for r in change["listing"][name]]
            for name in ("kept_to_dropped", "dropped_to_kept")
        }
        assert listed["kept_to_dropped"] == expected_down and change["kept_to_dropped"] == len(
            expected_down
        )
        assert listed["dropped_to_kept"] == expected_up
        assert change["only_in_a"] == change["only_in_b"] == 0
    # run B's threshold is run A's median score: about half of A's kept texts now drop
    assert diff["changes"]["synthetic"]["kept_to_dropped"] > 0
    moves = {(m["from"], m["to"]) for m in diff["changes"]["synthetic"]["reasons"]}
    assert ("kept", "low_itm") in moves


def _idents(listing: list[dict]) -> list[tuple]:
    return [tuple(r.get(c) for c in ("key", "image_key", "caption_index")) for r in listing]


def test_diff_backwards_lists_the_changes_the_other_way(audit_runs: AuditRuns) -> None:
    forward = diff_runs(RunTables(str(audit_runs.a)), RunTables(str(audit_runs.b)), limit=1000)
    backward = diff_runs(RunTables(str(audit_runs.b)), RunTables(str(audit_runs.a)), limit=1000)
    for origin in ("web", "synthetic"):
        ahead, back = forward["changes"][origin], backward["changes"][origin]
        assert back["dropped_to_kept"] == ahead["kept_to_dropped"]
        assert _idents(back["listing"]["dropped_to_kept"]) == _idents(
            ahead["listing"]["kept_to_dropped"]
        )
    assert backward["changes"]["synthetic"]["dropped_to_kept"] > 0


def test_explain_gives_the_stored_itm_and_itc_of_every_text(audit_runs: AuditRuns) -> None:
    decisions = _decisions(audit_runs.a)
    record = _explain(audit_runs.a, "p1")
    (web,) = record["web"]
    stored = decisions[("web", "p1")]
    assert (web["itm"], web["itc"]) == (stored["itm"], stored["itc"]) and web["itc"] is not None
    assert record["captions"]
    for caption in record["captions"]:
        row = decisions[("synthetic", caption["image_key"], caption["caption_index"])]
        assert (caption["itm"], caption["itc"]) == (row["itm"], row["itc"])


def test_audit_commands_load_no_model(audit_runs: AuditRuns, tmp_path: Path) -> None:
    """explain, diff and report read tables only: neither torch nor transformers is imported."""
    import subprocess
    import sys

    a, b = str(audit_runs.a), str(audit_runs.b)
    code = (
        "import sys\nfrom app.cli import main\n"
        f"for args in ({['explain', a, 'p1']!r}, {['diff', a, b]!r}, {['report', b]!r}):\n"
        "    main(args, standalone_mode=False)\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout


def test_diff_listing_is_bounded_and_a_run_equals_itself(audit_runs: AuditRuns) -> None:
    run_a, run_b = RunTables(str(audit_runs.a)), RunTables(str(audit_runs.b))
    full = diff_runs(run_a, run_b, limit=1000)["changes"]["synthetic"]
    short = diff_runs(run_a, run_b, limit=2)["changes"]["synthetic"]
    assert full["kept_to_dropped"] > 2 and short["kept_to_dropped"] == full["kept_to_dropped"]
    assert short["listing"]["kept_to_dropped"] == full["listing"]["kept_to_dropped"][:2]
    same = diff_runs(run_b, run_b)
    for change in same["changes"].values():
        assert [
            change[n] for n in ("kept_to_dropped", "dropped_to_kept", "only_in_a", "only_in_b")
        ] == [0, 0, 0, 0]
        assert change["reasons"] == []
    text = CliRunner().invoke(main, ["diff", str(audit_runs.a), str(audit_runs.b), "--limit", "3"])
    assert text.exit_code == 0 and "kept -> low_itm" in text.output
    assert "first 3 of" in text.output
    bad = CliRunner().invoke(main, ["diff", str(audit_runs.a), str(audit_runs.b), "--limit", "-1"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("command", ["explain", "diff"])
def test_not_a_run_folder_exits_2(command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [command, str(tmp_path), "x"])
    assert result.exit_code == 2 and "not a finished run folder" in result.output


@pytest.mark.parametrize("damage", ["missing", "truncated", "pages"])
@pytest.mark.parametrize("command", ["explain", "diff"])
def test_an_incomplete_or_damaged_run_folder_exits_2_with_one_line(
    command: str, damage: str, audit_runs: AuditRuns, tmp_path: Path
) -> None:
    run, name = damaged_copy(audit_runs.b, tmp_path, "decisions", damage)
    args = [str(run), "p1"] if command == "explain" else [str(audit_runs.a), str(run)]
    result = CliRunner().invoke(main, [command, *args])
    assert_refused_damaged(result, run, name, "decisions", damage)
