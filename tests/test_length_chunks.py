"""Chunks of similar length: every row once, bounded rows and bounded padding."""

from __future__ import annotations

import pytest
import torch

from models.length_chunks import PADDING_ALLOWED, length_chunks


def test_every_row_is_in_one_chunk_of_bounded_rows_and_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 36, (500,), generator=generator)
    chunks = length_chunks(lengths, max_rows=64)
    rows = torch.cat(chunks)
    assert sorted(rows.tolist()) == list(range(500))
    assert len(chunks) > 500 // 64
    for chunk in chunks:
        assert 1 <= len(chunk) <= 64
        real = int(lengths[chunk].sum())
        padded = len(chunk) * int(lengths[chunk].max())
        if len(chunk) > 1:
            assert padded <= (1 + PADDING_ALLOWED) * real
    # shortest first: a later chunk never holds a shorter row than an earlier one's longest
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert int(lengths[first].max()) <= int(lengths[second].min())


def test_equal_lengths_fill_chunks_to_the_row_limit() -> None:
    chunks = length_chunks(torch.full((10,), 7), max_rows=4)
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]


def test_a_row_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        length_chunks(torch.tensor([1, 2]), max_rows=0)
