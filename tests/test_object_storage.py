"""Runs whose inputs and outputs live on object storage (an S3 server on loopback), and a run
on Beam's portable runner that reaches its data through the storage layer only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import jpeg_bytes, photo, write_pairs_parquet

from app.cli import main
from curation.config import build_config
from curation.run_folder import RunFolder
from pipelines.runner import run_pipeline

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]


def _upload(local: Path, url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.put_file(str(local), path)


def _read(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def _table(run_url: str, name: str):
    run = RunFolder.at(run_url)
    files = run.table_files(name)
    tables = [_read(f.url) for f in files]
    return tables[0] if len(tables) == 1 else __import__("pyarrow").concat_tables(tables)


def _decisions(run_url: str) -> list[tuple]:
    rows = _table(run_url, "decisions").to_pylist()
    return sorted(
        (r["key"], r["text_origin"], r["caption_index"], r["text"], r["reason"]) for r in rows
    )


@pytest.fixture(scope="module")
def s3_input(s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("s3in")
    rows = [
        {"key": name, "image": jpeg_bytes(photo(name)), "text": f"a photo of {name}"}
        for name in PHOTOS
    ]
    rows.append({"key": "copy", "image": rows[0]["image"], "text": "the same photo"})
    write_pairs_parquet(folder / "part-0.parquet", rows[:3])
    write_pairs_parquet(folder / "part-1.parquet", rows[3:])
    _upload(folder / "part-0.parquet", f"{s3_bucket}/input/part-0.parquet")
    _upload(folder / "part-1.parquet", f"{s3_bucket}/input/lang=de/part-1.parquet")  # Hive
    return f"{s3_bucket}/input"


def _config(input_url: str, out: str, captioner: Path, filter_: Path, **kw: object):
    return build_config(
        input=(input_url,), out=out, captioner=str(captioner), filter=str(filter_),
        captions_per_image=1, batch_size=2, **{"progress": False, **kw},
    )  # fmt: skip


@pytest.mark.slow
def test_run_resume_dedup_and_next_round_on_s3(
    s3_bucket, s3_input, tiny_captioner_dir, tiny_filter_dir, tmp_path
) -> None:
    out = f"{s3_bucket}/runs/r1"
    first = run_pipeline(_config(s3_input, out, tiny_captioner_dir, tiny_filter_dir))
    assert first.out_dir == out and first.rows == 5
    before = _decisions(out)
    web = [d for d in before if d[1] == "web"]
    assert sorted(d[0] for d in web) == sorted([*PHOTOS, "copy"])
    manifest = json.loads(fsspec.open(f"{out}/manifest.json").open().read())
    assert manifest["inputs"][0]["path"].startswith(f"{s3_bucket}/input/")
    assert manifest["images"]["scored"] == len(PHOTOS)
    # Plain pyarrow reads the documented table folder on S3 directly.
    fs, path = fsspec.core.url_to_fs(f"{out}/clean")
    clean = pq.read_table(path, filesystem=fs)
    assert clean.num_rows == first.manifest["tables"]["clean"]["rows"]
    assert clean.schema.field("lang").type == pa.string()  # from the Hive folder lang=de
    expected = {**dict.fromkeys(PHOTOS[:3]), "rocket": "de", "copy": "de"}
    assert all(expected[r["key"]] == r["lang"] for r in clean.select(["key", "lang"]).to_pylist())

    again = run_pipeline(_config(s3_input, out, tiny_captioner_dir, tiny_filter_dir))
    assert again.counters.get("images_scored", 0) == 0
    assert again.counters["images_cached"] == len(PHOTOS)
    assert _decisions(out) == before

    strict = CliRunner().invoke(main, ["dedup", out, "--near-threshold", "0.999"])
    assert strict.exit_code == 0, strict.output

    round2 = f"{s3_bucket}/runs/r2"
    run_pipeline(
        _config(
            s3_input, round2, tiny_captioner_dir, tiny_filter_dir,
            dedup_against=f"{out}/index", near_threshold=0.999,
        )
    )  # fmt: skip
    dups = {r["key"]: r for r in _table(round2, "duplicates").to_pylist()}
    previous_round = {k for k, r in dups.items() if r["kind"] == "previous-round"}
    assert previous_round  # the same images again: found in the previous round's index


@pytest.mark.slow
def test_portable_runner_gives_the_in_process_decisions(
    s3_bucket, s3_input, tiny_captioner_dir, tiny_filter_dir
) -> None:
    local = f"{s3_bucket}/runs/inproc"
    portable = f"{s3_bucket}/runs/portable"
    run_pipeline(_config(s3_input, local, tiny_captioner_dir, tiny_filter_dir))
    beam_args = (
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=LOOPBACK",
    )
    stream = io.StringIO()
    result = run_pipeline(
        _config(
            s3_input, portable, tiny_captioner_dir, tiny_filter_dir, beam_args=beam_args,
            progress=True,
        ),
        stream,
    )  # fmt: skip
    assert result.manifest["runner"] == "PortableRunner"
    assert _decisions(portable) == _decisions(local)
    # The live line polled the running job's metrics; the counts are the finished job's.
    assert "rows read" in stream.getvalue() or "job running" in stream.getvalue()
    assert result.counters["rows_read"] == 5
    assert result.manifest["pipeline"]["rows_read"] == 5


@pytest.mark.slow
def test_models_in_an_object_store_folder_load_through_the_storage_layer(
    s3_bucket, s3_input, tiny_captioner_dir, tiny_filter_dir, tmp_path, monkeypatch
) -> None:
    """Model folders on S3 give the decisions of the same folders on disk; the manifest
    names the URL with the folder's content digest; a missing one is refused before work."""
    import tempfile

    from models.loading import model_identity

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the local copies go

    urls = {}
    for name, folder in (("captioner", tiny_captioner_dir), ("filter", tiny_filter_dir)):
        urls[name] = f"{s3_bucket}/models/{name}"
        for file in folder.rglob("*"):
            if file.is_file():
                _upload(file, f"{urls[name]}/{file.relative_to(folder).as_posix()}")
    local = f"{s3_bucket}/runs/local-models"
    remote = f"{s3_bucket}/runs/s3-models"
    run_pipeline(_config(s3_input, local, tiny_captioner_dir, tiny_filter_dir))
    result = run_pipeline(_config(s3_input, remote, urls["captioner"], urls["filter"]))
    assert _decisions(remote) == _decisions(local)
    for name, folder in (("captioner", tiny_captioner_dir), ("filter", tiny_filter_dir)):
        identity = result.manifest["models"][name]
        assert identity["name"] == urls[name]
        assert identity["sha256"] == model_identity(str(folder))["sha256"]
    missing = CliRunner().invoke(
        main,
        ["run", s3_input, "--out", f"{s3_bucket}/runs/none", "--captioner",
         f"{s3_bucket}/models/nope", "--filter", urls["filter"], "--no-progress"],
    )  # fmt: skip
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert sorted(p.name.split("-", 2)[2] for p in tmp_path.glob("curation-*")) == [
        "captioner",
        "filter",
    ]  # one copy of each folder on this machine
    assert not fsspec.core.url_to_fs(f"{s3_bucket}/runs/none")[0].exists(
        f"{s3_bucket}/runs/none/manifest.json".split("://", 1)[1]
    )


def test_a_second_run_into_the_same_folder_is_refused(
    s3_bucket, s3_input, tiny_captioner_dir, tiny_filter_dir
) -> None:
    run = RunFolder.at(f"{s3_bucket}/runs/locked")
    lock = run.lock("run")
    lock.acquire()
    try:
        refused = CliRunner().invoke(
            main,
            ["run", s3_input, "--out", run.url, "--captioner", str(tiny_captioner_dir),
             "--filter", str(tiny_filter_dir), "--no-progress"],
        )  # fmt: skip
        assert refused.exit_code == 2 and "in use by another command" in refused.stderr
    finally:
        lock.release()
    assert not (run.root / "_lock.json").exists()


def test_run_on_google_cloud_storage_emulator(
    gcs_bucket, tiny_captioner_dir, tiny_filter_dir, tmp_path: Path
) -> None:
    rows = [{"key": n, "image": jpeg_bytes(photo(n)), "text": f"a {n}"} for n in PHOTOS[:2]]
    write_pairs_parquet(tmp_path / "in.parquet", rows)
    _upload(tmp_path / "in.parquet", f"{gcs_bucket}/in/in.parquet")
    out = f"{gcs_bucket}/runs/r1"
    result = run_pipeline(_config(f"{gcs_bucket}/in", out, tiny_captioner_dir, tiny_filter_dir))
    assert result.rows == 2
    assert sorted(d[0] for d in _decisions(out) if d[1] == "web") == sorted(PHOTOS[:2])


def test_a_lock_on_s3_whose_heartbeat_stopped_is_taken_over(s3_bucket) -> None:
    """Another machine's lock with a live heartbeat is respected; one whose heartbeat stopped
    (its command was killed) is taken over with a note, through S3's exclusive create."""
    import time

    from curation.run_folder import LOCK_STALE_SECONDS, RunLockedError

    run = RunFolder.at(f"{s3_bucket}/runs/stale-lock")
    held = {"token": "t", "command": "run", "host": "elsewhere", "pid": 1, "detached": False}
    lock_file = run.root / "_lock.json"
    lock_file.write_json(held | {"heartbeat": time.time()})
    with pytest.raises(RunLockedError, match="in use by another command"):
        run.lock("dedup").acquire()
    lock_file.write_json(held | {"heartbeat": time.time() - LOCK_STALE_SECONDS - 5})
    lock = run.lock("dedup")
    notes = lock.acquire()
    assert notes and "took over the lock of a killed command ('run'" in notes[0]
    assert lock_file.read_json()["token"] == lock.token
    lock.release()
    assert not lock_file.exists()


def test_finetune_reads_and_writes_object_storage(s3_bucket, tmp_path, monkeypatch) -> None:
    """Training pairs on S3 and ``--out`` on S3: the saved folder (weights, tokenizer,
    processor, model card) loads back from its URL."""
    import tempfile

    from curation.shapes import make_clean_split
    from models.loading import load_filter

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _upload(make_clean_split(32, 1, tmp_path / "clean.parquet"), f"{s3_bucket}/train/clean.parquet")
    out = f"{s3_bucket}/models/tuned-filter"
    result = CliRunner().invoke(
        main,
        ["finetune", "filter", "--train", f"{s3_bucket}/train/clean.parquet", "--out", out,
         "--base", "tiny", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fs, path = fsspec.core.url_to_fs(out)
    names = {name.rsplit("/", 1)[1] for name in fs.ls(path, detail=False)}
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= names
    assert "finetune filter" in fs.cat_file(f"{path}/README.md").decode()
    loaded = load_filter(out, device="cpu")
    assert loaded.name == out and loaded.image_size > 0
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith("curation-") and "tuned" not in p.name
    ]


def test_missing_credentials_are_one_line_and_exit_2(
    s3_input: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance to ask
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()  # a client made with the credentials
    try:
        result = CliRunner().invoke(main, ["inspect", s3_input])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: object storage refused the credentials")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_output_bucket_that_does_not_exist_is_refused_not_created(
    s3_input: str, tiny_captioner_dir: Path, tiny_filter_dir: Path
) -> None:
    args = ["run", s3_input, "--out", "s3://no-such-bucket-here/runs/r1", "--captioner",
            str(tiny_captioner_dir), "--filter", str(tiny_filter_dir), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "bucket 'no-such-bucket-here' does not exist" in result.stderr
    fs, _ = fsspec.core.url_to_fs("s3://no-such-bucket-here")
    fs.invalidate_cache()
    assert not fs.exists("no-such-bucket-here")
