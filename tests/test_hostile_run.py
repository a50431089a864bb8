"""No single row can stop a run: data-dependent problems are decisions or fail before the
models, and a stage that fails on one element records ``error`` decisions for its rows."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import bomb_png, gradient, jpeg_bytes, photo, png_bytes, truncated, write_pairs_parquet
from PIL import Image
from runs import manifest as read_manifest

from app.cli import main
from curation.config import InputSettings, build_config
from curation.errors import ConfigError
from curation.inspect import inspect_input
from curation.reader import UNREAD_KEY
from pipelines.options import choose_runner
from pipelines.runner import run_pipeline


def _config(data: Path | str, out: Path, captioner: Path, filter_: Path, **kw: object):
    values: dict = dict(
        input=(str(data),), out=str(out), captioner=str(captioner), filter=str(filter_),
        captions_per_image=1, batch_size=2, progress=False,
    )  # fmt: skip
    values.update(kw)
    return build_config(**values)


def _web(out: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in pq.read_table(out / "decisions").to_pylist():
        if row["text_origin"] == "web":
            rows.setdefault(row["key"], []).append(row)
    return rows


def _cli_run(*args: str) -> list[str]:
    return ["run", *args, "--no-progress"]


def test_the_models_decode_under_the_runs_image_settings(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    """An image that screening accepts under the run's --min-side and --image-format is
    decoded for the models under the same settings, not the defaults."""
    small = png_bytes(gradient(6, 6, seed=1))  # below the default min_side (8)
    ppm = io.BytesIO()
    Image.fromarray(gradient(40, 30, seed=2)).save(ppm, format="PPM")  # not a default format
    rows = [
        {"key": "small", "image": small, "text": "a small one"},
        {"key": "ppm", "image": ppm.getvalue(), "text": "a portable pixmap"},
    ]
    write_pairs_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    config = _config(
        tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir,
        min_side=4, image_formats=("JPEG", "PNG", "PPM"), phash_distance=-1,
    )  # fmt: skip
    run_pipeline(config)
    web = _web(out)
    assert sorted(web) == ["ppm", "small"]
    assert all(rows[0]["reason"] != "error" and rows[0]["itm"] is not None for rows in web.values())


def test_repeated_keys_keep_the_first_row_and_the_run_finishes(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    a = [jpeg_bytes(gradient(64, 48, seed=s)) for s in range(4)]
    write_pairs_parquet(
        tmp_path / "in" / "0.parquet",
        [
            {"key": "x", "image": a[0], "text": "first"},
            {"key": "x", "image": a[1], "text": "again"},
        ],
    )
    write_pairs_parquet(
        tmp_path / "in" / "1.parquet",
        [
            {"key": "x", "image": a[2], "text": "later"},
            {"key": "y", "image": a[3], "text": "other"},
        ],
    )
    out = tmp_path / "out"
    result = run_pipeline(_config(tmp_path / "in", out, tiny_captioner_dir, tiny_filter_dir))
    decisions = pq.read_table(out / "decisions").to_pylist()
    web = [d for d in decisions if d["text_origin"] == "web"]
    assert len(web) == 4  # one web decision per input row
    first = [
        d
        for d in web
        if d["key"] == "x" and d["source_row"] == 0 and "0.parquet" in d["source_file"]
    ]
    assert first[0]["reason"] != "duplicate_key"
    later = [d for d in web if d["reason"] == "duplicate_key"]
    assert len(later) == 2 and all("already used by" in d["detail"] for d in later)
    assert result.manifest["counts"]["duplicate_key"] == 2
    assert (
        inspect_input(InputSettings(input=(str(tmp_path / "in"),)), progress=False).counts[
            "duplicate_key"
        ]
        == 2
    )


def test_a_new_image_sharing_a_key_with_the_previous_round_is_kept(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(
        tmp_path / "r1.parquet", [{"key": "k", "image": jpeg_bytes(photo("coffee")), "text": "a"}]
    )
    write_pairs_parquet(
        tmp_path / "r2.parquet", [{"key": "k", "image": jpeg_bytes(photo("rocket")), "text": "b"}]
    )
    run_pipeline(
        _config(
            tmp_path / "r1.parquet",
            tmp_path / "r1",
            tiny_captioner_dir,
            tiny_filter_dir,
            threshold=0.0,
        )
    )
    run_pipeline(
        _config(
            tmp_path / "r2.parquet", tmp_path / "r2", tiny_captioner_dir, tiny_filter_dir,
            threshold=0.0, near_threshold=0.9999, dedup_against=str(tmp_path / "r1" / "index"),
        )
    )  # fmt: skip
    [decision] = _web(tmp_path / "r2")["k"]
    assert decision["reason"] == "kept"


def test_passthrough_columns_of_differing_types_are_combined_or_refused_before_work(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    img = jpeg_bytes(gradient(64, 48))
    write_pairs_parquet(tmp_path / "num" / "a.parquet", [{"image": img, "text": "a", "score": 1}])
    write_pairs_parquet(
        tmp_path / "num" / "b.parquet", [{"image": img, "text": "b", "score": 1.5, "lang": "en"}]
    )
    hive = tmp_path / "num" / "lang=de%2Fat" / "part=7"  # Hive partition folders, as Spark writes
    write_pairs_parquet(hive / "c.parquet", [{"image": img, "text": "c", "score": 2}])
    out = tmp_path / "out"
    run_pipeline(_config(tmp_path / "num", out, tiny_captioner_dir, tiny_filter_dir, threshold=0.0))
    clean = pq.read_table(out / "clean")
    assert clean.schema.field("score").type == pa.float64()
    assert clean.schema.field("part").type == pa.string()
    rows = sorted(
        clean.select(["text", "score", "lang", "part"]).to_pylist(), key=lambda r: r["text"]
    )
    assert [tuple(row.values()) for row in rows] == [
        ("a", 1.0, None, None), ("b", 1.5, "en", None), ("c", 2.0, "de/at", "7"),
    ]  # fmt: skip  # 1.5 is not truncated
    write_pairs_parquet(tmp_path / "mixed" / "a.parquet", [{"image": img, "text": "a", "v": 1}])
    write_pairs_parquet(tmp_path / "mixed" / "b.parquet", [{"image": img, "text": "b", "v": "x"}])
    started = time.monotonic()
    refused = CliRunner().invoke(
        main,
        _cli_run(str(tmp_path / "mixed"), "--out", str(tmp_path / "o2"), "--captioner",
                 str(tiny_captioner_dir), "--filter", str(tiny_filter_dir)),
    )  # fmt: skip
    assert refused.exit_code == 2 and "'v'" in refused.stderr and "b.parquet" in refused.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "o2" / "_stage").exists()
    dry = CliRunner().invoke(main, ["inspect", str(tmp_path / "mixed")])
    assert dry.exit_code == 2 and "'v'" in dry.stderr and "b.parquet" in dry.stderr


def test_an_empty_round_writes_an_index_the_next_round_can_use(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(tmp_path / "empty.parquet", [{"image": None, "text": "x"}, {"image": b"junk", "text": "y"}],
                        schema=pa.schema([("image", pa.binary()), ("text", pa.string())]))  # fmt: skip
    run_pipeline(
        _config(tmp_path / "empty.parquet", tmp_path / "r1", tiny_captioner_dir, tiny_filter_dir)
    )
    info = json.loads((tmp_path / "r1" / "index" / "index.json").read_text())
    assert (
        info["count"] == 0
        and info["dimension"] == read_manifest(tmp_path / "r1")["index"]["dimension"] > 1
    )
    write_pairs_parquet(
        tmp_path / "good.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "c"}]
    )
    result = run_pipeline(
        _config(tmp_path / "good.parquet", tmp_path / "r2", tiny_captioner_dir, tiny_filter_dir,
                dedup_against=str(tmp_path / "r1" / "index"), threshold=0.0)
    )  # fmt: skip
    assert result.manifest["images"]["index_total"] == 1


def test_texts_with_nul_control_characters_invalid_utf8_and_huge_length(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    img = [jpeg_bytes(gradient(64, 48, seed=s)) for s in range(4)]
    texts = pa.array(
        [
            b"nul\x00inside",
            b"bell\x07 and\x1b escapes",
            b"bad \xff bytes",
            ("long " * 30_000).encode(),
        ],
        pa.binary(),
    ).view(pa.string())
    keys = pa.array(["nul", "control", "utf8", "long"])
    pq.write_table(pa.table({"key": keys, "image": img, "text": texts}), tmp_path / "t.parquet")
    out = tmp_path / "out"
    run_pipeline(
        _config(tmp_path / "t.parquet", out, tiny_captioner_dir, tiny_filter_dir, threshold=0.0,
                near_threshold=1.0)
    )  # fmt: skip
    web = {k: v[0] for k, v in _web(out).items()}
    assert set(web) == {"nul", "control", "utf8", "long"}
    assert all(d["reason"] in ("kept", "low_itm") for d in web.values()), web
    assert web["nul"]["text"] == "nul\x00inside"  # stored as it came
    assert web["utf8"]["text"] == "bad \ufffd bytes" and "UTF-8" in web["utf8"]["detail"]
    assert len(web["long"]["text"]) == len("long " * 30_000)
    assert "text cut to 2048 of" in web["long"]["detail"]  # what the models saw is bounded
    assert "control or invisible characters removed" in web["control"]["detail"]


def test_settings_the_models_cannot_honour_are_refused_before_work(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(
        tmp_path / "in.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "t"}]
    )
    base = _cli_run(str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o"), "--captioner",
                    str(tiny_captioner_dir), "--filter", str(tiny_filter_dir))  # fmt: skip
    too_long = CliRunner().invoke(main, [*base, "--max-length", "500", "--min-length", "10"])
    assert too_long.exit_code == 2 and "max_length 500" in too_long.stderr
    fp16 = CliRunner().invoke(main, [*base, "--device", "cpu", "--dtype", "fp16"])
    assert fp16.exit_code == 2 and "fp16" in fp16.stderr
    import torch

    if not torch.cuda.is_available():
        cuda = CliRunner().invoke(main, [*base, "--device", "cuda"])
        assert cuda.exit_code == 2 and "CUDA is not available" in cuda.stderr
    dataflow = CliRunner().invoke(main, [*base, "--beam-arg=--runner=DataflowRunner"])
    assert dataflow.exit_code == 2
    assert all(f"--{k}" in dataflow.stderr for k in ("project", "region", "temp_location"))
    for stray, named in (
        ("garbage", "'garbage'"),
        ("--wroker_machine_type=n1", "--wroker_machine_type"),
    ):
        refused = CliRunner().invoke(main, [*base, f"--beam-arg={stray}"])
        assert refused.exit_code == 2 and f"{named} is no Beam pipeline option" in refused.stderr
    here = [("--out", str(tmp_path / "o"))]
    portable = ["--runner=PortableRunner", "--job_endpoint=localhost:8099"]
    pool = [*portable, "--environment_type=EXTERNAL", "--environment_config=localhost:50000"]
    assert choose_runner(pool, 1, here).local  # a worker pool on this machine sees its disk
    remote = [*portable, "--environment_type=EXTERNAL", "--environment_config=pool.example:50000"]
    with pytest.raises(ConfigError, match="do not see"):
        choose_runner(remote, 1, here)


def test_inspect_check_run_refuses_what_run_refuses_before_the_models(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    """`inspect --check-run` runs run's checks before work: the models' configs, caption
    lengths and a previous-round index of another embedding size, which `run` refuses
    with the same message before any model runs."""
    from curation.dedup.index_store import write_index

    data = tmp_path / "in.parquet"
    write_pairs_parquet(data, [{"image": jpeg_bytes(photo("coffee")), "text": "t"}])
    write_index(tmp_path / "prev", ["old"], np.eye(1, 7, dtype=np.float32))
    models = {"captioner": str(tiny_captioner_dir), "filter": str(tiny_filter_dir)}

    def inspect_with(**settings: object):  # noqa: ANN202
        config = tmp_path / "run.yaml"
        config.write_text(json.dumps({**models, "out": str(tmp_path / "o"), **settings}))
        return CliRunner().invoke(
            main, ["inspect", str(data), "--config", str(config), "--check-run"]
        )

    ok = inspect_with()
    assert ok.exit_code == 0 and "models found: filter" in ok.output
    too_long = inspect_with(max_length=500, min_length=10)
    assert too_long.exit_code == 2 and "max_length 500" in too_long.stderr
    other = inspect_with(dedup_against=str(tmp_path / "prev"))
    assert other.exit_code == 2 and "7-d embeddings" in other.stderr
    run = CliRunner().invoke(
        main,
        _cli_run(str(data), "--out", str(tmp_path / "o"), "--captioner", models["captioner"],
                 "--filter", models["filter"], "--dedup-against", str(tmp_path / "prev")),
    )  # fmt: skip
    assert run.exit_code == 2 and "7-d embeddings" in run.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "x.parquet", "--out", "o", "--threshold", "2"], "threshold"),
        (["run", "x.parquet", "--out", "o", "--config", "{config}"], "top_p"),
        (["inspect", "x.parquet", "--config", "{config}"], "top_p"),
        (["inspect", "x.parquet", "--min-side", "-1"], "min_side"),
        (["dedup", "runs/r1", "--near-threshold", "0"], "near_threshold"),
        (["rethreshold", "runs/r1", "--threshold", "1.5"], "threshold"),
        (["finetune", "filter", "--train", "t", "--out", "m", "--holdout", "0.9"], "holdout"),
        (
            ["finetune", "filter", "--train", "t", "--out", "m", "--partial-positives", "1"],
            "--text-domain",
        ),  # fmt: skip
        (["finetune", "captioner", "--train", "no-such.parquet", "--out", "m"], "no-such"),
    ],
)
def test_flag_errors_appear_before_torch_and_beam_are_imported(
    args: list[str], named: str, tmp_path: Path
) -> None:
    """Wrong flags and config keys, for every command with settings: exit 2 naming the
    setting, before torch or Beam is imported."""
    config = tmp_path / "run.yaml"
    config.write_text("top_p: 7\n")
    args = [a.replace("{config}", str(config)) for a in args]
    code = (
        "import sys\n"
        "from app.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 2, exit.code\n"
        "assert 'torch' not in sys.modules and 'apache_beam' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert named in done.stderr


def test_a_failing_stage_records_error_decisions_and_the_run_finishes(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults injected into two real stages: decoding at the models' size for one image,
    deciding for another. Their rows get ``error`` decisions naming the stage."""
    import curation.screen
    import pipelines.decide

    images = {f"k{i}": jpeg_bytes(gradient(64, 48, seed=i)) for i in range(6)}
    write_pairs_parquet(
        tmp_path / "in.parquet",
        [{"key": k, "image": v, "text": f"t {k}"} for k, v in images.items()],
    )
    decode, decide = curation.screen.ScreenSettings.decode, pipelines.decide.decide_group

    def failing_decode(self, data, size=None):  # noqa: ANN001, ANN202
        if size is not None and data == images["k1"]:  # at the models' size only
            raise MemoryError("no room for this one")
        return decode(self, data, size)

    def failing_decide(group, scores, **kw):  # noqa: ANN001, ANN202
        if group.key == "k4":
            raise ValueError("cannot decide k4\x1b]0;title\x07\x1b[2J")
        return decide(group, scores, **kw)

    monkeypatch.setattr(curation.screen.ScreenSettings, "decode", failing_decode)
    monkeypatch.setattr(pipelines.decide, "decide_group", failing_decide)
    out = tmp_path / "out"
    result = run_pipeline(
        _config(
            tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir, max_error_rate=0.5
        )
    )
    web = {k: v for k, v in _web(out).items()}
    assert sorted(web) == sorted(images) and all(len(v) == 1 for v in web.values())
    assert web["k1"][0]["reason"] == "error"
    assert web["k1"][0]["detail"] == "pixels: MemoryError: no room for this one"
    assert web["k4"][0]["detail"] == "decide: ValueError: cannot decide k4\x1b]0;title\x07\x1b[2J"
    assert not [
        d
        for d in pq.read_table(out / "decisions").to_pylist()
        if d["image_key"] == "k4" and d["text_origin"] == "synthetic"
    ]
    manifest = result.manifest
    assert manifest["counts"]["error"] == 2 == manifest["errors"]["count"]
    assert {e["key"] for e in manifest["errors"]["examples"]} == {"k1", "k4"}
    strict = CliRunner().invoke(
        main,
        _cli_run(str(tmp_path / "in.parquet"), "--out", str(tmp_path / "strict"), "--captioner",
                 str(tiny_captioner_dir), "--filter", str(tiny_filter_dir), "--max-error-rate", "0.1"),
    )  # fmt: skip
    assert strict.exit_code == 3 and "--max-error-rate" in strict.stderr
    assert "errors: 2 rows" in strict.stdout and (tmp_path / "strict" / "manifest.json").exists()
    # the error's text comes from the data: printed escaped, never as control sequences
    assert "\x1b" not in strict.stdout and "\x07" not in strict.stdout
    assert "cannot decide k4\\x1b]0;title\\x07\\x1b[2J" in strict.stdout


def _guarded_stages() -> list[tuple[str, str, str]]:
    """``(module, class, method)`` of every per-element stage: the guarded DoFns' ``apply``
    (``parts`` where a stage emits a row group in parts) and the model handlers' ``infer``."""
    return [
        ("pipelines.read", "ReadPairsFn", "parts"),
        ("pipelines.screen", "ScreenFn", "apply"),
        ("pipelines.screen", "FirstKeyWinsFn", "apply"),
        ("pipelines.copies", "BuildGroupFn", "apply"),
        ("pipelines.read", "FetchImagesFn", "parts"),
        ("pipelines.inference", "PreparePixelsFn", "apply"),
        ("pipelines.inference", "CaptionHandler", "infer"),
        ("pipelines.inference", "ScoreHandler", "infer"),
        ("pipelines.decide", "DecideFn", "apply"),
    ]


@pytest.mark.parametrize(("module", "name", "method"), _guarded_stages())
def test_every_stage_turns_a_failure_into_error_decisions(
    module: str, name: str, method: str, tmp_path: Path, tiny_captioner_dir, tiny_filter_dir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A fault in any stage on the element holding row ``k2``: the run finishes, every row
    has one web decision, ``k2``'s is ``error`` naming the stage, and untouched rows are
    decided as usual."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    original = getattr(cls, method)

    def holds_k2(fn, element) -> bool:  # noqa: ANN001
        if name == "ReadPairsFn":  # keys are unknown before reading: the one row group fails
            return True
        if method == "infer":
            return any(item.group.key == "k2" for item in element)
        return any(pair.key == "k2" for pair, _ in fn.rows_of(element))

    def failing(self, element, *args, **kw):  # noqa: ANN001, ANN202
        if holds_k2(self, element):
            raise RuntimeError("injected fault")
        return original(self, element, *args, **kw)

    monkeypatch.setattr(cls, method, failing)
    images = {f"k{i}": jpeg_bytes(gradient(64, 48, seed=i)) for i in range(5)}
    write_pairs_parquet(
        tmp_path / "in.parquet",
        [{"key": k, "image": v, "text": f"t {k}"} for k, v in images.items()],
    )
    out = tmp_path / "out"
    result = run_pipeline(
        _config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir, max_error_rate=1)
    )
    web = _web(out)
    assert len(web) == len(images) and all(len(v) == 1 for v in web.values())
    detail = f"{cls.stage.value}: RuntimeError: injected fault"
    if name == "ReadPairsFn":  # the derived keys say why
        detail += f"; {UNREAD_KEY}"
    errors = {k for k, v in web.items() if v[0]["reason"] == "error"}
    assert all(web[k][0]["detail"] == detail for k in errors)
    assert result.manifest["counts"]["error"] == len(errors)
    if name == "ReadPairsFn":  # an unreadable row group: its rows under keys derived from
        assert len(errors) == len(images)  # file and row
    elif name == "FetchImagesFn":  # images are fetched per row group: all five rows here
        assert errors == set(images)
    else:
        assert errors == {"k2"}


@pytest.mark.parametrize(
    ("method", "stage"), [("pair_batches", "read"), ("image_batches", "fetch")]
)
def test_a_row_group_failing_part_way_keeps_the_decisions_of_its_first_batches(
    method: str, stage: str, tmp_path: Path, tiny_captioner_dir, tiny_filter_dir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Row groups are read and their images fetched two rows at a time here: a fault after
    the first batch leaves its rows decided as usual and gives the other rows ``error``."""
    from curation import reader

    monkeypatch.setattr(reader, "READ_BATCH_ROWS", 2)
    original = getattr(reader.ParquetInput, method)

    def failing(self, *args):  # noqa: ANN001, ANN202
        batches = original(self, *args)
        yield next(batches)
        raise RuntimeError("injected fault")

    monkeypatch.setattr(reader.ParquetInput, method, failing)
    rows = [{"key": f"k{i}", "image": jpeg_bytes(gradient(64, 48, seed=i)), "text": f"t {i}"}
            for i in range(6)]  # fmt: skip
    write_pairs_parquet(tmp_path / "in.parquet", rows)
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 1
    out = tmp_path / "out"
    run_pipeline(
        _config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir, max_error_rate=1)
    )
    web = _web(out)
    assert all(len(v) == 1 for v in web.values())
    errors = {k for k, v in web.items() if v[0]["reason"] == "error"}
    assert {k for k in web if k not in errors} == {"k0", "k1"}
    unread = {f"in_{row:06d}" for row in range(2, 6)}  # keys derived from file and row
    assert errors == (unread if stage == "read" else {"k2", "k3", "k4", "k5"})
    detail = f"{stage}: RuntimeError: injected fault"
    assert all(web[k][0]["detail"].startswith(detail) for k in errors)


def test_a_row_that_cannot_be_written_is_an_error_not_a_failed_shard(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are checked against the table schemas while deciding: a clean row whose
    passthrough value does not fit its column makes its group's rows ``error`` decisions,
    and every other row is written."""
    from dataclasses import replace

    import pipelines.decide

    decide = pipelines.decide.decide_group

    def unwritable(group, scores, **kw):  # noqa: ANN001, ANN202
        outcome = decide(group, scores, **kw)
        if group.key != "k2":
            return outcome
        return replace(outcome, clean=tuple({**row, "lang": 5} for row in outcome.clean))

    monkeypatch.setattr(pipelines.decide, "decide_group", unwritable)
    images = {f"k{i}": jpeg_bytes(gradient(64, 48, seed=i)) for i in range(4)}
    write_pairs_parquet(
        tmp_path / "in.parquet",
        [{"key": k, "image": v, "text": f"t {k}", "lang": "en"} for k, v in images.items()],
    )
    out = tmp_path / "out"
    run_pipeline(
        _config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir,
                threshold=0.0, max_error_rate=1, near_threshold=1.0, phash_distance=-1)
    )  # fmt: skip
    web = _web(out)
    assert web["k2"][0]["reason"] == "error"
    assert web["k2"][0]["detail"].startswith("decide: Arrow")
    clean = pq.read_table(out / "clean").to_pylist()
    assert sorted(r["key"] for r in clean) == ["k0", "k1", "k3"]
    assert {r["lang"] for r in clean} == {"en"}


def test_a_model_batch_that_fails_is_retried_in_halves(tiny_filter_dir) -> None:
    from curation.config import RunConfig
    from curation.grouping import build_group
    from curation.records import HashedPair, Pair
    from pipelines.inference import Failure, ModelInput, ScoreHandler

    class OneBadImage(ScoreHandler):
        calls: list[int] = []

        def infer(self, batch, model):  # noqa: ANN001, ANN202
            self.calls.append(len(batch))
            if any(item.group.key == "bad" for item in batch):
                raise RuntimeError("CUDA out of memory")
            return super().infer(batch, model)

    config = RunConfig(input=("x",), out="o", filter=str(tiny_filter_dir), device="cpu")
    handler = OneBadImage(config, batch_size=8)
    model = handler.load_model()
    pixels = np.zeros((32, 32, 3), np.uint8)
    batch = []
    for i in range(8):
        key = "bad" if i == 5 else f"k{i}"
        pair = Pair(key=key, source_file="f", source_row=i, image=None, text="a red circle")
        group = build_group([(HashedPair(pair, f"s{i}", 0, 32, 32), None, 1.0)])
        batch.append(ModelInput(group, None, pixels))
    results = list(handler.run_inference(batch, model))
    assert [r.example for r in results] == batch
    failed = [r.example.group.key for r in results if isinstance(r.inference, Failure)]
    assert failed == ["bad"] and "CUDA out of memory" in results[5].inference.detail
    assert results[5].inference.detail.startswith("score: RuntimeError")
    assert handler.calls == [8, 4, 4, 2, 1, 1, 2]  # halves down to the one bad image


def test_changed_weights_never_reuse_cached_outputs(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(
        tmp_path / "in.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "t"}]
    )
    out = tmp_path / "out"
    first = run_pipeline(_config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir))
    edited = Path(shutil.copytree(tiny_filter_dir, tmp_path / "filter-edited"))
    weights = bytearray((edited / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0x01  # same size, same header, other weights
    (edited / "model.safetensors").write_bytes(bytes(weights))
    again = run_pipeline(_config(tmp_path / "in.parquet", out, tiny_captioner_dir, edited))
    assert again.counters.get("images_cached", 0) == 0 and again.counters["images_scored"] == 1
    before, after = first.manifest["models"]["filter"], again.manifest["models"]["filter"]
    assert (
        before["sha256"] != after["sha256"] and again.manifest["cache"] != first.manifest["cache"]
    )
    rerun = run_pipeline(_config(tmp_path / "in.parquet", out, tiny_captioner_dir, edited))
    assert rerun.counters["images_cached"] == 1  # the same weights again: reused


def test_an_unreadable_cache_file_is_set_aside_and_recomputed(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    write_pairs_parquet(
        tmp_path / "in.parquet", [{"image": jpeg_bytes(photo("coffee")), "text": "t"}]
    )
    out = tmp_path / "out"
    run_pipeline(_config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir))
    [cache_file] = [p for p in (out / "_cache").glob("*/part-*.parquet")]
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # a truncated upload
    import io

    stream = io.StringIO()
    result = run_pipeline(
        _config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir), stream
    )
    assert "is unreadable" in stream.getvalue() and cache_file.name in stream.getvalue()
    assert result.counters["images_scored"] == 1
    assert list((cache_file.parent / "_bad").iterdir())


def test_inspect_and_run_agree_on_every_pre_model_reason(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    good = [jpeg_bytes(gradient(90, 70, seed=s)) for s in range(3)]
    import io

    from PIL import Image

    pcx = io.BytesIO()
    Image.new("RGB", (40, 40)).save(pcx, "PCX")
    rows = [
        {"key": "ok", "image": good[0], "text": "fine"},
        {"key": "small", "image": png_bytes(gradient(30, 30)), "text": "small"},  # < min_side 40
        {"key": "big", "image": jpeg_bytes(gradient(200, 200)), "text": "big"},  # > max_pixels
        {"key": "bomb", "image": bomb_png(), "text": "bomb"},
        {"key": "cut", "image": truncated(good[1]), "text": "cut"},
        {"key": "junk", "image": b"\x00" * 100, "text": "junk"},
        {"key": "pcx", "image": pcx.getvalue(), "text": "pcx"},
        {"key": "none", "image": None, "text": "none"},
        {"key": "ok", "image": good[2], "text": "repeated key"},
        {"key": "blank", "image": good[2], "text": "  "},
    ]
    write_pairs_parquet(tmp_path / "in.parquet", rows)
    settings = dict(min_side=40, max_pixels=20_000)
    report = inspect_input(
        InputSettings(input=(str(tmp_path / "in.parquet"),), **settings), progress=False
    )
    out = tmp_path / "out"
    run_pipeline(
        _config(tmp_path / "in.parquet", out, tiny_captioner_dir, tiny_filter_dir, **settings)
    )
    counts = read_manifest(out)["counts"]
    for reason, n in report.counts.items():
        if reason != "ok":
            assert counts[reason] == n, reason
    assert report.counts["too_small"] == 1 and report.counts["too_large"] == 2
    assert report.counts["unsupported_format"] == 1 and report.counts["duplicate_key"] == 1


def test_ctrl_c_prints_one_line_and_exits_130(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    rows = [
        {"key": f"g{i}", "image": jpeg_bytes(gradient(96, 80, seed=i)), "text": "x"}
        for i in range(80)
    ]
    write_pairs_parquet(tmp_path / "in.parquet", rows, row_group_size=4)
    args = [sys.executable, "-m", "app.cli", *_cli_run(str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o"),
            "--captioner", str(tiny_captioner_dir), "--filter", str(tiny_filter_dir), "--batch-size", "1")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "o" / "_lock.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; re-run the same command to resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "o" / "_lock.json").exists()


def test_a_run_over_mutated_and_random_images_decides_every_row_once(
    tmp_path: Path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    """Fuzzing through the whole run: mutations of every web format (cuts, extreme header
    fields, flipped bits, reordered units) and random bytes; no row fails the job."""
    import random

    from images import format_samples
    from mutations import cut_points, extremes, flip_bits, layout, reorder, set_field

    rng = random.Random(20261130)
    rows = []
    for name, data in sorted(format_samples(64, 48).items()):
        shape = layout(data)
        variants = [data[: rng.choice(cut_points(data))]]
        if shape.fields:
            target = rng.choice(shape.fields)
            variants.append(set_field(data, target, rng.choice(extremes(target.width))))
        variants.append(flip_bits(data, [rng.randrange(len(data) * 8) for _ in range(8)]))
        if len(shape.units) > 1:
            order = list(range(len(shape.units)))
            rng.shuffle(order)
            variants.append(reorder(data, order))
        rows += [
            {"key": f"{name}-{i}", "image": v, "text": f"a {name}"} for i, v in enumerate(variants)
        ]
    rows += [
        {"key": f"random-{i}", "image": rng.randbytes(rng.randrange(1, 4000)), "text": "x"}
        for i in range(10)
    ]
    write_pairs_parquet(tmp_path / "fuzz.parquet", rows, row_group_size=16)
    out = tmp_path / "out"
    result = run_pipeline(
        _config(tmp_path / "fuzz.parquet", out, tiny_captioner_dir, tiny_filter_dir)
    )
    web = _web(out)
    assert sorted(web) == sorted(r["key"] for r in rows)
    assert all(len(decisions) == 1 for decisions in web.values())
    assert result.manifest["counts"]["error"] == 0  # every bad image is a decoder decision
    assert sum(result.manifest["counts"].values()) == result.manifest["tables"]["decisions"]["rows"]
    report = inspect_input(InputSettings(input=(str(tmp_path / "fuzz.parquet"),)), progress=False)
    assert report.rows == len(rows) == sum(report.counts.values())  # the dry run finishes too
