"""The Dataflow Flex Template: its metadata.json (generated from the settings, with regexes
that agree with the settings' checks), the translation of a launch's arguments into
`curation run`, and a launch with the Dataflow runner that writes the job's description
(against a Cloud Storage emulator; nothing reaches Google)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fsspec
import pytest
from apache_beam.portability.api import beam_runner_api_pb2
from click.testing import CliRunner
from images import gradient, jpeg_bytes, write_pairs_parquet

from app.cli import main
from app.template import metadata, parameters, run_arguments
from curation.config import build_config
from curation.run_folder import LOCK

ROOT = Path(__file__).resolve().parent.parent
METADATA = ROOT / "docker" / "flex" / "metadata.json"


def _regexes() -> dict[str, str]:
    return {p["name"]: p["regexes"][0] for p in metadata()["parameters"]}


def test_the_committed_metadata_is_the_generated_one() -> None:
    assert json.loads(METADATA.read_text()) == metadata(), (
        "regenerate: python -m app.template > docker/flex/metadata.json"
    )


def test_every_setting_but_the_engine_ones_is_a_parameter_with_a_regex() -> None:
    names = [p["name"] for p in metadata()["parameters"]]
    assert names[0] == "config" and set(names[1:]) == set(parameters())
    assert {"input", "out", "threshold", "captions_per_image", "dedup_against"} <= set(names)
    assert not {"workers", "progress", "detach", "beam_args"} & set(names)
    required = {p["name"] for p in metadata()["parameters"] if not p["isOptional"]}
    assert required == {"input", "out"}


def test_regexes_accept_the_defaults_and_refuse_what_the_settings_refuse() -> None:
    regexes = _regexes()
    for name, field in parameters().items():
        default = field.default
        if default in (None, "", ()):
            continue
        value = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        value = value.lower() if isinstance(default, bool) else value
        assert re.fullmatch(regexes[name], value), (name, value)
    refused = {
        "input": ["data/*.parquet", "/mnt/shards", "gs://b/a,/local/b"],
        "out": ["runs/r1", "/tmp/run", "gs://b/run,gs://b/other"],
        "dedup_against": ["index/"],
        "sample": ["yes", "1"],
        "captions_per_image": ["3.0", "three"],
        "threshold": ["half", "0,5"],
        "first_token": ["sep"],
        "dtype": ["fp8"],
        "device": ["gpu", "cuda:x"],
        "config": ["gs://b/run.json", "run.yaml"],
    }
    for name, values in refused.items():
        for value in values:
            assert not re.fullmatch(regexes[name], value), (name, value)


def test_a_launch_s_arguments_become_curation_run_flags_and_beam_options() -> None:
    args = run_arguments(
        [
            "--input=gs://b/shards/,gs://b/more/*.parquet",
            "--out=gs://b/runs/r1",
            "--captions_per_image=3",
            "--sample=false",
            "--allow_pickle=true",
            "--drop_columns=url,width",
            "--config=gs://b/run.yaml",
            "--project=p",
            "--region=us-central1",
            "--temp_location=gs://b/tmp",
        ]
    )
    assert args == [
        "run", "gs://b/shards/", "gs://b/more/*.parquet",
        "--out", "gs://b/runs/r1", "--captions-per-image", "3", "--no-sample", "--allow-pickle",
        "--drop-column", "url", "--drop-column", "width", "--config", "gs://b/run.yaml",
        "--beam-arg=--runner=DataflowRunner", "--beam-arg=--project=p",
        "--beam-arg=--region=us-central1", "--beam-arg=--temp_location=gs://b/tmp",
        "--detach", "--no-progress",
    ]  # fmt: skip
    # every parameter's flag exists on `curation run` and its default value is accepted
    for name, field in parameters().items():
        default = field.default
        if default in (None, "", ()) or name in ("input", "out"):
            continue
        value = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        launch = run_arguments([f"--{name}={value}", "--input=gs://b/x", "--out=gs://b/run"])
        flags = launch[1:-4]
        assert all(not f.startswith("--beam-arg") for f in flags), name
        assert build_config(input=("gs://b/x",), out="gs://b/run", **{name: default})


@pytest.fixture
def staged_input(gcs_bucket: str, tmp_path: Path) -> str:
    local = tmp_path / "in.parquet"
    rows = [
        {"key": f"k{i}", "image": jpeg_bytes(gradient(48, 40, seed=i)), "text": f"text {i}"}
        for i in range(3)
    ]
    write_pairs_parquet(local, rows)
    url = f"{gcs_bucket}/template/in/in.parquet"
    fs, path = fsspec.core.url_to_fs(url)
    fs.put_file(str(local), path)
    return url


@pytest.mark.slow
def test_a_template_launch_describes_one_job_that_commits_itself(
    gcs_bucket, staged_input, tiny_captioner_dir, tiny_filter_dir, tmp_path
) -> None:
    """What Dataflow's launcher does: run launch.py's arguments with ``--template_location``,
    which makes the Dataflow runner write the job's description instead of submitting it."""
    job_file = tmp_path / "job.json"
    out = f"{gcs_bucket}/template/runs/r1"
    argv = [
        f"--input={staged_input}", f"--out={out}", f"--captioner={tiny_captioner_dir}",
        f"--filter={tiny_filter_dir}", "--captions_per_image=2", "--project=test-project",
        "--region=us-central1", f"--temp_location={gcs_bucket}/tmp",
        f"--template_location={job_file}", "--sdk_container_image=example.com/worker:1",
        "--sdk_location=container",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    ]  # fmt: skip
    result = CliRunner().invoke(main, run_arguments(argv))
    assert result.exit_code == 0, result.output
    assert f"it commits into {out}" in result.output
    assert json.loads(job_file.read_text())["type"] == "JOB_TYPE_BATCH"
    fs, staged = fsspec.core.url_to_fs(f"{gcs_bucket}/tmp")
    graphs = [p for p in fs.find(staged) if p.endswith("/pipeline.pb")]
    assert len(graphs) == 1
    pipeline = beam_runner_api_pb2.Pipeline.FromString(fs.cat_file(graphs[0]))
    steps = {t.unique_name for t in pipeline.components.transforms.values()}
    for step in ("Models", "Stage/CommitStage", "Finalize", "Publish"):
        assert step in steps, step  # one job: from the models to the manifest
    fs, path = fsspec.core.url_to_fs(f"{out}/{LOCK}")
    holder = json.loads(fs.cat_file(path))
    assert holder["detached"] and holder["command"] == "run"  # released by the job's end
    assert not fs.exists(f"{path.rsplit('/', 1)[0]}/manifest.json")
