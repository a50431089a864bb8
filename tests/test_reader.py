"""Reading inputs: path resolution, layout detection, schema checks, keys, values, streaming."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images import (
    gradient,
    jpeg_bytes,
    write_hf_parquet,
    write_img2dataset_parquet,
    write_pairs_parquet,
)

from curation.errors import InputError
from curation.footers import read_footers
from curation.inputs import InputFile, resolve_inputs
from curation.layout import Layout, check_inputs, detect_layout
from curation.reader import (
    Footer,
    Footers,
    ImageFiles,
    derived_key,
    iter_rows,
    read_row_group,
)
from curation.records import Pair
from curation.storage import Location


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [jpeg_bytes(gradient(48, 40, seed)) for seed in range(6)]


def iter_pairs(item: InputFile, layout: Layout, images: ImageFiles | None = None) -> list[Pair]:
    """Every pair of a file that reads cleanly."""
    rows = list(iter_rows(item, layout, images))
    assert all(error is None for _, error in rows)
    return [pair for pair, _ in rows]


def _file(path: str | Path) -> InputFile:
    [item] = resolve_inputs(str(path))
    return item


def _pairs(path: str | Path, **kw: object) -> list:
    item = _file(path)
    layout = check_inputs([item], **kw)
    return list(iter_pairs(item, layout))


def _urls(spec: str | list[str]) -> list[str]:
    return [f.url for f in resolve_inputs(spec)]


def test_img2dataset_layout_and_pairs(tmp_path: Path, jpegs: list[bytes]) -> None:
    path = write_img2dataset_parquet(
        tmp_path / "00000.parquet", jpegs[:4], ["a cat", "lost", None, "x" * 5000], failed=[1]
    )
    layout = check_inputs([_file(path)])
    assert (layout.kind, layout.image_column, layout.text_column, layout.key_column) == (
        "img2dataset",
        "jpg",
        "caption",
        "key",
    )
    assert (layout.status_column, layout.error_column) == ("status", "error_message")
    assert layout.passthrough.names == [
        "url", "width", "height", "original_width", "original_height", "exif", "sha256",
    ]  # fmt: skip
    # img2dataset's own width/height/sha256 keep their values under other names
    assert dict(layout.renamed) == {
        "width": "source_width", "height": "source_height", "sha256": "source_sha256",
    }  # fmt: skip
    pairs = _pairs(path)
    assert [p.key for p in pairs] == ["000000000", "000000001", "000000002", "000000003"]
    assert [p.source_row for p in pairs] == [0, 1, 2, 3]
    assert all(p.source_file == str(path) for p in pairs)
    assert pairs[0].image == jpegs[0] and pairs[0].text == "a cat"
    assert (pairs[1].status, pairs[1].error, pairs[1].image) == (
        "failed_to_download",
        "HTTP Error 404: Not Found",
        None,
    )
    assert pairs[2].text is None
    assert pairs[3].text == "x" * 5000  # long text kept as is
    assert pairs[0].extra["url"] == "https://example.com/0/0.jpg"
    assert pairs[0].extra["source_width"] == 0 and "width" not in pairs[0].extra


def test_hf_datasets_struct_column_and_image_paths(tmp_path: Path, jpegs: list[bytes]) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "side.jpg").write_bytes(jpegs[3])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "out.jpg").write_bytes(jpegs[4])
    (tmp_path / "data" / "big.jpg").write_bytes(jpegs[5] + b"\0" * 5000)
    paths = [
        "a.jpg",  # bytes win over path
        "images/side.jpg",  # relative to the parquet file: read
        "images/gone.jpg",  # not there
        None,
        "../elsewhere/out.jpg",  # escapes the dataset folder
        str(tmp_path / "elsewhere" / "out.jpg"),  # absolute, outside
        "/dev/zero",  # not a regular file, outside anyway
        "big.jpg",  # over the size bound
    ]
    path = write_hf_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet",
        [jpegs[0]] + [None] * 7,
        [f"t{i}" for i in range(8)],
        paths=paths,
    )
    item = _file(path)
    layout = check_inputs([item])
    assert (layout.kind, layout.image_column, layout.text_column) == (
        "hf_datasets",
        "image",
        "text",
    )
    assert layout.image_is_struct and layout.key_column is None
    pairs = list(iter_pairs(item, layout, ImageFiles(max_bytes=4000)))
    assert pairs[0].image == jpegs[0] and pairs[1].image == jpegs[3]
    assert pairs[2].image is None and "not found" in pairs[2].image_issue[1]
    assert pairs[3].image is None and pairs[3].image_issue is None
    for refused in pairs[4:7]:
        assert refused.image is None and "outside the dataset folder" in refused.image_issue[1]
    assert pairs[7].image_issue[0] == "too_large"
    assert [p.key for p in pairs[:2]] == [
        "train-00000-of-00001_000000",
        "train-00000-of-00001_000001",
    ]
    # an allowed root lets absolute paths in
    allowed = list(iter_pairs(item, layout, ImageFiles(roots=(str(tmp_path / "elsewhere"),))))
    assert allowed[4].image == jpegs[4] and allowed[5].image == jpegs[4]
    assert allowed[6].image is None  # /dev/zero stays outside


def test_mapped_layout_detected_by_column_names(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [{"id": i, "image_bytes": jpegs[i], "alt_text": f"t{i}"} for i in range(3)]
    path = write_pairs_parquet(tmp_path / "m.parquet", rows)
    layout = check_inputs([_file(path)])
    assert (layout.kind, layout.image_column, layout.text_column) == (
        "mapped",
        "image_bytes",
        "alt_text",
    )
    assert layout.passthrough.names == ["id"]
    assert [p.extra["id"] for p in _pairs(path)] == [0, 1, 2]


def test_explicit_columns_override_detection(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [
        {"blob": jpegs[i], "caption": "web", "title": f"t{i}", "uid": f"u{i}"} for i in range(2)
    ]
    path = write_pairs_parquet(tmp_path / "m.parquet", rows)
    assert detect_layout(Location(str(path))).text_column == "caption"
    pairs = _pairs(path, image_column="blob", text_column="title", key_column="uid")
    assert [(p.key, p.text, p.extra) for p in pairs] == [
        ("u0", "t0", {"caption": "web"}),
        ("u1", "t1", {"caption": "web"}),
    ]


@pytest.mark.parametrize(
    "key_type", [pa.int64(), pa.dictionary(pa.int32(), pa.string())], ids=["int64", "dictionary"]
)
def test_key_columns_of_integers_or_dictionaries_are_used_as_text(
    tmp_path: Path, jpegs: list[bytes], key_type: pa.DataType
) -> None:
    keys = (
        pa.array([17, 4], pa.int64())
        if pa.types.is_integer(key_type)
        else pa.array(["k1", "k2"]).dictionary_encode()
    )
    table = pa.table({"key": keys, "image": [jpegs[0], jpegs[1]], "text": ["a", "b"]})
    pq.write_table(table, tmp_path / "k.parquet")
    pairs = _pairs(tmp_path / "k.parquet")
    assert [p.key for p in pairs] == (
        ["17", "4"] if pa.types.is_integer(key_type) else ["k1", "k2"]
    )


def test_dictionary_text_and_invalid_utf8_are_read(tmp_path: Path, jpegs: list[bytes]) -> None:
    texts = pa.array(["café", "plain"]).dictionary_encode()
    pq.write_table(pa.table({"image": [jpegs[0], jpegs[1]], "text": texts}), tmp_path / "d.parquet")
    assert [p.text for p in _pairs(tmp_path / "d.parquet")] == ["café", "plain"]
    # a string column holding bytes that are not UTF-8 (as some writers produce)
    raw = pa.array([b"ok", b"bad \xff\xfe bytes"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"image": [jpegs[0], jpegs[1]], "text": raw}), tmp_path / "u.parquet")
    pairs = _pairs(tmp_path / "u.parquet")
    assert pairs[0].text == "ok" and not pairs[0].text_repaired
    assert pairs[1].text == "bad \ufffd\ufffd bytes" and pairs[1].text_repaired


def test_missing_column_error_names_file_column_and_choices(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    path = write_img2dataset_parquet(tmp_path / "s.parquet", jpegs[:1], ["t"])
    with pytest.raises(InputError) as caught:
        detect_layout(Location(str(path)), text_column="alt")
    message = str(caught.value)
    assert str(path) in message and "'alt'" in message and "'caption', 'key', 'status'" in message
    no_text = write_pairs_parquet(tmp_path / "n.parquet", [{"image": jpegs[0], "n": 1}])
    with pytest.raises(InputError, match=r"no text column recognised.*'image', 'n'.*--text-column"):
        detect_layout(Location(str(no_text)))


def test_wrong_column_type_is_refused(tmp_path: Path, jpegs: list[bytes]) -> None:
    path = write_pairs_parquet(tmp_path / "w.parquet", [{"image": jpegs[0], "text": "t"}])
    with pytest.raises(InputError, match="image column 'text' has type string"):
        detect_layout(Location(str(path)), image_column="text")
    with pytest.raises(InputError, match="text column 'n' has type int64, expected string"):
        write_pairs_parquet(tmp_path / "i.parquet", [{"image": jpegs[0], "n": 1}])
        detect_layout(Location(str(tmp_path / "i.parquet")), text_column="n")


def test_text_and_key_columns_of_bytes_are_read_as_utf8(tmp_path: Path, jpegs: list[bytes]) -> None:
    # older Spark writes strings as plain binary
    table = pa.table({
        "jpg": jpegs[:2],
        "caption": pa.array([b"a red ball", b"caf\xe9"], pa.binary()),
        "key": pa.array([b"k1", b"k\xff"], pa.binary()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "b.parquet")
    pairs = _pairs(tmp_path / "b.parquet", image_column="jpg")
    assert [p.text for p in pairs] == ["a red ball", "caf\ufffd"]
    assert [p.text_repaired for p in pairs] == [False, True]
    assert [p.key for p in pairs] == ["k1", "k\\xff"]


def test_a_drop_column_must_name_a_passthrough_column(tmp_path: Path, jpegs: list[bytes]) -> None:
    path = write_pairs_parquet(
        tmp_path / "a.parquet", [{"image": jpegs[0], "text": "t", "url": "u"}]
    )
    files = resolve_inputs(str(path))
    assert check_inputs(files, drop_columns=("url",)).passthrough.names == []
    with pytest.raises(
        InputError,
        match=r"--drop-column 'ulr': no input file has this column; the others are 'url'",
    ):
        check_inputs(files, drop_columns=("ulr",))
    with pytest.raises(InputError, match="'text': the column plays a role"):
        check_inputs(files, drop_columns=("text",))


def test_not_parquet_and_missing_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("url,caption\nhttp://x,y\n")
    with pytest.raises(InputError, match=f"{fake}: not a Parquet file"):
        detect_layout(Location(str(fake)))
    with pytest.raises(InputError, match="nothing.parquet"):
        resolve_inputs(str(tmp_path / "nothing.parquet"))


def test_footers_are_read_once_per_file_together_and_the_first_bad_file_is_named(
    tmp_path: Path, jpegs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.footers
    from curation.config import InputSettings
    from curation.inspect import inspect_input

    for i in range(5):
        rows = [{"image": jpegs[i], "text": f"t{j}"} for j in range(i + 1)]
        write_pairs_parquet(tmp_path / "data" / f"{i}.parquet", rows, row_group_size=2)
    files = resolve_inputs(str(tmp_path / "data"))
    footers = read_footers(files)
    assert list(footers) == [f.url for f in files]
    assert [f.row_counts for f in footers.values()] == [(1,), (2,), (2, 1), (2, 2), (2, 2, 1)]
    assert footers[files[0].url].schema == pq.ParquetFile(files[0].location.path).schema_arrow
    (tmp_path / "data" / "3.parquet").write_text("not parquet")
    (tmp_path / "data" / "4.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"3\.parquet: not a Parquet file"):
        read_footers(files)
    (tmp_path / "data" / "3.parquet").unlink()
    (tmp_path / "data" / "4.parquet").unlink()
    reads = []
    original = curation.footers.read_footer
    monkeypatch.setattr(
        curation.footers, "read_footer", lambda loc: reads.append(loc) or original(loc)
    )
    report = inspect_input(InputSettings(input=[str(tmp_path / "data")]), progress=False)
    assert report.rows == 6 and len(reads) == 3  # the layout check and the count share them


def test_resolve_file_glob_folder_and_list(tmp_path: Path, jpegs: list[bytes]) -> None:
    paths = [
        write_img2dataset_parquet(tmp_path / sub / f"{i:05d}.parquet", jpegs[:1], ["t"], shard=i)
        for i, sub in ((2, "b"), (0, "a"), (1, "a/deep"))
    ]
    (tmp_path / "a" / "notes.txt").write_text("not an input")
    write_pairs_parquet(tmp_path / "a" / "_cache" / "x.parquet", [{"n": 1}])  # hidden: not input
    a0, a1, b2 = str(paths[1]), str(paths[2]), str(paths[0])
    assert _urls(a0) == [a0]
    assert _urls(str(tmp_path)) == [a0, a1, b2]  # recursive, sorted
    assert _urls(str(tmp_path / "*" / "*.parquet")) == [a0, b2]
    assert _urls(str(tmp_path / "**" / "*.parquet")) == [a0, a1, b2]
    assert _urls([b2, a0, b2]) == [b2, a0]  # order kept, duplicates dropped
    assert _urls(f"file://{tmp_path}/a") == [a0, a1]
    assert _urls(f"file://{tmp_path}/*/0000?.parquet") == [a0, b2]


def test_folder_keys_follow_the_path_below_the_input_root(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    """Hugging Face's converted layout: default/{train,test}/0000.parquet, no key column."""
    for split in ("train", "test"):
        write_pairs_parquet(
            tmp_path / "default" / split / "0000.parquet", [{"image": jpegs[0], "text": "t"}]
        )
    files = resolve_inputs(str(tmp_path / "default"))
    check_inputs(files)  # no collision although both files are named 0000.parquet
    assert sorted(derived_key(f, 1) for f in files) == ["test/0000_000001", "train/0000_000001"]


def test_folder_names_with_glob_characters_and_the_run_folder_excluded(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    data = tmp_path / "shards[2024]"
    write_pairs_parquet(data / "a.parquet", [{"image": jpegs[0], "text": "t"}])
    write_pairs_parquet(data / "run" / "cache.parquet", [{"image": jpegs[0], "text": "t"}])
    assert _urls(str(data)) == [str(data / "a.parquet"), str(data / "run" / "cache.parquet")]
    kept = resolve_inputs(str(data), exclude=Location(str(data / "run")))
    assert [f.url for f in kept] == [str(data / "a.parquet")]


@pytest.mark.parametrize("entry", ["missing.parquet", "nomatch-*.parquet", "emptydir"])
def test_resolve_reports_the_entry_that_matches_nothing(tmp_path: Path, entry: str) -> None:
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match=entry.replace("*", r"\*")):
        resolve_inputs(str(tmp_path / entry))


def test_layouts_roles_must_agree(tmp_path: Path, jpegs: list[bytes]) -> None:
    one = write_img2dataset_parquet(tmp_path / "1.parquet", jpegs[:1], ["t"])
    two = write_pairs_parquet(tmp_path / "2.parquet", [{"image": jpegs[0], "text": "t"}])
    with pytest.raises(InputError, match=r"2\.parquet: columns play other roles .*1\.parquet"):
        check_inputs(resolve_inputs([str(one), str(two)]))


def test_passthrough_columns_are_unified_across_files(tmp_path: Path, jpegs: list[bytes]) -> None:
    a = write_pairs_parquet(
        tmp_path / "a.parquet", [{"image": jpegs[0], "text": "t", "score": 1, "lang": "en"}]
    )
    b = write_pairs_parquet(  # other order, a float score, an extra column
        tmp_path / "b.parquet",
        [{"extra": "x", "score": 1.5, "text": "u", "image": jpegs[1], "lang": "fr"}],
    )
    files = resolve_inputs([str(a), str(b)])
    layout = check_inputs(files)
    assert dict(zip(layout.passthrough.names, map(str, layout.passthrough.types), strict=True)) == {
        "score": "double", "lang": "string", "extra": "string",
    }  # fmt: skip
    rows = [p.extra for f in files for p in iter_pairs(f, layout)]
    assert rows == [
        {"score": 1.0, "lang": "en", "extra": None},
        {"score": 1.5, "lang": "fr", "extra": "x"},  # 1.5 is not truncated
    ]
    assert check_inputs(files, drop_columns=("extra",)).passthrough.names == ["score", "lang"]


def test_passthrough_types_that_cannot_be_combined_are_refused(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    a = write_pairs_parquet(tmp_path / "a.parquet", [{"image": jpegs[0], "text": "t", "v": 1}])
    b = write_pairs_parquet(tmp_path / "b.parquet", [{"image": jpegs[1], "text": "t", "v": "one"}])
    with pytest.raises(InputError, match=r"'v'.*int64 in .*a\.parquet.*string in .*b\.parquet"):
        check_inputs(resolve_inputs([str(a), str(b)]))
    assert (
        check_inputs(resolve_inputs([str(a), str(b)]), drop_columns=("v",)).passthrough.names == []
    )


def test_hive_partition_folders_become_string_columns(tmp_path: Path, jpegs: list[bytes]) -> None:
    import pyarrow.dataset as ds

    data = tmp_path / "data"
    table = pa.table({
        "image": jpegs[:4], "text": ["a", "b", "c", "d"],
        "lang": ["en", "de", None, "en"], "year": [2024, 2024, 2025, 2025],
        "source": ["web", "web", "web", "a b/c"],
    })  # fmt: skip
    ds.write_dataset(
        table, data, format="parquet", partitioning=["lang", "source"],
        partitioning_flavor="hive", basename_template="part-{i}.parquet",
    )  # fmt: skip
    write_pairs_parquet(  # a file of its own column "lang", and one outside the partitions
        data / "lang=fr" / "own.parquet", [{"image": jpegs[4], "text": "e", "lang": "own"}]
    )
    write_pairs_parquet(data / "loose.parquet", [{"image": jpegs[5], "text": "f"}])
    files = resolve_inputs(str(data))
    layout = check_inputs(files)
    assert dict(zip(layout.passthrough.names, map(str, layout.passthrough.types), strict=True)) == {
        "year": "int64", "lang": "string", "source": "string",
    }  # fmt: skip
    rows = {p.text: p.extra for f in files for p in iter_pairs(f, layout)}
    assert rows == {
        "a": {"year": 2024, "lang": "en", "source": "web"},
        "b": {"year": 2024, "lang": "de", "source": "web"},
        "c": {"year": 2025, "lang": None, "source": "web"},  # __HIVE_DEFAULT_PARTITION__
        "d": {"year": 2025, "lang": "en", "source": "a b/c"},  # percent-escapes decoded
        "e": {"year": None, "lang": "own", "source": None},  # the file's own column wins
        "f": {"year": None, "lang": None, "source": None},
    }
    assert check_inputs(files, drop_columns=("source",)).passthrough.names == ["year", "lang"]
    [one] = resolve_inputs(str(data / "lang=en" / "source=web" / "part-0.parquet"))
    assert check_inputs([one]).passthrough.names == ["year"]  # a file entry: no folders below


def test_a_row_group_is_read_in_batches_by_size_and_a_damaged_batch_loses_only_the_rest(
    tmp_path: Path, jpegs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation import reader

    assert reader.batch_rows(1000, 1000 * 2**20) == 64  # rows of 1 MiB: 64 MiB at once
    assert reader.batch_rows(10, 100) == reader.READ_BATCH_ROWS  # small rows: the row bound
    assert reader.batch_rows(2, 2**31) == 1
    path = write_pairs_parquet(
        tmp_path / "a.parquet", [{"image": jpegs[i % 6], "text": f"t{i}"} for i in range(10)]
    )
    monkeypatch.setattr(reader, "READ_BATCH_ROWS", 3)
    item = _file(path)
    layout = check_inputs([item])
    with reader.ParquetInput(item) as source:
        batches = list(source.pair_batches(layout, 0, ImageFiles()))
        images = list(source.image_batches(layout, 0, {1, 7, 9}, ImageFiles()))
    assert [[p.source_row for p in b] for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [sorted(found) for found in images] == [[1], [], [7], [9]]
    assert images[2][7] == jpegs[1]
    original = reader.ParquetInput.pair_batches

    def damaged_after_one(self, *args):  # noqa: ANN001, ANN202
        batches = original(self, *args)
        yield next(batches)
        raise OSError("damaged page")

    monkeypatch.setattr(reader.ParquetInput, "pair_batches", damaged_after_one)
    rows = list(iter_rows(item, layout))
    assert [(p.source_row, p.text, error is None) for p, error in rows] == [
        (0, "t0", True), (1, "t1", True), (2, "t2", True),
        *((row, None, False) for row in range(3, 10)),
    ]  # fmt: skip


def test_colliding_derived_keys_are_refused(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [{"image": jpegs[0], "text": "t"}]
    a = write_pairs_parquet(tmp_path / "x" / "part-0.parquet", rows)
    b = write_pairs_parquet(tmp_path / "y" / "part-0.parquet", rows)
    with pytest.raises(InputError, match="--key-column"):
        check_inputs(resolve_inputs([str(a), str(b)]))
    check_inputs(resolve_inputs(str(tmp_path)))  # their common folder gives x/part-0, y/part-0


def test_row_groups_split_a_file_and_number_rows_within_it(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    rows = [{"image": jpegs[i % 6], "text": f"t{i}"} for i in range(10)]
    item = _file(write_pairs_parquet(tmp_path / "g.parquet", rows, row_group_size=4))
    layout = check_inputs([item])
    assert read_footers([item])[item.url].row_counts == (4, 4, 2)
    groups = [read_row_group(item, layout, i) for i in range(3)]
    assert [p.source_row for p in groups[1]] == [4, 5, 6, 7]
    streamed = list(iter_pairs(item, layout))
    assert [(p.key, p.text) for g in groups for p in g] == [(p.key, p.text) for p in streamed]
    assert streamed[7].key == "g_000007"


@pytest.mark.parametrize(
    ("row_group", "batch_bytes"),
    [(10, None), (200, 2**20)],  # row groups of 10 rows; one of 200 read 10 rows at a time
)
def test_iter_rows_holds_a_row_group_or_a_batch_of_it_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, row_group: int, batch_bytes: int | None
) -> None:
    from curation import reader

    if batch_bytes:
        monkeypatch.setattr(reader, "READ_BATCH_BYTES", batch_bytes)
    blob = bytes(range(256)) * 400  # 100 kB per row, incompressible enough for the check
    rows = [{"image": blob[i:] + bytes([i]), "text": str(i)} for i in range(200)]
    item = _file(write_pairs_parquet(tmp_path / "big.parquet", rows, row_group_size=row_group))
    total = sum(len(r["image"]) for r in rows)
    layout = check_inputs([item])
    tracemalloc.start()
    try:
        pairs = iter_rows(item, layout)
        first, _ = next(pairs)
        count = 1 + sum(1 for _ in pairs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first.image == rows[0]["image"] and count == 200
    assert peak < total / 5  # about 1 MB of Python bytes, not the 20 MB file


def test_text_column_may_be_all_null(tmp_path: Path, jpegs: list[bytes]) -> None:
    schema = pa.schema([("image", pa.binary()), ("text", pa.null())])
    path = write_pairs_parquet(tmp_path / "t.parquet", [{"image": jpegs[0]}], schema=schema)
    [pair] = _pairs(path)
    assert pair.text is None and pair.image == jpegs[0]


def test_url_globs_keep_star_within_one_folder(tmp_path: Path, jpegs: list[bytes]) -> None:
    for name in ("a/part-0.parquet", "a/b/part-1.parquet", "a/part-x2.parquet"):
        write_img2dataset_parquet(tmp_path / name, jpegs[:1], ["t"])
    base = f"file://{tmp_path}"
    assert _urls(f"{base}/a/*.parquet") == [
        f"{tmp_path}/a/part-0.parquet",
        f"{tmp_path}/a/part-x2.parquet",
    ]
    assert _urls(f"{base}/a/part-[0-9].parquet") == [f"{tmp_path}/a/part-0.parquet"]
    assert _urls(f"{base}/**/part-?.parquet") == [
        f"{tmp_path}/a/b/part-1.parquet",
        f"{tmp_path}/a/part-0.parquet",
    ]


def test_keys_the_data_does_not_give_as_they_are_used_are_noted(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    """Invalid UTF-8 in keys is escaped, so keys differing only there stay distinct; a missing
    key is derived; both say so in the decision, and so does a duplicate of a derived key."""
    from curation.config import InputSettings
    from curation.decide import decision_row
    from curation.inspect import inspect_input
    from curation.reader import DERIVED_KEY, ESCAPED_KEY
    from curation.reasons import Reason

    keys = pa.array([b"id-\xff", b"id-\xfe", None, b"", b"in_000002", b"plain"], pa.binary())
    table = pa.table(
        {
            "key": keys.cast(pa.string(), safe=False),
            "image": [jpegs[i] for i in range(6)],
            "text": ["a", "b", "c", "d", "e", "f"],
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    item = _file(path)
    pairs = list(iter_pairs(item, check_inputs([item])))
    assert [p.key for p in pairs] == [
        "id-\\xff", "id-\\xfe", "in_000002", "in_000003", "in_000002", "plain",
    ]  # fmt: skip
    assert [p.key_note for p in pairs] == [
        ESCAPED_KEY, ESCAPED_KEY, DERIVED_KEY, DERIVED_KEY, None, None,
    ]  # fmt: skip
    row = decision_row(pairs[2], run_id="r", reason=Reason.KEPT, threshold=0.5)
    assert DERIVED_KEY in row["detail"]
    report = inspect_input(InputSettings(input=(str(path),)), progress=False)
    assert report.counts["duplicate_key"] == 1  # the real key equal to a derived one
    (example,) = report.examples["duplicate_key"]
    assert example["key"] == "in_000002" and f"row 2 ({DERIVED_KEY})" in example["detail"]


def test_repeated_column_names_are_refused_unless_left_out(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    def write(names: list[str]) -> Path:
        columns = {"image": [jpegs[0]], "text": ["t"], "extra": ["x"], "other": [1]}
        arrays = [pa.array(columns[n.split("#")[0]]) for n in names]
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, names=[n.split("#")[0] for n in names]), path)
        return path

    passthrough = write(["image", "text", "extra", "extra#2"])
    with pytest.raises(InputError, match=r"'extra' appears 2 times.*--drop-column 'extra'"):
        check_inputs([_file(passthrough)])
    assert check_inputs([_file(passthrough)], drop_columns=("extra",)).passthrough.names == []
    role = write(["image", "text", "text#2"])
    with pytest.raises(InputError, match="'text' appears 2 times"):
        check_inputs([_file(role)])


def test_passthrough_values_the_unified_type_cannot_hold_are_null_and_noted(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    def write(name: str, **columns: pa.Array) -> Path:
        n = len(next(iter(columns.values())))
        table = pa.table({"image": jpegs[:n], "text": ["t"] * n, **columns})
        pq.write_table(table, tmp_path / name)
        return tmp_path / name

    write("a.parquet", v=pa.array([1, 2**53 + 1], pa.int64()),
          when=pa.array([0, 32503680000000], pa.timestamp("ms")),  # 1970, and the year 3000
          s=pa.array(["x", "y"], pa.string()))  # fmt: skip
    write("b.parquet", v=pa.array([0.5], pa.float64()), when=pa.array([1], pa.timestamp("ns")),
          s=pa.array(["z"], pa.string_view()))  # fmt: skip
    files = resolve_inputs(str(tmp_path))
    layout = check_inputs(files)
    assert [str(t) for t in layout.passthrough.types] == ["double", "timestamp[ns]", "large_string"]
    pairs = [p for f in files for p in iter_pairs(f, layout)]
    assert [p.extra["v"] for p in pairs] == [1.0, None, 0.5]
    assert [p.extra["s"] for p in pairs] == ["x", "y", "z"]
    assert pairs[0].passthrough_note is None and pairs[2].passthrough_note is None
    note = pairs[1].passthrough_note
    assert "'v': 9007199254740993 does not fit double" in note and "'when'" in note
    assert pairs[1].extra["when"] is None


def test_only_a_text_status_makes_a_file_img2dataset(tmp_path: Path, jpegs: list[bytes]) -> None:
    def write(status: pa.Array, error: pa.Array) -> InputFile:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.parquet"
        table = pa.table(
            {"key": ["k"], "caption": ["c"], "jpg": [jpegs[0]], "status": status,
             "error_message": error}
        )  # fmt: skip
        pq.write_table(table, path)
        return _file(path)

    http = write(pa.array([200]), pa.array([None], pa.string()))  # another scraper's HTTP code
    layout = check_inputs([http])
    assert layout.kind == "mapped" and layout.status_column is None
    assert "status" in layout.passthrough.names
    assert [p.status for p in iter_pairs(http, layout)] == [None]  # not download_failed
    listed = write(pa.array(["success"]), pa.array([["a", "b"]]))
    with pytest.raises(InputError, match="error column 'error_message' has type list"):
        check_inputs([listed])


def test_a_dictionary_encoded_image_column_is_read_as_its_values(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    images = pa.array(jpegs[:3]).dictionary_encode()
    pq.write_table(pa.table({"image": images, "text": ["a", "b", "c"]}), tmp_path / "d.parquet")
    assert [p.image for p in _pairs(tmp_path / "d.parquet")] == jpegs[:3]


def test_values_python_cannot_hold_are_null_and_noted_not_the_row_group_lost(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    tags = pa.array([b"cat", b"caf\xe9"], pa.binary())  # Latin-1 inside a list of strings
    table = pa.table({
        "image": jpegs[:2], "text": ["t0", "t1"],
        "until": pa.array([0, 2**63 - 1], pa.timestamp("us")),  # beyond Python's years
        "tags": pa.ListArray.from_arrays(
            pa.array([0, 1, 2], pa.int32()), pa.Array.from_buffers(pa.string(), 2, tags.buffers())
        ),
        "seen": pa.array([0, 1], pa.timestamp("s", tz="UTC+1")),  # a zone no database knows
    })  # fmt: skip
    pq.write_table(table, tmp_path / "a.parquet")
    pairs = _pairs(tmp_path / "a.parquet")
    assert [p.image for p in pairs] == jpegs[:2]  # the rows are read, their images too
    assert pairs[0].extra["until"] is not None and pairs[1].extra["until"] is None
    assert [p.extra["tags"] for p in pairs] == [["cat"], None]
    assert [p.extra["seen"] for p in pairs] == [None, None]
    assert (
        "'until': a timestamp[us] value cannot be read (OverflowError" in pairs[1].passthrough_note
    )
    assert "'tags'" in pairs[1].passthrough_note and "'tags'" not in pairs[0].passthrough_note
    assert "'seen'" in pairs[0].passthrough_note


def test_image_paths_of_other_stores_or_with_nul_are_refused_per_row_without_contact(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    paths = [
        None,
        "oss://bucket/img/5.jpg",  # a scheme with no filesystem installed
        "foo://host/x.jpg",  # a scheme fsspec does not know
        "ftp://10.255.255.1/x.jpg",  # building its filesystem would connect
        "img\x00.jpg",
    ]
    path = write_hf_parquet(
        tmp_path / "train.parquet", [jpegs[0]] + [None] * 4, ["t"] * 5, paths=paths
    )
    item = _file(path)
    pairs = iter_pairs(item, check_inputs([item]))
    assert pairs[0].image == jpegs[0]
    for refused in pairs[1:4]:
        assert refused.image_issue[0] == "missing_image"
        assert "outside the dataset folder" in refused.image_issue[1]
    assert pairs[4].image_issue == ("missing_image", "image path 'img\\x00.jpg' holds a NUL byte")


def test_an_image_column_of_nulls_only_reads_as_rows_without_images(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    write_hf_parquet(tmp_path / "a.parquet", [jpegs[0]], ["t0"], paths=["a.jpg"])
    empty = pa.table({"image": pa.nulls(2), "text": ["t1", "t2"]})  # pandas writes all-None so
    pq.write_table(empty, tmp_path / "b.parquet")
    files = resolve_inputs(str(tmp_path))
    layout = check_inputs(files)
    assert layout.image_is_struct  # the layout of the file with images
    pairs = [p for f in files for p in iter_pairs(f, layout)]
    assert [p.image for p in pairs] == [jpegs[0], None, None]
    assert [p.text for p in pairs] == ["t0", "t1", "t2"]
    alone = resolve_inputs(str(tmp_path / "b.parquet"))
    assert check_inputs(alone).image_column == "image"


def test_input_names_that_are_not_utf8_pipes_or_hold_double_colons(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    def write_parquet(path: str | Path, texts: list[str]) -> None:
        rows = [{"image": image, "text": text} for image, text in zip(jpegs, texts, strict=False)]
        write_pairs_parquet(path, rows)

    write_parquet(tmp_path / "shard::1.parquet", ["a", "b"])
    assert [p.text for p in _pairs(tmp_path / "shard::1.parquet")] == ["a", "b"]
    os.mkfifo(tmp_path / "pipe.parquet")  # opening it would wait for a writer forever
    assert _urls(str(tmp_path)) == [str(tmp_path / "shard::1.parquet")]
    with pytest.raises(InputError, match="not a regular file"):
        resolve_inputs(str(tmp_path / "pipe.parquet"))
    with open(bytes(tmp_path) + b"/caf\xe9.parquet", "wb") as latin1:  # an old system's name
        latin1.write((tmp_path / "shard::1.parquet").read_bytes())
    with pytest.raises(InputError, match=r"caf\\xe9.parquet: its name is not valid UTF-8"):
        resolve_inputs(str(tmp_path))


def test_a_file_of_a_row_group_per_row_parses_its_footer_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = pa.table({"image": pa.array([None] * 50, pa.binary()), "text": ["t"] * 50})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1)
    [item] = resolve_inputs(str(tmp_path / "a.parquet"))
    layout = check_inputs([item])
    parsed = []
    parse = Footer.of.__func__
    monkeypatch.setattr(Footer, "of", classmethod(lambda cls, m: parsed.append(m) or parse(cls, m)))
    footers = Footers()
    rows = []
    for index in range(50):
        with footers.open(item) as source:
            rows += [
                p.source_row for b in source.pair_batches(layout, index, ImageFiles()) for p in b
            ]
    assert rows == list(range(50)) and len(parsed) == 1
