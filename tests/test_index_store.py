"""The index folder: plain FAISS readability, stable ids across rounds, previous-round queries."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.dedup import index_store
from curation.dedup.index_store import load_index, write_index
from curation.dedup.near import query_previous
from curation.errors import InputError
from curation.schemas import INDEX_IDS_SCHEMA

DIM = 32


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nudged(x: np.ndarray, seed: int) -> np.ndarray:
    """Near-copies of ``x`` (cosine about 0.99)."""
    y = x + 0.15 / np.sqrt(DIM) * np.random.default_rng(seed).standard_normal(x.shape)
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def _write(
    folder: Path, keys: list[str], x: np.ndarray, previous: Path | None = None, **kw
) -> Path:
    prev = load_index(str(previous)) if previous is not None else None
    write_index(str(folder), keys, x, previous=prev, **kw)
    return folder


def _files(folder: Path) -> tuple[Path, Path]:
    info = json.loads((folder / "index.json").read_text())
    return folder / info["files"]["index"], folder / info["files"]["ids"]


def test_written_index_is_plain_faiss_and_maps_back_to_keys(tmp_path: Path) -> None:
    x = unit(300, 0)
    keys = [f"round1-{i:03d}" for i in range(300)]
    folder = _write(
        tmp_path / "index",
        keys,
        x,
        sha256=[f"sha{i}" for i in range(300)],
        run_id="r1",
        threshold=0.95,
    )
    index_file, ids_file = _files(folder)
    index = faiss.read_index(str(index_file))
    table = pq.read_table(ids_file)
    assert table.schema.equals(INDEX_IDS_SCHEMA)
    key_of = dict(zip(table["id"].to_pylist(), table["key"].to_pylist(), strict=True))
    _, ids = index.search(nudged(x[[5, 17, 299]], 1), 1)
    assert [key_of[i] for i in ids[:, 0]] == ["round1-005", "round1-017", "round1-299"]
    np.testing.assert_array_equal(index.reconstruct(17), x[17])
    info = json.loads((folder / "index.json").read_text())
    assert info["dimension"] == DIM and info["metric"] == "inner_product"
    assert (info["count"], info["max_id"], info["layout"]) == (300, 299, "IDMap2,Flat")
    assert (info["threshold"], info["runs"]) == (0.95, ["r1"])
    assert table["sha256"][17].as_py() == "sha17" and table["run_id"][0].as_py() == "r1"


@pytest.mark.parametrize("ivf_min", [10**9, 500, 700], ids=["flat", "ivf", "flat-then-ivf"])
def test_extending_keeps_old_ids_and_adds_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ivf_min: int
) -> None:
    monkeypatch.setattr(index_store, "IVF_MIN_VECTORS", ivf_min)
    monkeypatch.setattr(index_store, "IVF_CELL_SIZE", 50)
    first, second, third = unit(600, 1), unit(250, 2), unit(100, 3)
    r1 = _write(tmp_path / "r1", [f"a{i}" for i in range(600)], first, run_id="r1")
    r2 = _write(tmp_path / "r2", [f"b{i}" for i in range(250)], second, run_id="r2", previous=r1)
    r3 = _write(tmp_path / "r3", [f"c{i}" for i in range(100)], third, run_id="r3", previous=r2)
    loaded = load_index(str(r3))
    assert loaded.index.ntotal == 950 and loaded.max_id == 949
    assert loaded.info["runs"] == ["r1", "r2", "r3"]
    assert ("IVF" in loaded.info["layout"]) == (ivf_min < 10**9)
    assert ("IVF" in load_index(str(r1)).info["layout"]) == (ivf_min == 500)
    ids = loaded.ids["id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(950))
    assert [loaded.key_of(i) for i in (0, 599, 600, 849, 850, 949)] == [
        "a0",
        "a599",
        "b0",
        "b249",
        "c0",
        "c99",
    ]
    np.testing.assert_array_equal(loaded.index.reconstruct(3), first[3])
    np.testing.assert_array_equal(loaded.index.reconstruct(610), second[10])
    np.testing.assert_array_equal(loaded.index.reconstruct(949), third[99])
    _, found = loaded.index.search(nudged(np.vstack([first[:3], third[-3:]]), 4), 1)
    assert found[:, 0].tolist() == [0, 1, 2, 947, 948, 949]
    # The earlier folder is untouched.
    assert load_index(str(r1)).index.ntotal == 600


def test_extending_in_place_writes_a_new_generation(tmp_path: Path) -> None:
    folder = _write(tmp_path / "index", ["a", "b"], unit(2, 5), run_id="r1", generation="g1")
    _write(folder, ["c"], unit(1, 6), run_id="r2", previous=folder, generation="g2")
    loaded = load_index(str(folder))
    assert [loaded.key_of(i) for i in range(3)] == ["a", "b", "c"]
    assert loaded.info["files"]["index"] == "g2.faiss" and loaded.info["added"] == 1
    assert not list(folder.glob("*.tmp")) and (folder / "g1.faiss").exists()


def test_an_empty_round_keeps_the_dimension(tmp_path: Path) -> None:
    folder = _write(tmp_path / "index", [], np.zeros((0, DIM), np.float32), dimension=DIM)
    empty = load_index(str(folder))
    assert empty.index.ntotal == 0 and empty.index.d == DIM
    _write(tmp_path / "next", ["a"], unit(1, 1), previous=folder)  # the next round extends it
    assert load_index(str(tmp_path / "next")).index.d == DIM


def test_query_previous_finds_earlier_images_only(tmp_path: Path) -> None:
    earlier = unit(400, 7)
    folder = _write(tmp_path / "index", [f"old{i}" for i in range(400)], earlier)
    previous = load_index(str(folder))
    again = nudged(earlier[[3, 250, 399]], 8)
    fresh = unit(50, 9)
    batch = np.vstack([fresh[:20], again, fresh[20:]])
    matches = query_previous(previous.index, batch, threshold=0.95)
    assert [(row, previous.key_of(i)) for row, i, _ in matches] == [
        (20, "old3"),
        (21, "old250"),
        (22, "old399"),
    ]
    for row, i, sim in matches:
        assert sim == pytest.approx(float(batch[row] @ earlier[i]), abs=1e-5) and sim > 0.95


def test_load_index_refuses_what_is_not_an_index_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_index(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="missing index.json"):
        load_index(str(tmp_path / "empty"))
    folder = _write(tmp_path / "index", ["a", "b"], unit(2, 10))
    index_file, ids_file = _files(folder)
    pq.write_table(pq.read_table(ids_file).slice(0, 1), ids_file)
    with pytest.raises(InputError, match="inconsistent"):
        load_index(str(folder))
    index_file.write_bytes(b"not an index")
    with pytest.raises(InputError, match="unreadable"):
        load_index(str(folder))


def test_mismatched_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 keys for 2"):
        write_index(str(tmp_path / "x"), ["a", "b", "c"], unit(2, 11))
    folder = _write(tmp_path / "index", ["a"], unit(1, 12))
    other = np.eye(1, 16, dtype=np.float32)
    with pytest.raises(ValueError, match="dimension"):
        _write(tmp_path / "y", ["z"], other, previous=folder)
