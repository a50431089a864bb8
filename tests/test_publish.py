"""Atomic publish: a command killed at any point leaves the previous complete state or the new
one; the next command repairs the rest. The run lock; checks of --out before work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import gradient, jpeg_bytes, photo, write_pairs_parquet
from runs import corrupt_pages, gradient_rows, index_files, kill_when

from app.cli import main
from curation.config import RepublishSettings, RunConfig, build_config
from curation.errors import ConfigError
from curation.reasons import Reason
from curation.run_folder import FINAL_TABLES, RunFolder
from curation.storage import Location
from pipelines.publish import republish
from pipelines.runner import run_pipeline


class Killed(BaseException):
    """Stands for the process being killed at this point."""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_captioner_dir, tiny_filter_dir) -> Path:
    folder = tmp_path_factory.mktemp("publish")
    rows = [
        {"key": f"k{i}", "image": jpeg_bytes(gradient(64, 48, seed=i)), "text": f"text {i}"}
        for i in range(6)
    ]
    rows.append({"key": "copy", "image": rows[0]["image"], "text": "a copy"})
    write_pairs_parquet(folder / "in.parquet", rows)
    out = folder / "run"
    run_pipeline(
        build_config(
            input=(str(folder / "in.parquet"),), out=str(out), captioner=str(tiny_captioner_dir),
            filter=str(tiny_filter_dir), captions_per_image=2, batch_size=2, threshold=0.3,
            progress=False,
        )
    )  # fmt: skip
    return out


def _committed_state_is_whole(run_dir: Path) -> dict:
    """Everything the manifest lists exists and agrees with it; returns the manifest."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    run = RunFolder.at(str(run_dir))
    for name in FINAL_TABLES:
        tables = [pq.read_table(f.path) for f in run.table_files(name, manifest)]
        assert sum(t.num_rows for t in tables) == manifest["tables"][name]["rows"], name
        if name == "decisions":
            reasons = [r for t in tables for r in t.column("reason").to_pylist()]
            for reason in Reason:
                assert reasons.count(reason.value) == manifest["counts"][reason.value]
    for file in manifest["index"]["files"].values():
        assert (run_dir / "index" / file).is_file()
    return manifest


def _folders_hold_exactly_the_manifest(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name in FINAL_TABLES:
        on_disk = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / name).iterdir())
        assert on_disk == sorted(manifest["tables"][name]["files"]), name
    assert json.loads((run_dir / "index" / "index.json").read_text()) == manifest["index"]
    listed = set(manifest["index"]["files"].values()) | {"index.json"}
    assert {p.name for p in (run_dir / "index").iterdir()} == listed


def _next_command_repairs(run_dir: Path, *, whole: bool) -> None:
    """The next command (``whole``: a whole ``dedup``; otherwise only the repair every
    command starts with, which is what differs between kill points) leaves exactly the
    committed state."""
    (run_dir / "_lock.json").unlink(missing_ok=True)  # the killed process is gone
    if whole:
        republish(str(run_dir), "dedup")
    else:
        run = RunFolder.at(str(run_dir))
        with run.lock("dedup"):
            run.repair()
    _committed_state_is_whole(run_dir)
    _folders_hold_exactly_the_manifest(run_dir)


def _count_operations(monkeypatch: pytest.MonkeyPatch, kill_at: int | None) -> list[str]:
    """Count (and, at ``kill_at``, interrupt) every write and delete of the storage layer."""
    done: list[str] = []
    write_with, remove = Location.write_with, Location.remove

    def step(kind: str, location: Location) -> None:
        if kill_at is not None and len(done) == kill_at:
            raise Killed(f"{kind} {location.url}")
        done.append(f"{kind} {location.url}")

    def counted_write(self: Location, write) -> None:  # noqa: ANN001
        step("write", self)
        write_with(self, write)

    def counted_remove(self: Location) -> None:
        step("remove", self)
        remove(self)

    monkeypatch.setattr(Location, "write_with", counted_write)
    monkeypatch.setattr(Location, "remove", counted_remove)
    return done


@pytest.mark.parametrize(
    ("command", "changes", "setting", "every"),
    [
        ("dedup", RepublishSettings(near_threshold=0.01), ("near_threshold", 0.01), 1),
        # the same commit code: every third point, and the last
        ("rethreshold", RepublishSettings(threshold=0.6), ("threshold", 0.6), 3),
    ],
)
@pytest.mark.slow
def test_a_command_killed_at_any_write_or_delete_leaves_a_whole_state(
    finished_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    changes: RepublishSettings,
    setting: tuple[str, float],
    every: int,
) -> None:
    before = _committed_state_is_whole(finished_run)
    probe = tmp_path / "probe"
    shutil.copytree(finished_run, probe)
    with monkeypatch.context() as patch:
        operations = _count_operations(patch, None)
        republish(str(probe), command, changes)
    after = _committed_state_is_whole(probe)
    assert after["generation"] != before["generation"] and len(operations) > 8
    name, value = setting
    assert after["config"][name] == value
    for kill_at in sorted({*range(0, len(operations), every), len(operations) - 1}):
        target = tmp_path / f"killed-{kill_at}"
        shutil.copytree(finished_run, target)
        with monkeypatch.context() as patch:
            _count_operations(patch, kill_at)
            with pytest.raises(Killed):
                republish(str(target), command, changes)
        seen = _committed_state_is_whole(target)  # readers see the old state or the new one
        assert seen["generation"] == before["generation"] or (
            seen["config"][name] == value and seen["counts"] == after["counts"]
        ), operations[kill_at]
        _next_command_repairs(target, whole=kill_at in (0, len(operations) - 1))


@pytest.mark.slow
def test_a_run_killed_while_it_commits_leaves_a_whole_state(
    finished_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_captioner_dir: Path,
    tiny_filter_dir: Path,
) -> None:
    """A re-run at another threshold killed at writes and deletes of its final tables, index
    and manifest (in-job finalize and commit): readers see the previous run or the new one,
    and the next command repairs."""

    def rerun(out: Path) -> None:
        run_pipeline(
            build_config(
                input=(str(finished_run.parent / "in.parquet"),), out=str(out),
                captioner=str(tiny_captioner_dir), filter=str(tiny_filter_dir),
                captions_per_image=2, batch_size=2, threshold=0.6, progress=False,
            )
        )  # fmt: skip

    before = _committed_state_is_whole(finished_run)
    probe = tmp_path / "probe"
    shutil.copytree(finished_run, probe)
    with monkeypatch.context() as patch:
        operations = _count_operations(patch, None)
        rerun(probe)
    after = _committed_state_is_whole(probe)
    assert after["counts"] != before["counts"]
    final = [  # the final tables, the index, the manifest, then the old generation's removal
        i
        for i, op in enumerate(operations)
        if not any(part in op for part in ("/_stage/", "/_cache/", "/._write_test"))
    ]
    assert any("manifest.json" in operations[i] for i in final) and len(final) > 8
    for kill_at in sorted({*final[::2], final[-1]}):
        target = tmp_path / f"killed-{kill_at}"
        shutil.copytree(finished_run, target)
        with monkeypatch.context() as patch:
            _count_operations(patch, kill_at)
            with pytest.raises(Killed):
                rerun(target)
        seen = _committed_state_is_whole(target)
        assert seen["generation"] == before["generation"] or (
            seen["config"]["threshold"] == 0.6 and seen["counts"] == after["counts"]
        ), operations[kill_at]
        _next_command_repairs(target, whole=kill_at in (final[0], final[-1]))


@pytest.mark.slow
def test_an_interrupted_rerun_leaves_the_finished_run_usable(
    finished_run: Path, tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    data = tmp_path / "many.parquet"
    write_pairs_parquet(data, gradient_rows(60), row_group_size=5)
    run = tmp_path / "run"
    args = [
        sys.executable, "-m", "app.cli", "run", str(data), "--out", str(run), "--captioner",
        str(tiny_captioner_dir), "--filter", str(tiny_filter_dir), "-k", "2", "--batch-size", "1",
        "--no-progress",
    ]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True)
    before = _committed_state_is_whole(run)
    staged: list[Path] = []

    def staging() -> bool:
        staged[:] = list((run / "_stage").glob("2*/decisions/*.parquet"))
        return bool(staged)

    kill_when(args, staging)
    assert staged, "the re-run was killed before it wrote staged tables"
    result = CliRunner().invoke(main, ["dedup", str(run)])  # takes over the stale lock
    assert result.exit_code == 0, result.output
    after = _committed_state_is_whole(run)
    assert after["tables"]["decisions"]["rows"] == before["tables"]["decisions"]["rows"] > 60
    assert after["counts"] == before["counts"]
    _folders_hold_exactly_the_manifest(run)
    assert [p.name for p in (run / "_stage").iterdir() if p.is_dir()] == [
        json.loads((run / "_stage" / "stage.json").read_text())["generation"]
    ]  # the incomplete staged tables are gone


def test_run_lock_refuses_a_second_command_and_takes_over_a_dead_ones(
    finished_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    run = RunFolder.at(str(run_dir))
    with run.lock("run"):
        busy = CliRunner().invoke(main, ["dedup", str(run_dir)])
        assert busy.exit_code == 2 and "in use by another command ('run'" in busy.stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"token": "x", "command": "run", "host": os.uname().nodename, "pid": dead.pid}
    (run_dir / "_lock.json").write_text(json.dumps({**holder, "heartbeat": time.time()}))
    assert CliRunner().invoke(main, ["dedup", str(run_dir)]).exit_code == 0
    assert not (run_dir / "_lock.json").exists()


def test_unusable_output_folders_are_refused_before_work(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(
        tmp_path / "in.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "t"}]
    )
    (tmp_path / "a_file").write_text("x")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    base = ["run", str(tmp_path / "in.parquet"), "--captioner", str(tiny_captioner_dir),
            "--filter", str(tiny_filter_dir), "--no-progress", "--out"]  # fmt: skip
    try:
        for out, message in (
            (tmp_path / "a_file", "is a file"),
            (tmp_path / "a_file" / "run", "is a file"),
            (read_only / "run", "cannot be written"),
        ):
            if message == "cannot be written" and os.geteuid() == 0:
                continue  # root writes anywhere
            result = CliRunner().invoke(main, [*base, str(out)])
            assert result.exit_code == 2 and message in result.stderr, result.output
            assert "Traceback" not in result.output
    finally:
        read_only.chmod(0o700)


def test_settings_a_run_could_not_finish_with_are_refused_before_work(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    data = tmp_path / "data"
    write_pairs_parquet(data / "in.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "t"}])
    mine = tmp_path / "mine"
    (mine / "clean").mkdir(parents=True)
    (mine / "clean" / "old.parquet").write_bytes(b"a user's file")
    (tmp_path / "latin1.yaml").write_bytes(b"prompt: caf\xe9\n")
    (tmp_path / "twice.yaml").write_text("captions-per-image: 2\ncaptions_per_image: 3\n")
    models = ["--captioner", str(tiny_captioner_dir), "--filter", str(tiny_filter_dir)]
    out = ["--out", str(tmp_path / "run")]
    cases = [
        ([str(data), "--out", str(mine), *models], "holds other files (clean) and is not a run"),
        ([str(data), "--out", str(data), *models], "lies inside the output folder"),
        ([str(data), *out, "--captioner", str(tiny_filter_dir), "--filter", str(tiny_filter_dir)],
         "is a BlipForImageTextRetrieval, but the captioner loads a BlipForConditionalGeneration"),
        ([str(data), *out, "--captioner", str(tiny_captioner_dir), "--filter",
          str(tiny_captioner_dir)], "but the filter loads a BlipForImageTextRetrieval"),
        ([str(data), *out, *models, "--prompt", "a " * 40], "leaves no room within max_length"),
        ([str(data), *out, *models, "--dtype", "fp16"], "fp16 is not supported on CPU"),
        ([str(data), *out, *models, "--text-column", "image"],
         "column 'image' cannot be both the image and the text column"),
        ([str(data), *out, *models, "--config", str(tmp_path / "latin1.yaml")], "not UTF-8"),
        ([str(data), *out, *models, "--config", str(tmp_path / "twice.yaml")], "given twice"),
    ]  # fmt: skip
    import torch

    for args, message in cases:
        if "fp16" in args and torch.cuda.is_available():
            continue  # --device auto resolves to CUDA, where fp16 runs
        result = CliRunner().invoke(main, ["run", *args, "--no-progress"])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert "Traceback" not in result.output
    assert (mine / "clean" / "old.parquet").read_bytes() == b"a user's file"
    assert not (tmp_path / "run" / "_stage").exists()


def test_a_finished_run_of_other_input_is_not_replaced(
    finished_run: Path, tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    manifest = (run_dir / "manifest.json").read_bytes()
    files = sorted(run_dir.rglob("*"))
    other = tmp_path / "other.parquet"
    write_pairs_parquet(other, [{"image": jpeg_bytes(photo("coffee")), "text": "t"}])
    result = CliRunner().invoke(main, [
        "run", str(other), "--out", str(run_dir), "--captioner", str(tiny_captioner_dir),
        "--filter", str(tiny_filter_dir), "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "holds a finished run whose input this run does not read (" in result.stderr
    assert "in.parquet" in result.stderr and "Traceback" not in result.output
    assert (run_dir / "manifest.json").read_bytes() == manifest
    assert sorted(run_dir.rglob("*")) == files
    read = [i["path"] for i in json.loads(manifest)["inputs"]]
    RunFolder.at(str(run_dir)).check_may_run_into([*read, other.as_uri()])  # more input: allowed


def test_the_runs_own_index_is_refused_as_previous_round(
    finished_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    own = CliRunner().invoke(
        main, ["dedup", str(run_dir), "--dedup-against", str(run_dir / "index")]
    )
    assert own.exit_code == 2 and "own index" in own.stderr
    cleared = CliRunner().invoke(main, ["dedup", str(run_dir), "--dedup-against", ""])
    assert cleared.exit_code == 0, cleared.output
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["dedup_against"] is None


@pytest.mark.parametrize("command", [["rethreshold", "--threshold", "0.4"], ["dedup"]])
def test_republishing_refuses_staged_tables_with_a_file_missing(
    finished_run: Path, tmp_path: Path, command: list[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    listing = json.loads((run_dir / "_stage" / "stage.json").read_text())
    gone = listing["tables"]["decisions"][0]
    (run_dir / gone).unlink()
    before = (run_dir / "manifest.json").read_text()
    result = CliRunner().invoke(main, [command[0], str(run_dir), *command[1:]])
    assert result.exit_code == 2, result.output
    assert f"lists {gone}, which is missing (1 of " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (run_dir / "manifest.json").read_text() == before  # the finished run is untouched


@pytest.mark.parametrize("damage", ["truncated", "pages"])
@pytest.mark.parametrize(
    ("command", "table"),
    [(["rethreshold", "--threshold", "0.4"], "decisions"), (["dedup"], "images")],
)
def test_republishing_refuses_staged_tables_with_a_damaged_file(
    finished_run: Path, tmp_path: Path, command: list[str], table: str, damage: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    listing = json.loads((run_dir / "_stage" / "stage.json").read_text())
    name = listing["tables"][table][0]
    if damage == "truncated":
        (run_dir / name).write_bytes((run_dir / name).read_bytes()[:10])
    else:
        corrupt_pages(run_dir / name)
    before = (run_dir / "manifest.json").read_text()
    result = CliRunner().invoke(main, [command[0], str(run_dir), *command[1:]])
    assert result.exit_code == 2, result.output
    problem = "is not readable Parquet" if damage == "truncated" else "cannot be read"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {run_dir}: the staged tables are damaged: {name} {problem}")
    assert (run_dir / "manifest.json").read_text() == before  # the finished run is untouched


def test_tables_load_in_hugging_face_datasets_and_pyarrow(finished_run: Path) -> None:
    import datasets

    for name in FINAL_TABLES:
        folder = finished_run / name
        table = pq.read_table(folder)
        loaded = datasets.load_dataset("parquet", data_dir=str(folder), split="train")
        assert loaded.num_rows == table.num_rows, name
        assert all(pq.read_metadata(p).num_rows for p in folder.iterdir()) or table.num_rows == 0


def _rows(run_dir: Path, name: str) -> list[tuple]:
    table = pq.read_table(run_dir / name)
    columns = [c for c in table.column_names if c != "run_id"]
    return sorted(tuple(row[c] for c in columns) for row in table.select(columns).to_pylist())


@pytest.mark.slow
def test_rethreshold_equals_a_fresh_run_at_that_threshold(
    tmp_path: Path, tiny_captioner_dir, distinct_filter_dir: Path
) -> None:
    rows = [
        {"key": f"k{i}", "image": jpeg_bytes(photo(name)), "text": f"a photo {i}", "lang": "en"}
        for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket", "camera", "horse"])
    ]
    rows.append({"key": "copy", "image": rows[0]["image"], "text": "another text"})
    rows.append({"key": "near", "image": jpeg_bytes(photo("coffee"), quality=30), "text": "x"})
    write_pairs_parquet(tmp_path / "in.parquet", rows)

    def config(out: Path, threshold: float, synthetic: float | None):
        return build_config(
            input=(str(tmp_path / "in.parquet"),), out=str(out), captioner=str(tiny_captioner_dir),
            filter=str(distinct_filter_dir), captions_per_image=3, batch_size=3, threshold=threshold,
            synthetic_threshold=synthetic, near_threshold=0.97, phash_distance=-1, progress=False,
        )  # fmt: skip

    first = run_pipeline(config(tmp_path / "a", 0.5, None))
    itm = sorted(
        r["itm"]
        for r in pq.read_table(tmp_path / "a" / "decisions").to_pylist()
        if r["itm"] is not None
    )
    web_t, syn_t = itm[len(itm) // 3], itm[2 * len(itm) // 3]  # thresholds between scores
    result = CliRunner().invoke(
        main,
        ["rethreshold", str(tmp_path / "a"), "--threshold", str(web_t),
         "--synthetic-threshold", str(syn_t)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_pipeline(config(tmp_path / "fresh", web_t, syn_t))
    for name in FINAL_TABLES:
        assert _rows(tmp_path / "a", name) == _rows(tmp_path / "fresh", name), name
    after = json.loads((tmp_path / "a" / "manifest.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "manifest.json").read_text())
    assert after["counts"] == fresh["counts"] and after["texts"] == fresh["texts"]
    assert after["index"]["count"] == fresh["index"]["count"]
    assert [(h["command"], h["threshold"]) for h in after["history"]] == [
        ("run", 0.5),
        ("rethreshold", web_t),
    ]
    assert after["config"]["synthetic_threshold"] == syn_t
    assert first.manifest["texts"] != after["texts"]  # the thresholds did change decisions
    assert _index_vectors(tmp_path / "a") == _index_vectors(tmp_path / "fresh")
    # without --synthetic-threshold, captions take the web threshold too
    again = CliRunner().invoke(
        main, ["rethreshold", str(tmp_path / "a"), "--threshold", str(syn_t)]
    )
    assert again.exit_code == 0, again.output
    run_pipeline(config(tmp_path / "same", syn_t, None))
    for name in FINAL_TABLES:
        assert _rows(tmp_path / "a", name) == _rows(tmp_path / "same", name), name
    assert (
        json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["synthetic_threshold"]
        == syn_t
    )


def _index_vectors(run: Path) -> dict[str, list[float]]:
    """Key -> stored vector (rounded) of a run's index."""
    import faiss

    index_file, ids_file = index_files(run)
    index = faiss.read_index(str(index_file))
    ids = pq.read_table(ids_file).to_pylist()
    return {r["key"]: [round(float(v), 5) for v in index.reconstruct(r["id"])] for r in ids}


def test_republish_changes_keep_the_run_s_values_unless_given() -> None:
    """``dedup`` and ``rethreshold`` change only what is given: a new web threshold also sets
    the synthetic one unless that is given too, and an empty previous index clears it."""
    config = {"threshold": 0.4, "synthetic_threshold": 0.7, "near_threshold": 0.9,
              "dedup_against": "gs://b/prev/index"}  # fmt: skip
    kept = RepublishSettings().applied_to(config)
    assert (kept.threshold, kept.synthetic_threshold) == (0.4, 0.7)
    assert (kept.near_threshold, kept.dedup_against) == (0.9, "gs://b/prev/index")
    web = RepublishSettings(threshold=0.6).applied_to(config)
    assert (web.threshold, web.synthetic_threshold) == (0.6, None)
    both = RepublishSettings(threshold=0.6, synthetic_threshold=0.8).applied_to(config)
    assert (both.threshold, both.synthetic_threshold) == (0.6, 0.8)
    synthetic = RepublishSettings(synthetic_threshold=0.2).applied_to(config)
    assert (synthetic.threshold, synthetic.synthetic_threshold) == (0.4, 0.2)
    cleared = RepublishSettings(dedup_against="", near_threshold=0.5).applied_to(config)
    assert (cleared.dedup_against, cleared.near_threshold) == (None, 0.5)
    assert RepublishSettings().applied_to({"threshold": 0.5}).near_threshold == 0.95
    with pytest.raises(ConfigError, match="near_threshold"):
        RepublishSettings().applied_to({"threshold": 0.5, "near_threshold": 3})


def test_dedup_and_rethreshold_flags_are_run_s_declarations() -> None:
    """The flags that change a finished run say what `run` says of the same setting."""

    def squeezed(text: str) -> str:
        return "".join(text.split())  # click wraps lines at different columns per command

    def help_of(*args: str) -> str:
        return squeezed(CliRunner().invoke(main, [*args, "--help"]).output)

    declared = RunConfig.model_fields
    assert squeezed(declared["threshold"].description) in help_of("run")
    for command, names in [("dedup", ["near_threshold", "dedup_against", "workers", "beam_args"]),
                           ("rethreshold", ["threshold", "synthetic_threshold", "workers"])]:  # fmt: skip
        text = help_of(command, "x")
        for name in names:
            assert squeezed(declared[name].description) in text, (command, name)
    assert "[default:therun's]" in help_of("dedup", "x")
