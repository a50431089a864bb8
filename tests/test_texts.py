"""Web texts: stored as they came (as far as UTF-8 allows), cleaned and bounded for the models."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.texts import (
    DEFAULT_MAX_CHARS,
    REPLACEMENT,
    ModelText,
    empty_detail,
    model_text,
    printable,
    stored_text,
)


def test_valid_texts_are_stored_unchanged() -> None:
    text = "Café «Zürich» 東京 🐕\x00 tab\tand\nnewline \u200b " + "long " * 30_000
    assert stored_text(text) is text
    assert stored_text(text.encode("utf-8")) == text
    assert stored_text(None) is None


def test_invalid_utf8_bytes_are_stored_as_replacement_characters() -> None:
    raw = b"caf\xc3\xa9 \xff\xfe ok \xed\xa0\x80 end \xe2\x82"  # bad bytes, a surrogate, a cut
    assert stored_text(raw) == "café \ufffd\ufffd ok \ufffd\ufffd\ufffd end \ufffd"


def test_lone_surrogates_are_replaced_and_split_pairs_joined() -> None:
    assert stored_text("a\ud800b\udfffc") == "a\ufffdb\ufffdc"
    assert stored_text("dog \ud83d\udc15") == "dog 🐕"  # a pair kept as two code points


def test_stored_texts_survive_a_parquet_round_trip(tmp_path) -> None:
    raws = [b"ok", b"bad \xff", "lone \udc80", "nul \x00 and \x1b[31m", None, "x" * 200_000]
    stored = [stored_text(raw) for raw in raws]
    with pytest.raises(UnicodeEncodeError):
        pa.array(["lone \udc80"])  # what Parquet cannot take
    pq.write_table(pa.table({"text": stored}), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("text").to_pylist() == stored


def test_clean_text_has_no_note() -> None:
    assert model_text("  A photo of\ta dog,\n on the   beach ") == ModelText(
        "A photo of a dog, on the beach", ""
    )
    assert model_text("Café 東京 🐕 ½") == ModelText("Café 東京 🐕 ½", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\x00b", ModelText("ab", "1 control or invisible character removed")),
        (
            "bell\x07 esc\x1b[0m",
            ModelText("bell esc[0m", "2 control or invisible characters removed"),
        ),
        (
            "zero\u200bwidth\ufeff",
            ModelText("zerowidth", "2 control or invisible characters removed"),
        ),
        (
            "\u202eevil\u202c txt",
            ModelText("evil txt", "2 control or invisible characters removed"),
        ),
        ("lone \ud800 half", ModelText("lone half", "1 control or invisible character removed")),
        ("bad \ufffd\ufffd bytes", ModelText("bad bytes", "2 invalid characters (U+FFFD) removed")),
        (
            "x\x00\ufffd",
            ModelText(
                "x",
                "1 control or invisible character removed; 1 invalid character (U+FFFD) removed",
            ),
        ),
    ],
)
def test_control_and_invisible_characters_are_removed_with_a_note(
    text: str, expected: ModelText
) -> None:
    assert model_text(text) == expected


def test_long_texts_are_cut_for_the_models_and_the_note_says_so() -> None:
    text = "word " * 30_000  # 150,000 characters
    cleaned = model_text(text)
    assert len(cleaned.text) <= DEFAULT_MAX_CHARS and cleaned.text.startswith("word word")
    assert cleaned.note == f"text cut to {DEFAULT_MAX_CHARS} of 149999 characters for the models"
    assert model_text("abcdef", max_chars=4) == ModelText(
        "abcd", "text cut to 4 of 6 characters for the models"
    )
    with pytest.raises(ValueError, match="max_chars"):
        model_text("abc", max_chars=0)


@pytest.mark.parametrize("text", [None, "", "   ", "\x00\x00", "\u200b\ufeff \t\n", "\ufffd"])
def test_texts_empty_after_cleaning_are_empty(text: str | None) -> None:
    assert model_text(text).text == ""


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(text=st.text(st.characters(codec=None)), max_chars=st.integers(1, 64))
def test_model_texts_are_printable_bounded_and_stable(text: str, max_chars: int) -> None:
    cleaned = model_text(text, max_chars).text
    assert len(cleaned) <= max_chars
    assert cleaned == cleaned.strip() and "  " not in cleaned
    assert REPLACEMENT not in cleaned
    assert all(char.isprintable() or char == " " for char in cleaned if not _unassigned(char))
    cleaned.encode("utf-8")  # no surrogates left
    assert model_text(cleaned, max_chars) == ModelText(cleaned, "")


def _unassigned(char: str) -> bool:
    """Private-use and unassigned characters stay: the models' tokenizers decide on them."""
    return unicodedata.category(char) in ("Co", "Cn")


def test_printable_escapes_what_a_terminal_would_act_on_and_bounds_the_length() -> None:
    hostile = "key\x1b]0;title\x07\x1b[2J\r\nabc\u202etxt.exe\u200b\ud800"
    out = printable(hostile)
    assert out == "key\\x1b]0;title\\x07\\x1b[2J\\r\\nabc\\u202etxt.exe\\u200b\\ud800"
    assert out.isprintable()
    assert (
        printable("Café 東京 🐕 \u0627\u0644") == "Café 東京 🐕 \u0627\u0644"
    )  # readable text stays
    assert printable("x" * 500, 100) == "x" * 100 + "... (400 more characters)"
    assert printable(None) == "None" and printable(12) == "12"


def test_an_empty_text_says_why_it_is_empty() -> None:
    assert empty_detail(None) == "no text (null)"
    assert empty_detail("") == "empty text" and empty_detail(" \t\n") == "blank text"
    assert empty_detail("\u200b\u200b") == (
        "nothing left for the models: 2 control or invisible characters removed"
    )
    assert "invalid character (U+FFFD) removed" in empty_detail(REPLACEMENT)
