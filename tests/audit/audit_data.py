"""The hostile dataset of the audit tests, and what its two runs are.

The dataset has real photos, exact and perceptual copies, images that are near duplicates
for the filter, rows rejected before the models, and script-injection payloads in texts,
keys and an input file name. Run A keeps every scored text (threshold 0); run B uses the
median ITM of run A as its threshold, so the two runs differ in known ways. Both runs
then redo near-duplicate removal with a threshold just below the most similar pair of
distinct images, so that near duplicates exist whatever the random filter's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from images import gradient, jpeg_bytes, photo
from PIL import Image

#: Payloads that would run script, add an element, restyle the page or load a remote
#: resource if they reached the page unescaped.
PAYLOAD_TEXTS = (
    '<script>window.__pwned = "text"</script>',
    '"><img src=x onerror="window.__pwned=\'attribute\'">',
    '<div id="injected">injected element</div>',
    "</textarea><svg onload=window.__pwned='svg'>",
    "<style>body{display:none}</style>",
    "<iframe src=\"https://example.com/\"></iframe><img src='https://example.com/x.png'>",
    "<meta http-equiv=refresh content='0;url=https://example.com/'>",
)
PAYLOAD_KEY = "<img src=x onerror=window.__pwned='key'>"
PAYLOAD_FILE = "evil\"><img src=x onerror=window.__pwned='file'>.parquet"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
BAD_ROWS = 10  # undecodable rows of the payload-named file


@dataclass(frozen=True)
class AuditRuns:
    """Run folders and what the dataset holds."""

    a: Path
    b: Path
    inputs: tuple[Path, Path]
    threshold_b: float
    near_threshold: float


def main_rows() -> list[dict]:
    rows = [
        {"key": f"p{i}", "image": jpeg_bytes(photo(name)), "text": f"a photo of {name}"}
        for i, name in enumerate(PHOTOS)
    ]
    astronaut = photo("astronaut")
    half = Image.fromarray(astronaut).resize((256, 256), Image.BICUBIC)
    rows += [
        {"key": "copy_exact", "image": rows[0]["image"], "text": "an astronaut in a suit"},
        {"key": "copy_resized", "image": jpeg_bytes(np.asarray(half), quality=60),
         "text": "astronaut portrait"},
        {"key": "no_image", "image": None, "text": "where is it"},
        {"key": "no_text", "image": jpeg_bytes(gradient(64, 48, seed=3)), "text": "  "},
    ]  # fmt: skip
    for i in range(6):
        rows.append(
            {
                "key": f"g{i}",
                "image": jpeg_bytes(gradient(96, 80, seed=10 + i)),
                "text": PAYLOAD_TEXTS[i % len(PAYLOAD_TEXTS)] if i % 2 else f"a gradient {i}",
            }
        )
    rows.append(
        {"key": "p_payload", "image": jpeg_bytes(gradient(80, 96, seed=40)),
         "text": PAYLOAD_TEXTS[-1]}
    )  # fmt: skip
    return rows


def payload_rows() -> list[dict]:
    rows = [
        {
            "key": PAYLOAD_KEY,
            "image": jpeg_bytes(gradient(72, 72, seed=50)),
            "text": PAYLOAD_TEXTS[0],
        }
    ]
    rows += [
        {"key": f"bad{i}", "image": b"not an image " + bytes([i]), "text": PAYLOAD_TEXTS[i % 7]}
        for i in range(BAD_ROWS)
    ]
    return rows


def decision(
    key: str,
    reason: str,
    *,
    origin: str = "web",
    itm: float | None = None,
    source: str = "a.parquet",
    row: int = 0,
    image_key: str | None = None,
    caption_index: int | None = None,
    threshold: float = 0.5,
    text: str = "a text",
) -> dict:
    """One row of a decisions table (``curation.schemas.DECISIONS_SCHEMA``)."""
    return {
        "run_id": "test",
        "key": key,
        "source_file": source,
        "source_row": row,
        "image_key": image_key if image_key is not None else (key if itm is not None else None),
        "text_origin": origin,
        "caption_index": caption_index,
        "text": text,
        "itm": itm,
        "itc": None if itm is None else itm / 2,
        "decision": "kept" if reason == "kept" else "dropped",
        "reason": reason,
        "detail": None,
        "threshold": threshold,
    }


def write_run(folder: Path, decisions: list[dict], duplicates: list[dict] = ()) -> Path:
    """A run folder holding only decisions/ and duplicates/ tables, in several shards, and a
    manifest that lists them (and nothing else)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.schemas import DECISIONS_SCHEMA, DUPLICATES_SCHEMA

    tables = {}
    for name, rows, schema in (
        ("decisions", decisions, DECISIONS_SCHEMA),
        ("duplicates", list(duplicates), DUPLICATES_SCHEMA),
    ):
        (folder / name).mkdir(parents=True)
        half = len(rows) // 2
        files = []
        for index, part in enumerate((rows[:half], rows[half:])):
            table = pa.Table.from_pylist(part, schema=schema)
            pq.write_table(table, folder / name / f"part-{index:05d}.parquet")
            files.append(f"{name}/part-{index:05d}.parquet")
        tables[name] = {"files": files, "rows": len(rows)}
    (folder / "manifest.json").write_text(json.dumps({"tables": tables}))
    return folder


def damaged_copy(run: Path, folder: Path, table: str, damage: str = "missing") -> tuple[Path, str]:
    """A copy of ``run`` whose first ``table`` file listed in its manifest is deleted
    (``missing``), cut to 10 bytes (``truncated``) or has its pages scrambled (``pages``); the
    copy and that file's name in the manifest."""
    import json
    import shutil

    from runs import corrupt_pages

    copy = folder / "damaged"
    shutil.copytree(run, copy)
    name = json.loads((copy / "manifest.json").read_text())["tables"][table]["files"][0]
    if damage == "truncated":
        (copy / name).write_bytes((copy / name).read_bytes()[:10])
    elif damage == "pages":
        corrupt_pages(copy / name)
    else:
        (copy / name).unlink()
    return copy, name


def assert_refused_damaged(result: Any, run: Path, name: str, table: str, damage: str) -> None:
    """``result`` of a command on a :func:`damaged_copy`: exit 2, one line naming the file."""
    problem = {
        "missing": f"is incomplete: manifest.json lists {name}, which is missing "
        f"(1 of 1 {table} files)",
        "truncated": f"is damaged: {name} is not readable Parquet",
        "pages": f"is damaged: {name} cannot be read",
    }[damage]
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: run folder {run} {problem}")
    assert result.stderr.count("\n") == 1
