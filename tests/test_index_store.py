"""The index folder: plain FAISS readability, stable ids across rounds, previous-round queries."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.dedup import compressed_index, index_store
from curation.dedup.index_store import keys_for_ids, load_index, open_index, write_index
from curation.dedup.near import query_previous
from curation.errors import InputError
from curation.schemas import INDEX_IDS_SCHEMA

DIM = 32


def _write(
    folder: Path, keys: list[str], x: np.ndarray, previous: Path | None = None, **kw
) -> Path:
    """Write an index folder (extending the one at ``previous``); returns the folder."""
    prev = load_index(previous) if previous is not None else None
    write_index(folder, keys, x, previous=prev, **kw)
    return folder


def _key_of(index, index_id: int) -> str:  # noqa: ANN001
    """The key stored under ``index_id`` in a loaded index, read as a worker reads it."""
    return keys_for_ids(index.folder, [index_id])[index_id]


def _files(folder: Path) -> tuple[Path, Path]:
    """The index file and the id table that ``index.json`` names."""
    info = json.loads((folder / "index.json").read_text())
    return folder / info["files"]["index"], folder / info["files"]["ids"]


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nudged(x: np.ndarray, seed: int) -> np.ndarray:
    """Near-copies of ``x`` (cosine about 0.99)."""
    y = x + 0.15 / np.sqrt(DIM) * np.random.default_rng(seed).standard_normal(x.shape)
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


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
    index = faiss.read_index(str(_files(folder)[0]))
    table = pq.read_table(_files(folder)[1])
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
    monkeypatch.setattr(compressed_index, "CELL_SIZE", 50)
    first, second, third = unit(600, 1), unit(250, 2), unit(100, 3)
    r1 = _write(tmp_path / "r1", [f"a{i}" for i in range(600)], first, run_id="r1")
    r2 = _write(tmp_path / "r2", [f"b{i}" for i in range(250)], second, run_id="r2", previous=r1)
    r3 = _write(tmp_path / "r3", [f"c{i}" for i in range(100)], third, run_id="r3", previous=r2)
    loaded = load_index(r3)
    assert loaded.index.ntotal == 950 and loaded.max_id == 949
    assert loaded.info["runs"] == ["r1", "r2", "r3"]
    assert ("IVF" in loaded.info["layout"]) == (ivf_min < 10**9)
    assert ("IVF" in load_index(r1).info["layout"]) == (ivf_min == 500)
    ids = loaded.ids["id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(950))
    assert [_key_of(loaded, i) for i in (0, 599, 600, 849, 850, 949)] == [
        "a0",
        "a599",
        "b0",
        "b249",
        "c0",
        "c99",
    ]
    if ivf_min == 10**9:
        np.testing.assert_array_equal(loaded.index.reconstruct(3), first[3])
        np.testing.assert_array_equal(loaded.index.reconstruct(610), second[10])
        np.testing.assert_array_equal(loaded.index.reconstruct(949), third[99])
    else:
        assert loaded.info["layout"] == f"IVF{loaded.info['nlist']}_HNSW32,SQ8"
        assert loaded.info["format"] == 2 and loaded.info["nprobe"] == 8
    _, found = loaded.index.search(nudged(np.vstack([first[:3], third[-3:]]), 4), 1)
    assert found[:, 0].tolist() == [0, 1, 2, 947, 948, 949]
    # The earlier folder is untouched.
    assert load_index(r1).index.ntotal == 600


def test_extending_in_place_rewrites_the_same_folder(tmp_path: Path) -> None:
    folder = _write(tmp_path / "index", ["a", "b"], unit(2, 5), run_id="r1")
    _write(folder, ["c"], unit(1, 6), run_id="r2", previous=folder)
    loaded = load_index(folder)
    assert [_key_of(loaded, i) for i in range(3)] == ["a", "b", "c"]
    assert not list(folder.glob("*.tmp"))


def test_query_previous_finds_earlier_images_only(tmp_path: Path) -> None:
    earlier = unit(400, 7)
    folder = _write(tmp_path / "index", [f"old{i}" for i in range(400)], earlier)
    previous = load_index(folder)
    again = nudged(earlier[[3, 250, 399]], 8)
    fresh = unit(50, 9)
    batch = np.vstack([fresh[:20], again, fresh[20:]])
    matches = query_previous(previous.index, batch, threshold=0.95)
    assert [(row, _key_of(previous, i)) for row, i, _ in matches] == [
        (20, "old3"),
        (21, "old250"),
        (22, "old399"),
    ]
    for row, i, sim in matches:
        assert sim == pytest.approx(float(batch[row] @ earlier[i]), abs=1e-5) and sim > 0.95


def test_load_index_refuses_what_is_not_an_index_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="missing index.json"):
        load_index(tmp_path / "empty")
    folder = _write(tmp_path / "index", ["a", "b"], unit(2, 10))
    index_file, ids_file = _files(folder)
    pq.write_table(pq.read_table(ids_file).slice(0, 1), ids_file)
    with pytest.raises(InputError, match="inconsistent"):
        load_index(folder)
    index_file.write_bytes(b"not an index")
    with pytest.raises(InputError, match="unreadable"):
        load_index(folder)


def test_mismatched_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 keys for 2"):
        _write(tmp_path / "x", ["a", "b", "c"], unit(2, 11))
    folder = _write(tmp_path / "index", ["a"], unit(1, 12))
    other = np.eye(1, 16, dtype=np.float32)
    with pytest.raises(ValueError, match="dimension"):
        _write(tmp_path / "y", ["z"], other, previous=folder)


def clustered_unit(n: int, seed: int, clusters: int = 30) -> np.ndarray:
    """Unit vectors in loose clusters (same-cluster cosine about 0.75)."""
    rng = np.random.default_rng(seed)
    centres = unit(clusters, seed + 100)
    x = centres[rng.integers(0, clusters, n)] + 0.55 / np.sqrt(DIM) * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cross_round_dedup_on_the_compressed_index_finds_planted_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_store, "IVF_MIN_VECTORS", 1000)
    monkeypatch.setattr(compressed_index, "CELL_SIZE", 100)
    monkeypatch.setattr(index_store, "IDS_ROW_GROUP", 500)
    earlier = clustered_unit(6000, 20)
    folder = _write(tmp_path / "r1", [f"old{i}" for i in range(6000)], earlier, run_id="r1")
    info = json.loads((folder / "index.json").read_text())
    assert info["layout"].startswith("IVF") and info["layout"].endswith("_HNSW32,SQ8")
    rng = np.random.default_rng(21)
    sources = rng.choice(6000, 300, replace=False)
    noise = rng.uniform(0.1, 0.25, (300, 1)) / np.sqrt(DIM)
    copies = earlier[sources] + noise * rng.standard_normal((300, DIM))
    copies = (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)
    fresh = clustered_unit(700, 22)
    batch = np.vstack([copies, fresh])
    exact = batch.astype(np.float64) @ earlier.astype(np.float64).T
    truth = {row for row in range(batch.shape[0]) if exact[row].max() > 0.95}
    assert len(truth & set(range(300))) >= 290 and len(truth) < 320

    index = open_index(folder)  # what a worker does per shard: memory-mapped lists
    assert isinstance(faiss.downcast_InvertedLists(index.invlists), faiss.OnDiskInvertedLists)
    matches = []
    for lo in range(0, batch.shape[0], 128):
        matches += [
            (lo + row, i, s) for row, i, s in query_previous(index, batch[lo : lo + 128], 0.95)
        ]
    found = {row for row, _, _ in matches}
    assert len(found & truth) / len(truth) >= 0.98 and len(found - truth) <= 2
    right = [int(sources[row]) == i for row, i, _ in matches if row < 300]
    assert np.mean(right) >= 0.98
    for row, i, s in matches:
        assert s == pytest.approx(exact[row, i], abs=0.03)  # 8-bit codes of 32-d vectors
    keys = keys_for_ids(folder, [i for _, i, _ in matches])
    assert keys == {i: f"old{i}" for _, i, _ in matches}


def test_shards_encoded_apart_and_merged_give_the_same_index() -> None:
    x = clustered_unit(5000, 30)
    ids = np.arange(10_000, 15_000, dtype=np.int64)
    for codec in ("SQ8", "PQ16"):
        trained = compressed_index.train_index(x[::3], 5000, codec, seed=0)
        shipped = faiss.serialize_index(trained)  # what the workers receive
        whole = faiss.deserialize_index(shipped)
        whole.add_with_ids(x, ids)
        merged = faiss.deserialize_index(shipped)
        shards = np.array_split(np.random.default_rng(31).permutation(5000), 6)
        for shard in shards:
            worker = faiss.deserialize_index(shipped)
            codes = compressed_index.encode_shard(worker, x[shard])
            compressed_index.add_codes(merged, codes, ids[shard])
        assert merged.ntotal == whole.ntotal == 5000
        q = x[:200]
        d1, i1 = whole.search(q, 3)
        d2, i2 = merged.search(q, 3)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)
        assert (i1[:, 0] == ids[:200]).mean() >= 0.95
        assert compressed_index.describe(merged)["layout"].endswith(f"_HNSW32,{codec}")
    with pytest.raises(ValueError, match="codec"):
        compressed_index.train_index(x[:500], 500, "PQ7", seed=0)


def test_format_1_ivf_folder_is_read_and_extended(tmp_path: Path) -> None:
    x = clustered_unit(2000, 40)
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, 20, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.nprobe = 8
    ivf.make_direct_map()
    index = faiss.IndexIDMap2(ivf)
    index.add_with_ids(x, np.arange(2000, dtype=np.int64))
    folder = tmp_path / "old"
    folder.mkdir()
    faiss.write_index(index, str(folder / "index.faiss"))
    ids = {"id": range(2000), "key": [f"k{i}" for i in range(2000)]}
    ids |= {"sha256": [None] * 2000, "run_id": ["r0"] * 2000}
    pq.write_table(pa.Table.from_pydict(ids, schema=INDEX_IDS_SCHEMA), folder / "ids.parquet")
    info = {"dimension": DIM, "metric": "inner_product", "count": 2000, "max_id": 1999}
    (folder / "index.json").write_text(json.dumps(info))

    loaded = load_index(folder)
    assert _key_of(loaded, 1234) == "k1234" and loaded.ids["sha256"].null_count == 2000
    extra = clustered_unit(100, 41)
    out = _write(tmp_path / "new", [f"n{i}" for i in range(100)], extra, previous=folder)
    extended = load_index(out)
    assert extended.info["layout"] == "IDMap2,IVF20,Flat" and extended.info["format"] == 2
    assert extended.index.ntotal == 2100 and _key_of(extended, 2050) == "n50"
    np.testing.assert_array_equal(extended.index.reconstruct(2050), extra[50])
    info["format"] = 3
    (folder / "index.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="format 3"):
        load_index(folder)


def test_keys_for_ids_reads_only_the_row_groups_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_store, "IDS_ROW_GROUP", 100)
    folder = _write(tmp_path / "index", [f"k{i}" for i in range(1000)], unit(1000, 50))
    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def counting(self: pq.ParquetFile, group: int, *args: object, **kwargs: object) -> pa.Table:
        read.append(group)
        return original(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    assert keys_for_ids(folder, [950, 5, 7, 5]) == {5: "k5", 7: "k7", 950: "k950"}
    assert read == [0, 9]
    assert keys_for_ids(folder, []) == {}


def test_a_new_generation_is_named_by_index_json(tmp_path: Path) -> None:
    folder = _write(tmp_path / "index", ["a", "b"], unit(2, 5), run_id="r1", generation="g1")
    _write(folder, ["c"], unit(1, 6), run_id="r2", previous=folder, generation="g2")
    loaded = load_index(folder)
    assert [_key_of(loaded, i) for i in range(3)] == ["a", "b", "c"]
    assert loaded.info["files"]["index"] == "g2.faiss" and loaded.info["added"] == 1
    assert (folder / "g1.faiss").exists()  # the run folder's roll forward removes it


def test_an_empty_round_keeps_the_dimension(tmp_path: Path) -> None:
    folder = _write(tmp_path / "index", [], np.zeros((0, DIM), np.float32), dimension=DIM)
    empty = load_index(folder)
    assert empty.index.ntotal == 0 and empty.index.d == DIM
    _write(tmp_path / "next", ["a"], unit(1, 1), previous=folder)  # the next round extends it
    assert load_index(tmp_path / "next").index.d == DIM
