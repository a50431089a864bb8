"""Dedup inside ``curation run`` and ``curation dedup``: copies, previous rounds, the index."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import jpeg_bytes, photo, write_pairs_parquet
from PIL import Image
from runs import index_files, stage_table

from app.cli import main
from curation.config import build_config
from pipelines.runner import run_pipeline

ORIGINALS = ["astronaut", "coffee", "chelsea", "rocket"]


def _copies_dataset(path: Path) -> None:
    astronaut = photo("astronaut")
    h, w = astronaut.shape[:2]
    resized = np.asarray(Image.fromarray(astronaut).resize((w // 2, h // 2), Image.BICUBIC))
    cropped = astronaut[h * 15 // 1000 : h * 985 // 1000, w * 15 // 1000 : w * 985 // 1000]
    rows = [
        {"key": name, "image": jpeg_bytes(photo(name)), "text": f"a photo of {name}"}
        for name in ORIGINALS
    ]
    rows += [
        {"key": "copy_exact", "image": rows[0]["image"], "text": "an astronaut in a suit"},
        {"key": "copy_resized", "image": jpeg_bytes(resized), "text": "astronaut portrait"},
        {
            "key": "copy_recompressed",
            "image": jpeg_bytes(astronaut, quality=40),
            "text": "nasa astronaut",
        },
        {"key": "copy_cropped", "image": jpeg_bytes(cropped), "text": "woman astronaut"},
    ]
    write_pairs_parquet(path, rows, row_group_size=3)


def _run(data: Path, out: Path, captioner: Path, filter_: Path, **kw: object):
    config = build_config(
        input=str(data), out=str(out), captioner=str(captioner), filter=str(filter_),
        captions_per_image=1, batch_size=2, threshold=0.0, progress=False, **kw,
    )  # fmt: skip
    return run_pipeline(config)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_captioner_dir, distinct_filter_dir) -> Path:
    folder = tmp_path_factory.mktemp("dedup")
    data = folder / "round1.parquet"
    _copies_dataset(data)
    out = folder / "round1"
    _run(data, out, tiny_captioner_dir, distinct_filter_dir)
    return out


def test_copies_grouped_with_their_original_and_not_recomputed(first_run: Path) -> None:
    manifest = json.loads((first_run / "manifest.json").read_text())
    assert manifest["images"]["scored"] == len(ORIGINALS)  # one model pass per unique image
    dups = {r["key"]: r for r in pq.read_table(first_run / "duplicates").to_pylist()}
    assert dups["copy_exact"]["kind"] == "exact"
    for key in ("copy_resized", "copy_recompressed", "copy_cropped"):
        assert dups[key]["kind"] == "perceptual" and dups[key]["dup_of"] == "astronaut"
    assert not set(ORIGINALS) & set(dups)  # distinct photos are not grouped
    decisions = {
        d["key"]: d
        for d in pq.read_table(first_run / "decisions").to_pylist()
        if d["text_origin"] == "web"
    }
    for key in ("copy_exact", "copy_resized", "copy_recompressed", "copy_cropped"):
        assert decisions[key]["image_key"] == "astronaut" and decisions[key]["decision"] == "kept"
    clean = pq.read_table(first_run / "clean").to_pylist()
    assert len(clean) == 8 and {r["image_key"] for r in clean} == set(ORIGINALS)


def test_index_maps_back_to_keys(first_run: Path) -> None:
    index_file, ids_file = index_files(first_run)
    index = faiss.read_index(str(index_file))
    ids = {r["id"]: r["key"] for r in pq.read_table(ids_file).to_pylist()}
    assert sorted(ids.values()) == sorted(ORIGINALS) and index.ntotal == len(ORIGINALS)
    images = stage_table(first_run, "images").to_pylist()
    for row in images:
        _, found = index.search(np.asarray([row["embedding"]], dtype=np.float32), 1)
        assert ids[int(found[0, 0])] == row["key"]


def test_second_round_drops_images_seen_before(
    first_run, tiny_captioner_dir, distinct_filter_dir, tmp_path
) -> None:
    rows = [
        {"key": "again_coffee", "image": jpeg_bytes(photo("coffee")), "text": "coffee again"},
        {"key": "again_rocket", "image": jpeg_bytes(photo("rocket")), "text": "rocket again"},
        {"key": "new_camera", "image": jpeg_bytes(photo("camera")), "text": "a cameraman"},
        {
            "key": "new_horse",
            "image": jpeg_bytes(photo("horse")),
            "text": "horse",
        },
    ]
    data = tmp_path / "round2.parquet"
    write_pairs_parquet(data, rows)
    out = tmp_path / "round2"
    _run(data, out, tiny_captioner_dir, distinct_filter_dir, dedup_against=str(first_run / "index"))
    dups = {r["key"]: r for r in pq.read_table(out / "duplicates").to_pylist()}
    assert (
        dups["again_coffee"]["kind"] == "previous-round"
        and dups["again_coffee"]["dup_of"] == "coffee"
    )
    assert dups["again_rocket"]["dup_of"] == "rocket"
    assert "new_camera" not in dups and "new_horse" not in dups
    clean = sorted(pq.read_table(out / "clean").column("key").to_pylist())
    assert clean == ["new_camera", "new_horse"]
    decisions = {
        d["key"]: d
        for d in pq.read_table(out / "decisions").to_pylist()
        if d["text_origin"] == "web"
    }
    assert decisions["again_coffee"]["reason"] == "duplicate"
    ids = pq.read_table(index_files(out)[1]).to_pylist()
    previous = pq.read_table(index_files(first_run)[1]).to_pylist()
    assert {(r["id"], r["key"]) for r in previous} <= {
        (r["id"], r["key"]) for r in ids
    }  # stable ids
    assert {r["key"] for r in ids} == set(ORIGINALS) | {"new_camera", "new_horse"}


def test_dedup_command_reruns_near_duplicates_without_models(
    first_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    clean_before = pq.read_table(run / "clean").num_rows
    loose = CliRunner().invoke(main, ["dedup", str(run), "--near-threshold", "0.01"])
    assert loose.exit_code == 0, loose.output
    near = [r for r in pq.read_table(run / "duplicates").to_pylist() if r["kind"] == "near"]
    assert near and pq.read_table(run / "clean").num_rows < clean_before
    dropped = {
        d["image_key"]
        for d in pq.read_table(run / "decisions").to_pylist()
        if d["reason"] == "duplicate"
    }
    assert {r["key"] for r in near} <= dropped
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["near_threshold"] == 0.01 and manifest["counts"]["duplicate"] >= len(
        near
    )
    strict = CliRunner().invoke(main, ["dedup", str(run), "--near-threshold", "0.999"])
    assert strict.exit_code == 0, strict.output
    assert pq.read_table(run / "clean").num_rows == clean_before  # nothing lost: rows come back
    assert CliRunner().invoke(main, ["dedup", str(tmp_path / "missing")]).exit_code == 2


@pytest.mark.slow
def test_rounds_on_the_compressed_index_find_earlier_images(
    tiny_captioner_dir, distinct_filter_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compressed index (trained once, encoded per batch, merged) is built above its
    size threshold (lowered here), memory-mapped by the next round's workers, and extended
    with stable ids."""
    from curation.dedup import compressed_index, index_store

    monkeypatch.setattr(index_store, "IVF_MIN_VECTORS", 3)
    monkeypatch.setattr(compressed_index, "CELL_SIZE", 2)
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse"]
    rows = [{"key": n, "image": jpeg_bytes(photo(n)), "text": f"a {n}"} for n in names]
    write_pairs_parquet(tmp_path / "r1.parquet", rows)
    _run(tmp_path / "r1.parquet", tmp_path / "r1", tiny_captioner_dir, distinct_filter_dir)
    info = json.loads((tmp_path / "r1" / "index" / "index.json").read_text())
    assert info["layout"].startswith("IVF") and info["count"] == len(names)
    # the workers' encoded parts are merged in id order and removed by the commit
    assert not list((tmp_path / "r1" / "index").glob("_parts-*"))
    first_ids = pq.read_table(index_files(tmp_path / "r1")[1])["id"].to_pylist()
    assert first_ids == sorted(first_ids) == list(range(len(names)))
    again = [{**row, "key": f"again_{row['key']}"} for row in rows[:3]]
    again.append({"key": "new_moon", "image": jpeg_bytes(photo("moon")), "text": "the moon"})
    write_pairs_parquet(tmp_path / "r2.parquet", again)
    _run(
        tmp_path / "r2.parquet", tmp_path / "r2", tiny_captioner_dir, distinct_filter_dir,
        dedup_against=str(tmp_path / "r1" / "index"),
    )  # fmt: skip
    dups = {r["key"]: r for r in pq.read_table(tmp_path / "r2" / "duplicates").to_pylist()}
    assert {k: (r["kind"], r["dup_of"]) for k, r in dups.items()} == {
        f"again_{n}": ("previous-round", n) for n in names[:3]
    }
    ids = pq.read_table(index_files(tmp_path / "r2")[1]).to_pylist()
    assert {(r["id"], r["key"]) for r in ids} >= {
        (r["id"], r["key"]) for r in pq.read_table(index_files(tmp_path / "r1")[1]).to_pylist()
    }
    assert {r["key"] for r in ids} == set(names) | {"new_moon"}
