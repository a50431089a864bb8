"""Detached runs: the job commits its own result and releases the run folder, so the command
that submitted it can leave (Dataflow, Flex Templates)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from images import gradient, jpeg_bytes, write_pairs_parquet

from app.cli import main
from curation.config import build_config
from curation.run_folder import LOCK, RunFolder
from pipelines.runner import run_pipeline

PORTABLE = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("detached") / "in.parquet"
    rows = [
        {"key": f"k{i}", "image": jpeg_bytes(gradient(64, 48, seed=i)), "text": f"text {i}"}
        for i in range(6)
    ]
    rows.append({"key": "copy", "image": rows[0]["image"], "text": "a copy"})
    write_pairs_parquet(path, rows)
    return path


def _config(pairs: Path, out: Path, captioner: Path, filt: Path, **extra):
    return build_config(
        input=(str(pairs),), out=str(out), captioner=str(captioner), filter=str(filt),
        captions_per_image=2, batch_size=2, threshold=0.3, progress=False, **extra,
    )  # fmt: skip


def _outcome(manifest: dict) -> dict:
    """What a run decided, without what differs from one run to the next."""
    return {
        "counts": manifest["counts"],
        "texts": manifest["texts"],
        "duplicates": manifest["duplicates"],
        "rows": {name: table["rows"] for name, table in manifest["tables"].items()},
        "images": manifest["images"],
        "index": manifest["index"]["count"],
    }


@pytest.fixture(scope="module")
def attached(pairs, tmp_path_factory, tiny_captioner_dir, tiny_filter_dir) -> dict:
    out = tmp_path_factory.mktemp("attached") / "run"
    return run_pipeline(_config(pairs, out, tiny_captioner_dir, tiny_filter_dir)).manifest


def test_a_detached_run_commits_itself_like_an_attached_run(
    pairs, attached, tmp_path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    out = tmp_path / "run"
    result = run_pipeline(_config(pairs, out, tiny_captioner_dir, tiny_filter_dir, detach=True))
    assert not result.submitted  # the local runner ran the job to its end
    manifest = json.loads((out / "manifest.json").read_text())
    assert _outcome(manifest) == _outcome(attached)
    assert manifest["images"]["scored"] == 6  # counted by the job, not by this process
    assert manifest["pipeline"] is None  # the job's counters stay with the runner
    assert not (out / LOCK).exists()  # the job released the run folder
    assert [h["command"] for h in manifest["history"]] == ["run"]


def test_a_detached_job_on_the_portable_runner_commits_after_the_command_returned(
    pairs, attached, tmp_path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    out = tmp_path / "run"
    config = _config(
        pairs, out, tiny_captioner_dir, tiny_filter_dir, detach=True, beam_args=PORTABLE
    )
    result = run_pipeline(config)
    deadline = time.monotonic() + 600
    while not (out / "manifest.json").exists() or (out / LOCK).exists():
        assert time.monotonic() < deadline, "the detached job did not commit"
        time.sleep(0.5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert _outcome(manifest) == _outcome(attached)
    assert manifest["runner"] == "PortableRunner"
    assert result.submitted or result.manifest == manifest
    again = run_pipeline(_config(pairs, out, tiny_captioner_dir, tiny_filter_dir))
    assert again.manifest["images"] == {**manifest["images"], "scored": 0, "cached": 6}


def test_a_detached_lock_is_held_until_its_job_releases_it(
    pairs, tmp_path, tiny_captioner_dir, tiny_filter_dir
) -> None:
    out = tmp_path / "run"
    lock = RunFolder.at(str(out)).lock("run")
    lock.acquire(detached=True)
    record = json.loads((out / LOCK).read_text())
    # the submitting process has left and no heartbeat was ever refreshed: still held
    (out / LOCK).write_text(json.dumps({**record, "pid": 2**22 + 7, "heartbeat": 0}))
    args = [
        "run", str(pairs), "--out", str(out), "--captioner", str(tiny_captioner_dir),
        "--filter", str(tiny_filter_dir), "--no-progress",
    ]  # fmt: skip
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2
    assert "detached job" in refused.output and "failed or was cancelled" in refused.output
    RunFolder.at(str(out)).release_lock(lock.token)  # what the job's last step does
    assert CliRunner().invoke(main, args).exit_code == 0


def test_run_help_documents_detach() -> None:
    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "--detach" in text and "the job commits its own result" in text
