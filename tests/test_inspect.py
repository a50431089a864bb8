"""``curation inspect``: every row counted once under the right reason, CLI output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from images import (
    bomb_png,
    gradient,
    jpeg_bytes,
    photo,
    png_bytes,
    truncated,
    write_hf_parquet,
    write_img2dataset_parquet,
    write_pairs_parquet,
)

from app.cli import main
from curation.config import InputSettings
from curation.inspect import OUTCOMES, inspect_input


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two img2dataset shards covering every outcome, with known counts."""
    folder = tmp_path_factory.mktemp("mixed")
    good = jpeg_bytes(photo("chelsea"))
    images = [
        good,  # ok
        good,  # download failed (status), image nulled by the helper
        None,  # missing image although status success
        b"not an image at all" * 10,  # undecodable
        truncated(good),  # truncated
        png_bytes(gradient(4, 40)),  # too small
        bomb_png(),  # too large
        good,  # empty text
        good,  # blank text
        jpeg_bytes(gradient(64, 64)),  # ok, long text
    ]
    texts = ["a cat", "x", "y", "z", "w", "v", "u", "", "   \t", "long " * 2000]
    write_img2dataset_parquet(folder / "00000.parquet", images, texts, failed=[1], row_group_size=3)
    write_img2dataset_parquet(
        folder / "sub" / "00001.parquet", [good, None], ["ok", "gone"], failed=[1], shard=1
    )
    return folder


EXPECTED = {
    "duplicate_key": 0,
    "download_failed": 2,
    "missing_image": 1,
    "unsupported_format": 0,
    "undecodable": 1,
    "truncated": 1,
    "too_small": 1,
    "too_large": 1,
    "empty_text": 2,
    "error": 0,
    "ok": 3,
}


def _inspect(spec: str, **settings: object):
    return inspect_input(InputSettings(input=(spec,), **settings), progress=False)


def test_every_row_is_counted_once_under_its_reason(mixed_folder: Path) -> None:
    report = _inspect(str(mixed_folder))
    assert report.layout.kind == "img2dataset"
    assert report.files == [
        str(mixed_folder / "00000.parquet"),
        str(mixed_folder / "sub" / "00001.parquet"),
    ]
    assert report.rows == 12 == sum(report.counts.values())
    assert report.counts == EXPECTED
    assert list(report.counts) == list(OUTCOMES)
    assert report.file_rows == {report.files[0]: 10, report.files[1]: 2}
    assert [e["key"] for e in report.examples["download_failed"]] == ["000000001", "000010001"]
    assert "HTTP Error 404" in report.examples["download_failed"][0]["detail"]
    assert "ok" not in report.examples


def test_image_settings_change_the_counts_as_in_a_run(mixed_folder: Path) -> None:
    report = _inspect(str(mixed_folder / "00000.parquet"), min_side=100, max_pixels=10_000_000)
    assert report.rows == 10 and report.counts["too_small"] == 2 and report.counts["too_large"] == 1
    report = _inspect(str(mixed_folder / "00000.parquet"), image_formats=("png",))
    assert report.counts["unsupported_format"] == 5  # the JPEGs
    assert "JPEG" in report.examples["unsupported_format"][0]["detail"]


def test_repeated_keys_keep_the_first_row(tmp_path: Path) -> None:
    good = jpeg_bytes(gradient(32, 32))
    write_img2dataset_parquet(tmp_path / "a.parquet", [good, good], ["x", "y"])
    write_img2dataset_parquet(tmp_path / "b.parquet", [good], ["z"])  # same keys as a's rows
    report = _inspect(str(tmp_path))
    assert report.counts["duplicate_key"] == 1 and report.counts["ok"] == 2
    assert "already used by" in report.examples["duplicate_key"][0]["detail"]
    assert str(tmp_path / "a.parquet") in report.examples["duplicate_key"][0]["detail"]


def test_fail_under_fails_the_step_when_too_few_rows_are_usable(mixed_folder: Path) -> None:
    ok = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--fail-under", "0.4"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--fail-under", "0.5"])
    assert bad.exit_code == 3 and "--fail-under" in bad.stderr
    nan = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--fail-under", "nan"])
    assert nan.exit_code == 2 and "nan is not a share" in nan.output


def test_config_file_settings_apply_and_bad_values_fail_fast(
    mixed_folder: Path, tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("min-side: 100\nthreshold: 0.5\n")
    result = CliRunner().invoke(
        main, ["inspect", str(mixed_folder), "--config", str(config), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["too_small"] == 2
    config.write_text("threshold: 2\n")
    result = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--config", str(config)])
    assert result.exit_code == 2 and "threshold" in result.stderr


def test_hf_datasets_input(tmp_path: Path) -> None:
    good = png_bytes(gradient(32, 32))
    path = write_hf_parquet(tmp_path / "train.parquet", [good, None, good], ["a", "b", None])
    report = _inspect(str(path))
    assert report.layout.kind == "hf_datasets"
    assert (report.counts["ok"], report.counts["missing_image"], report.counts["empty_text"]) == (
        1,
        1,
        1,
    )
    assert report.examples["missing_image"][0]["key"] == "train_000001"


def test_cli_prints_layout_files_and_a_table(mixed_folder: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(mixed_folder)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "layout:       img2dataset" in out
    assert "00001.parquet  2 rows" in out
    assert "rows:         12" in out
    lines = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line[:1].isalpha() and len(line.split()) == 3
    }
    for outcome, count in EXPECTED.items():
        assert lines[outcome] == str(count)


def test_cli_names_the_columns_of_hive_partition_folders(tmp_path: Path) -> None:
    image = jpeg_bytes(gradient(32, 32))
    write_pairs_parquet(tmp_path / "d" / "lang=en" / "0.parquet", [{"image": image, "text": "a"}])
    write_pairs_parquet(tmp_path / "d" / "1.parquet", [{"image": image, "text": "b", "n": 1}])
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "passthrough:  n, lang\n" in result.stdout
    assert "lang from Hive partition folders" in result.stdout
    as_json = CliRunner().invoke(main, ["inspect", str(tmp_path / "d"), "--json"])
    assert json.loads(as_json.stdout)["partition_columns"] == ["lang"]


def test_cli_prints_keys_and_details_from_the_data_escaped(tmp_path: Path) -> None:
    good = jpeg_bytes(gradient(32, 32))
    table = pa.table(
        {
            "key": ["\x1b]0;title\x07\x1b[2Jk", "\x1b]0;title\x07\x1b[2Jk", "abc\u202etxt"],
            "jpg": [good, good, good],
            "caption": ["a", "b", ""],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not any(char in result.stdout for char in "\x1b\x07\u202e")
    assert "\n  \\x1b]0;title\\x07\\x1b[2Jk: key '\\x1b]0;title" in result.stdout
    assert "abc\\u202etxt" in result.stdout


def test_a_row_group_that_cannot_be_read_counts_its_rows_as_errors(tmp_path: Path) -> None:
    good = jpeg_bytes(gradient(32, 32))
    path = tmp_path / "damaged.parquet"
    table = pa.table({"key": [f"k{i}" for i in range(6)], "image": [good] * 6, "text": ["t"] * 6})
    pq.write_table(table, path, row_group_size=3, use_dictionary=False)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 12] = b"\xff" * 12  # the second row group's page header
    path.write_bytes(bytes(data))
    report = _inspect(str(path))
    assert report.rows == 6 and report.counts["error"] == 3 and report.counts["ok"] == 3
    example = report.examples["error"][0]
    assert example["key"] == "damaged_000003" and example["detail"].startswith("read: OSError")


def test_cli_json_is_one_object_with_the_counts(mixed_folder: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["counts"] == EXPECTED and data["rows"] == 12
    assert data["layout"]["image_column"] == "jpg"
    assert result.stderr == ""


def test_cli_column_options_are_applied(tmp_path: Path) -> None:
    path = write_hf_parquet(tmp_path / "t.parquet", [png_bytes(gradient(16, 16))], ["a"])
    result = CliRunner().invoke(main, ["inspect", str(path), "--text-column", "source", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layout"]["text_column"] == "source"


def test_cli_missing_column_exits_2_naming_file_and_column(mixed_folder: Path) -> None:
    path = str(mixed_folder / "00000.parquet")
    result = CliRunner().invoke(main, ["inspect", path, "--text-column", "alt_text"])
    assert result.exit_code == 2
    assert path in result.stderr and "'alt_text'" in result.stderr
    assert "Traceback" not in result.output


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.parquet")])
    assert result.exit_code == 2
    assert "nope.parquet" in result.stderr


def test_cli_not_parquet_exits_2(tmp_path: Path) -> None:
    fake = tmp_path / "data.parquet"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not parquet" * 10)
    result = CliRunner().invoke(main, ["inspect", str(fake)])
    assert result.exit_code == 2
    assert f"{fake}: not a Parquet file" in result.stderr


def test_progress_goes_to_stderr_and_json_stays_quiet(
    mixed_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("curation.inspect._PROGRESS_EVERY_S", 0.0)  # report on every row
    table = CliRunner().invoke(main, ["inspect", str(mixed_folder)])
    assert "12/12" in table.stderr and "rows/s" in table.stderr
    assert "12/12" not in table.stdout
    quiet = CliRunner().invoke(main, ["inspect", str(mixed_folder), "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
