"""Reading inputs: path resolution, layout detection, schema errors, keys and streaming."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest
from images import (
    gradient,
    jpeg_bytes,
    write_hf_parquet,
    write_img2dataset_parquet,
    write_pairs_parquet,
)

from curation.errors import InputError
from curation.reader import (
    Layout,
    check_inputs,
    detect_layout,
    iter_pairs,
    make_key,
    read_row_group,
    resolve_inputs,
    row_groups,
)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [jpeg_bytes(gradient(48, 40, seed)) for seed in range(6)]


def test_img2dataset_layout_and_pairs(tmp_path: Path, jpegs: list[bytes]) -> None:
    path = str(
        write_img2dataset_parquet(
            tmp_path / "00000.parquet", jpegs[:4], ["a cat", "lost", None, "x" * 5000], failed=[1]
        )
    )
    layout = detect_layout(path)
    assert layout == Layout(
        kind="img2dataset",
        image_column="jpg",
        text_column="caption",
        key_column="key",
        status_column="status",
        error_column="error_message",
        image_is_struct=False,
        passthrough=(
            "url",
            "width",
            "height",
            "original_width",
            "original_height",
            "exif",
            "sha256",
        ),
    )
    pairs = list(iter_pairs(path, layout))
    assert [p.key for p in pairs] == ["000000000", "000000001", "000000002", "000000003"]
    assert [p.source_row for p in pairs] == [0, 1, 2, 3]
    assert all(p.source_file == path for p in pairs)
    assert pairs[0].image == jpegs[0] and pairs[0].text == "a cat"
    assert (pairs[1].status, pairs[1].error, pairs[1].image) == (
        "failed_to_download",
        "HTTP Error 404: Not Found",
        None,
    )
    assert pairs[0].status == "success" and pairs[0].error is None
    assert pairs[2].text is None
    assert pairs[3].text == "x" * 5000  # long text kept as is
    assert pairs[0].extra["url"] == "https://example.com/0/0.jpg"
    assert "jpg" not in pairs[0].extra and "caption" not in pairs[0].extra


def test_hf_datasets_struct_column(tmp_path: Path, jpegs: list[bytes]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "side.jpg").write_bytes(jpegs[3])
    path = str(
        write_hf_parquet(
            tmp_path / "train-00000-of-00001.parquet",
            [jpegs[0], None, None, None],
            ["one", "two", "three", "four"],
            paths=["a.jpg", "images/side.jpg", "images/gone.jpg", None],
        )
    )
    layout = detect_layout(path)
    assert (layout.kind, layout.image_column, layout.text_column) == (
        "hf_datasets",
        "image",
        "text",
    )
    assert layout.image_is_struct and layout.key_column is None
    assert layout.passthrough == ("source",)
    pairs = list(iter_pairs(path, layout))
    assert pairs[0].image == jpegs[0]  # bytes win over path
    assert pairs[1].image == jpegs[3]  # null bytes: read beside the parquet file
    assert pairs[2].image is None and pairs[3].image is None
    assert [p.key for p in pairs] == [f"train-00000-of-00001_{i:06d}" for i in range(4)]
    assert pairs[2].extra == {"source": "hf-2"}


def test_mapped_layout_detected_by_column_names(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [{"id": i, "image_bytes": jpegs[i], "alt_text": f"t{i}"} for i in range(3)]
    path = str(write_pairs_parquet(tmp_path / "m.parquet", rows))
    layout = detect_layout(path)
    assert (layout.kind, layout.image_column, layout.text_column) == (
        "mapped",
        "image_bytes",
        "alt_text",
    )
    assert layout.passthrough == ("id",)
    assert [p.extra["id"] for p in iter_pairs(path, layout)] == [0, 1, 2]


def test_explicit_columns_override_detection(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [
        {"blob": jpegs[i], "caption": "web", "title": f"t{i}", "uid": f"u{i}"} for i in range(2)
    ]
    path = str(write_pairs_parquet(tmp_path / "m.parquet", rows))
    assert detect_layout(path).text_column == "caption"
    layout = detect_layout(path, image_column="blob", text_column="title", key_column="uid")
    assert (layout.image_column, layout.text_column, layout.key_column) == ("blob", "title", "uid")
    assert layout.passthrough == ("caption",)
    pairs = list(iter_pairs(path, layout))
    assert [(p.key, p.text) for p in pairs] == [("u0", "t0"), ("u1", "t1")]


def test_missing_column_error_names_file_column_and_choices(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    path = str(write_img2dataset_parquet(tmp_path / "s.parquet", jpegs[:1], ["t"]))
    with pytest.raises(InputError) as caught:
        detect_layout(path, text_column="alt")
    message = str(caught.value)
    assert path in message and "'alt'" in message and "caption, key, status" in message

    no_text = str(write_pairs_parquet(tmp_path / "n.parquet", [{"image": jpegs[0], "n": 1}]))
    with pytest.raises(InputError, match=r"no text column recognised.*image, n.*--text-column"):
        detect_layout(no_text)


def test_wrong_column_type_is_refused(tmp_path: Path, jpegs: list[bytes]) -> None:
    path = str(write_pairs_parquet(tmp_path / "w.parquet", [{"image": jpegs[0], "text": "t"}]))
    with pytest.raises(InputError, match="image column 'text' has type string"):
        detect_layout(path, image_column="text")


def test_not_parquet_and_missing_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("url,caption\nhttp://x,y\n")
    with pytest.raises(InputError, match=f"{fake}: not a Parquet file"):
        detect_layout(str(fake))
    with pytest.raises(InputError, match="nothing.parquet"):
        detect_layout(str(tmp_path / "nothing.parquet"))


def test_resolve_file_glob_folder_and_list(tmp_path: Path, jpegs: list[bytes]) -> None:
    paths = [
        write_img2dataset_parquet(tmp_path / sub / f"{i:05d}.parquet", jpegs[:1], ["t"], shard=i)
        for i, sub in ((2, "b"), (0, "a"), (1, "a/deep"))
    ]
    (tmp_path / "a" / "notes.txt").write_text("not an input")
    a0, a1, b2 = str(paths[1]), str(paths[2]), str(paths[0])
    assert resolve_inputs(a0) == [a0]
    assert resolve_inputs(str(tmp_path)) == [a0, a1, b2]  # recursive, sorted
    assert resolve_inputs(str(tmp_path / "*" / "*.parquet")) == [a0, b2]
    assert resolve_inputs(str(tmp_path / "**" / "*.parquet")) == [a0, a1, b2]
    assert resolve_inputs([b2, a0, b2]) == [b2, a0]  # order kept, duplicates dropped
    assert resolve_inputs(f"file://{tmp_path}/a") == [f"file://{a0}", f"file://{a1}"]
    assert resolve_inputs(f"file://{tmp_path}/*/0000?.parquet") == [f"file://{a0}", f"file://{b2}"]


@pytest.mark.parametrize("entry", ["missing.parquet", "nomatch-*.parquet", "emptydir"])
def test_resolve_reports_the_entry_that_matches_nothing(tmp_path: Path, entry: str) -> None:
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match=entry.replace("*", r"\*")):
        resolve_inputs(str(tmp_path / entry))


def test_url_inputs_read_like_local_ones(tmp_path: Path, jpegs: list[bytes]) -> None:
    local = str(write_img2dataset_parquet(tmp_path / "u.parquet", jpegs[:2], ["a", "b"]))
    url = f"file://{local}"
    layout = detect_layout(url)
    assert [(p.image, p.text) for p in iter_pairs(url, layout)] == [
        (p.image, p.text) for p in iter_pairs(local, detect_layout(local))
    ]


def test_check_inputs_requires_agreeing_layouts(tmp_path: Path, jpegs: list[bytes]) -> None:
    one = str(write_img2dataset_parquet(tmp_path / "1.parquet", jpegs[:1], ["t"]))
    two = str(write_pairs_parquet(tmp_path / "2.parquet", [{"image": jpegs[0], "text": "t"}]))
    assert check_inputs([one]).kind == "img2dataset"
    with pytest.raises(InputError, match=r"2\.parquet: layout differs from .*1\.parquet.*kind"):
        check_inputs([one, two])


def test_check_inputs_refuses_colliding_derived_keys(tmp_path: Path, jpegs: list[bytes]) -> None:
    rows = [{"image": jpegs[0], "text": "t"}]
    a = str(write_pairs_parquet(tmp_path / "x" / "part-0.parquet", rows))
    b = str(write_pairs_parquet(tmp_path / "y" / "part-0.parquet", rows))
    with pytest.raises(InputError, match="--key-column"):
        check_inputs([a, b])


def test_make_key_is_stable_and_uses_the_file_name_only() -> None:
    assert make_key("/data/run1/part-00000.parquet", 123) == "part-00000_000123"
    assert make_key("gs://bucket/x/part-00000.parquet", 123) == "part-00000_000123"
    assert make_key("part-00000.parquet", 1_234_567) == "part-00000_1234567"


def test_row_groups_split_a_file_and_number_rows_within_it(
    tmp_path: Path, jpegs: list[bytes]
) -> None:
    rows = [{"image": jpegs[i % 6], "text": f"t{i}"} for i in range(10)]
    path = str(write_pairs_parquet(tmp_path / "g.parquet", rows, row_group_size=4))
    layout = detect_layout(path)
    assert row_groups(path) == 3
    groups = [read_row_group(path, layout, i) for i in range(3)]
    assert [len(g) for g in groups] == [4, 4, 2]
    assert [p.source_row for p in groups[1]] == [4, 5, 6, 7]
    streamed = list(iter_pairs(path, layout))
    assert [(p.key, p.text) for g in groups for p in g] == [(p.key, p.text) for p in streamed]
    assert streamed[7].key == "g_000007"


def test_iter_pairs_streams_one_row_group_at_a_time(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 400  # 100 kB per row, incompressible enough for the check
    rows = [{"image": blob[i:] + bytes([i]), "text": str(i)} for i in range(200)]
    path = str(write_pairs_parquet(tmp_path / "big.parquet", rows, row_group_size=10))
    total = sum(len(r["image"]) for r in rows)
    layout = detect_layout(path)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_pairs(path, layout))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200
    assert peak < total / 5  # about one 1 MB row group of Python bytes, not the 20 MB file


def test_text_column_may_be_all_null(tmp_path: Path, jpegs: list[bytes]) -> None:
    schema = pa.schema([("image", pa.binary()), ("text", pa.null())])
    path = str(write_pairs_parquet(tmp_path / "t.parquet", [{"image": jpegs[0]}], schema=schema))
    [pair] = iter_pairs(path, detect_layout(path))
    assert pair.text is None and pair.image == jpegs[0]


def test_url_globs_keep_star_within_one_folder(tmp_path: Path, jpegs: list[bytes]) -> None:
    for name in ("a/part-0.parquet", "a/b/part-1.parquet", "a/part-x2.parquet"):
        write_img2dataset_parquet(tmp_path / name, jpegs[:1], ["t"])
    base = f"file://{tmp_path}"
    assert resolve_inputs(f"{base}/a/*.parquet") == [
        f"{base}/a/part-0.parquet",
        f"{base}/a/part-x2.parquet",
    ]
    assert resolve_inputs(f"{base}/a/part-[0-9].parquet") == [f"{base}/a/part-0.parquet"]
    assert resolve_inputs(f"{base}/**/part-?.parquet") == [
        f"{base}/a/b/part-1.parquet",
        f"{base}/a/part-0.parquet",
    ]
