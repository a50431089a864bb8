"""End-to-end tests of ``curation run`` on real Beam runners with tiny BLIP models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import gradient, jpeg_bytes, photo, truncated, write_pairs_parquet
from PIL import Image
from runs import gradient_rows, kill_when

from app.cli import main
from curation.config import build_config
from pipelines.runner import run_pipeline

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera"]


def _dataset(path: Path) -> dict[str, str]:
    """Real photos, copies of them, and bad rows; returns key -> expected pre-model reason."""
    rows = []
    for i, name in enumerate(PHOTOS):
        rows.append(
            {
                "key": f"p{i}",
                "image": jpeg_bytes(photo(name)),
                "text": f"a photo of {name}",
                "lang": "en",
            }
        )
    small = Image.fromarray(photo("astronaut")).resize((200, 200), Image.BICUBIC)
    rows += [
        {
            "key": "p0_resized",
            "image": jpeg_bytes(np.asarray(small), quality=60),
            "text": "an astronaut",
            "lang": "en",
        },
        {
            "key": "p0_same_pair",
            "image": rows[0]["image"],
            "text": "A photo of  astronaut",
            "lang": "fr",
        },
        {"key": "bad_bytes", "image": b"definitely not an image", "text": "broken", "lang": "en"},
        {"key": "bad_truncated", "image": truncated(rows[1]["image"]), "text": "cut", "lang": "en"},
        {
            "key": "no_text",
            "image": jpeg_bytes(gradient(64, 48, seed=3)),
            "text": "  ",
            "lang": "en",
        },
        {"key": "no_image", "image": None, "text": "where is it", "lang": "en"},
    ]
    write_pairs_parquet(path, rows, row_group_size=4)
    return {"bad_bytes": "undecodable", "bad_truncated": "truncated", "no_image": "missing_image"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("input") / "pairs.parquet"
    return path, _dataset(path)


def _config(dataset_path: Path, out: Path, captioner: Path, filter_: Path, **overrides: object):
    values = dict(
        input=str(dataset_path),
        out=str(out),
        captioner=str(captioner),
        filter=str(filter_),
        captions_per_image=2,
        batch_size=2,
        progress=False,
    )
    values.update(overrides)
    return build_config(**values)


def _table(folder: Path):
    return pq.read_table(folder)


def _decisions(out: Path) -> list[tuple]:
    table = _table(out / "decisions").to_pylist()
    rows = [
        (
            r["key"],
            r["text_origin"],
            r["caption_index"],
            r["text"],
            r["decision"],
            r["reason"],
            r["image_key"],
        )
        for r in table
    ]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def baseline(dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path_factory) -> Path:
    path, _ = dataset
    out = tmp_path_factory.mktemp("run") / "out"
    run_pipeline(_config(path, out, tiny_captioner_dir, tiny_filter_dir))
    return out


def test_every_row_accounted_and_tables_match(dataset, baseline: Path) -> None:
    path, bad = dataset
    decisions = _table(baseline / "decisions").to_pylist()
    inputs = pq.read_table(path).column("key").to_pylist()
    web = [d for d in decisions if d["text_origin"] == "web"]
    assert sorted(d["key"] for d in web) == sorted(inputs)  # exactly one web decision per input row
    by_key = {d["key"]: d for d in web}
    for key, reason in bad.items():
        assert by_key[key]["reason"] == reason and by_key[key]["decision"] == "dropped"
    assert by_key["no_text"]["reason"] == "empty_text"
    assert by_key["p0_same_pair"]["reason"] == "duplicate"
    kept_web = sorted(d["key"] for d in web if d["decision"] == "kept")
    clean = _table(baseline / "clean")
    assert sorted(clean.column("key").to_pylist()) == kept_web
    assert set(clean.column("lang").to_pylist()) <= {"en", "fr"}  # passthrough column survives
    kept_syn = sorted(
        (d["image_key"], d["caption_index"])
        for d in decisions
        if d["text_origin"] == "synthetic" and d["decision"] == "kept"
    )
    synthetic = _table(baseline / "synthetic").to_pylist()
    assert sorted((r["key"], r["caption_index"]) for r in synthetic) == kept_syn
    manifest = json.loads((baseline / "manifest.json").read_text())
    for reason, n in manifest["counts"].items():
        assert n == sum(1 for d in decisions if d["reason"] == reason), reason
    counters = manifest["pipeline"]
    assert counters["rows_read"] == len(inputs)
    for reason in ("undecodable", "truncated", "missing_image", "empty_text"):
        assert counters[f"reason_{reason}"] == manifest["counts"][reason]


def test_progress_line_and_summary(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    import io

    from app.run import print_summary

    path, _ = dataset
    stream = io.StringIO()
    result = run_pipeline(
        _config(path, tmp_path / "p", tiny_captioner_dir, tiny_filter_dir, progress=True), stream
    )
    assert "local runner (in-process)" in stream.getvalue()
    assert "counts follow when the pipeline finishes" in stream.getvalue()
    summary = io.StringIO()
    print_summary(result, summary)
    text = summary.getvalue()
    assert "undecodable" in text and "clean/" in text
    from curation.audit.warnings import run_warnings

    expected = run_warnings(result.out_dir)
    assert all(f"warning: {w.message}" in text for w in expected)
    manifest = result.manifest
    for origin in ("web", "synthetic"):  # web texts and synthetic captions apart
        counts = manifest["texts"][origin]
        line = f"{origin + ' texts':<16} kept {counts['kept']:>8}  dropped {counts['dropped']:>8}"
        assert line in text
    synthetic = pq.read_table(tmp_path / "p" / "decisions").to_pylist()
    assert manifest["texts"]["synthetic"]["kept"] == sum(
        r["text_origin"] == "synthetic" and r["decision"] == "kept" for r in synthetic
    )
    # the index's total beside this round's share; the device actually used, not "auto"
    images = manifest["images"]
    ids = pq.read_table(next((tmp_path / "p" / "index").glob("*.ids.parquet")))
    assert images["index_total"] == images["indexed_this_round"] == ids.num_rows
    assert f"{images['index_total']} images ({ids.num_rows} added by this round)" in text
    assert result.manifest["config"]["device"] == "auto"
    assert manifest["device"]["device"] == "cpu" and manifest["device"]["dtype"] == "fp32"
    assert "device cpu (fp32, batches of 2)" in text


def test_inputs_are_recorded_as_absolute_urls(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = dataset
    monkeypatch.chdir(path.parent)
    result = run_pipeline(
        _config(Path(path.name), tmp_path / "rel", tiny_captioner_dir, tiny_filter_dir)
    )
    assert [i["path"] for i in result.manifest["inputs"]] == [str(path.resolve())]


def test_copies_share_one_image_and_are_recorded(baseline: Path) -> None:
    dups = {r["key"]: r for r in _table(baseline / "duplicates").to_pylist()}
    assert dups["p0_resized"]["dup_of"] == "p0" and dups["p0_resized"]["kind"] == "perceptual"
    assert dups["p0_same_pair"]["dup_of"] == "p0" and dups["p0_same_pair"]["kind"] == "exact"
    decisions = _table(baseline / "decisions").to_pylist()
    resized = next(d for d in decisions if d["key"] == "p0_resized")
    assert (
        resized["image_key"] == "p0" and resized["itm"] is not None
    )  # its text was scored on the kept copy
    synthetic_images = {d["image_key"] for d in decisions if d["text_origin"] == "synthetic"}
    assert synthetic_images == {f"p{i}" for i in range(len(PHOTOS))} | {
        "no_text"
    }  # one caption pass per unique image


def test_threshold_extremes_change_decisions(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    path, _ = dataset
    keep_all = run_pipeline(
        _config(path, tmp_path / "a", tiny_captioner_dir, tiny_filter_dir, threshold=0.0)
    )
    keep_none = run_pipeline(
        _config(path, tmp_path / "b", tiny_captioner_dir, tiny_filter_dir, threshold=1.0)
    )
    assert keep_all.counts["low_itm"] == 0 and keep_all.counts["kept"] > 0
    assert keep_none.counts["kept"] == 0
    assert _table(tmp_path / "b" / "clean").num_rows == 0
    import io

    from app.run import print_summary

    summary = io.StringIO()
    print_summary(keep_none, summary)
    assert "warning: " in summary.getvalue() and "threshold" in summary.getvalue()


@pytest.mark.slow
def test_multiprocess_runner_gives_same_decisions(
    dataset, baseline, tiny_captioner_dir, tiny_filter_dir, tmp_path
) -> None:
    path, _ = dataset
    run_pipeline(_config(path, tmp_path / "mp", tiny_captioner_dir, tiny_filter_dir, workers=2))
    assert _decisions(tmp_path / "mp") == _decisions(baseline)


def test_rerun_reuses_cached_model_outputs(
    dataset, baseline, tiny_captioner_dir, tiny_filter_dir, tmp_path
) -> None:
    import shutil

    path, _ = dataset
    out = tmp_path / "again"
    shutil.copytree(baseline, out)
    result = run_pipeline(_config(path, out, tiny_captioner_dir, tiny_filter_dir))
    assert result.counters.get("images_scored", 0) == 0 and result.counters["images_cached"] > 0
    assert _decisions(out) == _decisions(baseline)


def test_outputs_cached_under_other_decoding_rules_are_computed_again(
    dataset, baseline, tiny_captioner_dir, tiny_filter_dir, tmp_path, monkeypatch
) -> None:
    import shutil

    from curation import model_cache

    path, _ = dataset
    out = tmp_path / "newer"
    shutil.copytree(baseline, out)
    monkeypatch.setattr(model_cache, "PIXEL_RULES", model_cache.PIXEL_RULES + 1)
    result = run_pipeline(_config(path, out, tiny_captioner_dir, tiny_filter_dir))
    assert result.counters.get("images_cached", 0) == 0 and result.counters["images_scored"] > 0


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(
    tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    data = tmp_path / "many.parquet"
    write_pairs_parquet(data, gradient_rows(120), row_group_size=10)
    args = [
        sys.executable, "-m", "app.cli", "run", str(data), "--captioner", str(tiny_captioner_dir),
        "--filter", str(tiny_filter_dir), "-k", "2", "--batch-size", "1", "--no-progress",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    cache = killed / "_cache"
    kill_when([*args, "--out", str(killed)], lambda: len(list(cache.glob("*/*.parquet"))) >= 5)
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
    partial = len(list(cache.glob("*/*.parquet")))
    assert partial >= 5
    resumed = subprocess.run(
        [*args, "--out", str(killed)], capture_output=True, text=True, check=True
    )
    assert "resuming" in resumed.stderr
    straight = tmp_path / "straight"
    subprocess.run([*args, "--out", str(straight)], capture_output=True, check=True)
    assert _decisions(killed) == _decisions(straight)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert 0 < manifest["images"]["cached"] < 120
    # The finished run compacted its cache: the journals are gone, a few listed shards hold
    # every image's outputs once.
    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    listed = json.loads((folder / "cache.json").read_text())["files"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*listed, "cache.json"])
    assert len(listed) < partial
    keys = [k for name in listed for k in pq.read_table(folder / name)["cache_key"].to_pylist()]
    images = manifest["images"]
    assert len(keys) == len(set(keys)) == images["scored"] + images["cached"]


def test_config_file_and_flag_override(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    path, _ = dataset
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"captioner: {tiny_captioner_dir}\nfilter: {tiny_filter_dir}\ncaptions-per-image: 1\n"
        "threshold: 0.9\nbatch_size: 3\nprogress: false\n"
    )
    out = tmp_path / "cfg"
    result = CliRunner().invoke(
        main, ["run", str(path), "--out", str(out), "--config", str(cfg), "--threshold", "0.0"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["threshold"] == 0.0 and manifest["config"]["batch_size"] == 3
    syn = [d for d in _table(out / "decisions").to_pylist() if d["text_origin"] == "synthetic"]
    assert {d["caption_index"] for d in syn} == {0}


def test_bad_config_and_inputs_fail_before_work(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    path, _ = dataset
    base = [
        "run",
        "--out",
        str(tmp_path / "x"),
        "--captioner",
        str(tiny_captioner_dir),
        "--filter",
        str(tiny_filter_dir),
    ]
    missing_col = CliRunner().invoke(main, [*base, str(path), "--text-column", "alt"])
    assert (
        missing_col.exit_code == 2
        and "alt" in missing_col.output
        and "pairs.parquet" in missing_col.output
    )
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    bad_file = CliRunner().invoke(main, [*base, str(not_parquet)])
    assert bad_file.exit_code == 2 and "notes.parquet" in bad_file.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("treshold: 0.4\n")
    bad_key = CliRunner().invoke(main, [*base, str(path), "--config", str(cfg)])
    assert bad_key.exit_code == 2 and "treshold" in bad_key.output
    # Caption settings the captioner would refuse are refused before any work.
    cfg.write_text("min_length: 30\nmax_length: 30\n")
    bad_lengths = CliRunner().invoke(main, [*base, str(path), "--config", str(cfg)])
    assert bad_lengths.exit_code == 2 and "min_length < max_length" in bad_lengths.output
    cfg.write_text("sample: false\nnum_beams: 2\ncaptions_per_image: 3\n")
    too_many = CliRunner().invoke(main, [*base, str(path), "--config", str(cfg)])
    assert too_many.exit_code == 2 and "num_beams" in too_many.output
    no_model = CliRunner().invoke(main, [*base[:3], str(path), "--filter", str(tmp_path / "nope")])
    assert no_model.exit_code == 2
    assert not (tmp_path / "x" / "decisions").exists()


@pytest.mark.slow
def test_worker_processes_print_no_start_up_chatter(
    dataset, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    path, _ = dataset
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(path), "--out", str(tmp_path / "o"),
         "--captioner", str(tiny_captioner_dir), "--filter", str(tiny_filter_dir), "-k", "1",
         "--workers", "2", "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for noise in ("INFO:", "swigfaiss", "apitools", "semi_persistent_directory"):
        assert noise not in done.stderr, done.stderr
    assert "decisions per reason" in done.stdout


def test_demo_and_help_surfaces(tmp_path: Path) -> None:
    """`demo` into an unusable folder exits 2 with a message before work; `run --help`
    lists every setting, `--out` marked required."""
    (tmp_path / "file").write_text("x")
    demo = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "file" / "sub")])
    assert demo.exit_code == 2 and "is a file" in demo.stderr
    assert "Traceback" not in demo.output
    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    for flag in ("--min-side", "--max-pixels", "--prompt", "--top-k", "--repetition-penalty",
                 "--num-beams"):  # fmt: skip
        assert flag in text, flag
    assert "--out TEXT" in text and "[required]" in text.split("--out TEXT", 1)[1][:400]


def test_finetune_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    from curation.shapes import make_clean_split

    data = make_clean_split(8, 1, tmp_path / "clean.parquet")
    base = ["finetune", "filter", "--train", str(data), "--out", str(tmp_path / "m")]
    wrong_column = CliRunner().invoke(main, [*base, "--base", "tiny", "--image-column", "nope"])
    assert wrong_column.exit_code == 2 and "nope" in wrong_column.stderr
    assert "Traceback" not in wrong_column.output
    bad_base = CliRunner().invoke(main, [*base, "--base", str(tmp_path / "no-such-model")])
    assert bad_base.exit_code == 2 and "does not exist" in bad_base.stderr
