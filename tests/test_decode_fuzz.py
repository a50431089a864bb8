"""Fuzzing the decoder: mutated files of every web format and random bytes.

Whatever the input, ``decode_image`` returns a DecodedImage or raises a DecodeError (never
another exception, never a PIL warning), and each call ends within a generous bound. Inputs:
truncation at every region of every sample (exhaustive), and, drawn by Hypothesis with a fixed
derandomised seed, header fields set to extreme values (sizes, counts, offsets; PNG CRCs fixed
so the values reach the parsers), bit flips, reordered/dropped/repeated chunks, markers, boxes
and IFD entries, and random bytes with and without a real signature.
"""

from __future__ import annotations

import time
import warnings
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import format_samples
from mutations import cut_points, extremes, fix_png_crcs, flip_bits, layout, reorder, set_field

from curation.decode import DecodedImage, DecodeError, decode_image

SAMPLES = format_samples()
NAMES = sorted(SAMPLES)
SLOWEST_CALL_S = 10.0  # inputs are a few KiB: a call this slow means a hang, not a big image
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=SLOWEST_CALL_S),
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(data: bytes, size: int | None = 24) -> DecodedImage | DecodeError:
    """Decode with every warning as an error; only the two allowed outcomes come back."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result: DecodedImage | DecodeError = decode_image(data, size)
        except DecodeError as err:
            result = err
    elapsed = time.perf_counter() - start
    assert elapsed < SLOWEST_CALL_S, f"decode took {elapsed:.1f} s"
    if isinstance(result, DecodedImage) and size is not None:
        assert result.pixels is not None and result.pixels.shape == (size, size, 3)
    return result


@pytest.mark.parametrize("name", NAMES)
def test_truncation_at_every_region(name: str) -> None:
    data = SAMPLES[name]
    for cut in cut_points(data):
        outcome(data[:cut], size=24 if cut % 2 else None)


@pytest.mark.parametrize("name", NAMES)
@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_header_fields_at_extreme_values(name: str, data: st.DataObject) -> None:
    source = SAMPLES[name]
    fields = layout(source).fields
    target = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(st.sampled_from(extremes(target.width)), label="value")
    outcome(set_field(source, target, value))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(
    positions=st.lists(st.integers(min_value=0, max_value=2**20), min_size=1, max_size=16),
    fix_crcs=st.booleans(),
)
def test_bit_flips(name: str, positions: list[int], fix_crcs: bool) -> None:
    mutated = flip_bits(SAMPLES[name], positions)
    outcome(fix_png_crcs(mutated) if fix_crcs else mutated)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(order=st.lists(st.integers(min_value=0, max_value=63), max_size=24))
def test_units_reordered_dropped_or_repeated(name: str, order: list[int]) -> None:
    outcome(reorder(SAMPLES[name], order))


SIGNATURES = sorted({SAMPLES[name][:16] for name in NAMES})


@settings(FUZZ, max_examples=300)
@given(
    prefix=st.sampled_from([b""] + SIGNATURES),
    body=st.binary(max_size=2048),
    size=st.sampled_from([None, 24]),
)
def test_random_bytes(prefix: bytes, body: bytes, size: int | None) -> None:
    outcome(prefix + body, size)
