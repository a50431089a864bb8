"""Real img2dataset output (downloaded from a local HTTP server) through inspect and run."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import jpeg_bytes, photo

from app.cli import main

PHOTOS = ["astronaut", "coffee", "chelsea"]


@pytest.fixture(scope="module")
def img2dataset_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """img2dataset's parquet output for three served photos and one broken URL."""
    root = tmp_path_factory.mktemp("img2dataset")
    www = root / "www"
    www.mkdir()
    for name in PHOTOS:
        (www / f"{name}.jpg").write_bytes(jpeg_bytes(photo(name)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{name}.jpg" for name in PHOTOS] + [f"{base}/missing.jpg"]
    captions = [f"a photo of {name}" for name in PHOTOS] + ["a lost picture"]
    pq.write_table(pa.table({"url": urls, "caption": captions}), root / "urls.parquet")
    options = {
        "url_list": str(root / "urls.parquet"),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption",
        "output_format": "parquet",
        "output_folder": str(root / "out"),
        "processes_count": 1,
        "thread_count": 2,
        "image_size": 128,
    }
    script = (
        "import json, sys; from img2dataset import download; download(**json.loads(sys.argv[1]))"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    try:
        subprocess.run(
            [sys.executable, "-c", script, json.dumps(options)],
            check=True,
            capture_output=True,
            timeout=180,
            env=env,
        )
    finally:
        server.shutdown()
    return root / "out"


def test_inspect_counts_failed_downloads(img2dataset_parquet: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(img2dataset_parquet), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["layout"]["kind"] == "img2dataset"
    assert (
        report["rows"] == 4
        and report["counts"]["ok"] == 3
        and report["counts"]["download_failed"] == 1
    )


def test_run_records_failed_downloads_and_keeps_img2dataset_columns(
    img2dataset_parquet: Path, tiny_captioner_dir: Path, tiny_filter_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        str(img2dataset_parquet),
        "--out",
        str(out),
        "--captioner",
        str(tiny_captioner_dir),
    ]
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--filter",
            str(tiny_filter_dir),
            "--threshold",
            "0",
            "--near-threshold",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    web = [d for d in pq.read_table(out / "decisions").to_pylist() if d["text_origin"] == "web"]
    assert len(web) == 4
    failed = [d for d in web if d["reason"] == "download_failed"]
    assert (
        len(failed) == 1 and "404" in failed[0]["detail"] and failed[0]["text"] == "a lost picture"
    )
    clean = pq.read_table(out / "clean")
    assert sorted(clean.column("text").to_pylist()) == sorted(f"a photo of {n}" for n in PHOTOS)
    assert {"url", "original_width", "exif"} <= set(clean.column_names)  # passthrough columns
