"""Token choice: transformers' logits rules with static shapes, and seeded sampling."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from models.sampling import TokenSampler, _top_candidates, gumbel_noise, row_seeds, top_k_top_p


def test_filters_equal_transformers_warpers_bit_for_bit():
    scores = torch.randn(64, 500, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.zeros(64, 1, dtype=torch.long)
    for top_k, top_p in [(50, 0.9), (5, 0.5), (0, 0.9), (20, 1.0)]:
        expected = scores
        if top_k:
            expected = TopKLogitsWarper(top_k)(ids, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(ids, expected)
        assert torch.equal(top_k_top_p(scores, top_k, top_p), expected)
        kept = torch.isfinite(expected).sum(dim=-1)
        assert kept.min() >= 1 and (top_k == 0 or kept.max() <= top_k)


def test_penalty_and_min_length_equal_transformers_processors():
    """Greedy choice over the penalised scores, with the end token blocked before min length."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(8, 40, generator=generator)
    history = torch.randint(0, 40, (8, 7), generator=generator)
    end = int(scores.argmax(dim=-1)[0])  # the end token would win row 0 if it were allowed
    history[0] = (end + 1) % 40  # and is not penalised there
    sampler = TokenSampler(end_token_id=end, repetition_penalty=1.3, min_length=7, sample=False)
    for length in (6, 7):
        seen = torch.zeros(8, 40, dtype=torch.bool).scatter_(1, history[:, :length], True)
        expected = RepetitionPenaltyLogitsProcessor(1.3)(history[:, :length], scores.clone())
        expected = MinLengthLogitsProcessor(7, end)(history[:, :length], expected)
        got = sampler(scores, seen, torch.tensor(length), row_seeds(["k"] * 8, 0, 1))
        assert torch.equal(got, expected.argmax(dim=-1))
        assert (got[0] == end) == (length == 7)


def test_seeded_sampling_draws_from_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -6.0]])
    rows = 20000
    seeds = row_seeds([f"key-{i}" for i in range(rows)], seed=0, captions_per_image=1)
    sampler = TokenSampler(end_token_id=7, repetition_penalty=1.0, min_length=0, top_k=5, top_p=0.9)
    seen = torch.zeros(rows, 8, dtype=torch.bool)
    picks = sampler(logits.repeat(rows, 1), seen, torch.tensor(3), seeds)
    counts = torch.bincount(picks, minlength=8).double() / rows
    # Expected: top-5, then the smallest set of top tokens with mass >= 0.9 (HF TopPLogitsWarper).
    probs = logits[0, :5].softmax(-1)
    keep = 4 if probs[:4].sum() >= 0.9 else 5
    expected = torch.zeros(8, dtype=torch.double)
    expected[:keep] = logits[0, :keep].double().softmax(-1)
    assert torch.allclose(counts, expected, atol=0.015)
    assert counts[keep:].sum() == 0
    # The same rows at the next step draw fresh noise.
    later = sampler(logits.repeat(rows, 1), seen, torch.tensor(4), seeds)
    assert (later != picks).float().mean() > 0.3


def test_noise_is_a_function_of_seed_step_and_token():
    seeds = row_seeds(["a", "b"], seed=0, captions_per_image=2)
    vocab = torch.arange(100)
    noise = gumbel_noise(seeds, 5, vocab)
    assert noise.shape == (4, 100)
    assert torch.equal(noise, gumbel_noise(seeds, torch.tensor(5), vocab))
    assert torch.equal(noise[2:], gumbel_noise(seeds[2:], 5, vocab))
    assert not torch.equal(noise, gumbel_noise(seeds, 6, vocab))
    assert len({tuple(row.tolist()) for row in noise}) == 4
    # Noise for some token ids per row is the same numbers as for the whole vocabulary.
    picked = torch.tensor([[3, 99], [0, 50], [7, 7], [42, 1]])
    assert torch.equal(gumbel_noise(seeds, 5, picked), noise.gather(1, picked))


def _penalised(logits, seen):
    scores = torch.where(seen, torch.where(logits < 0, logits * 1.1, logits / 1.1), logits)
    scores[:, 0] = -torch.inf  # the end token, before the minimum length
    return scores


def _full_vocabulary_draw(logits, seen, seeds, top_k, top_p):
    scores = top_k_top_p(_penalised(logits, seen), top_k, top_p)
    noise = gumbel_noise(seeds, 4, torch.arange(logits.shape[1]))
    return scores, (scores.log_softmax(dim=-1) + noise).argmax(dim=-1)


@pytest.mark.parametrize("ties", [False, True])
def test_candidate_sampling_equals_sampling_over_the_whole_vocabulary(ties):
    """The top-k candidates path draws the token the full-vocabulary path draws. With tied
    scores, ties at the k-th score are kept as transformers keeps them; which of several
    equal scores falls at the nucleus edge is arbitrary in both (an unstable sort), so only
    the nucleus size is compared there."""
    generator = torch.Generator().manual_seed(2)
    rows, vocab = 300, 1000
    logits = torch.randn(rows, vocab, generator=generator) * 2
    if ties:
        logits = (logits * 32).round() / 32  # about bf16 resolution
    seeds = row_seeds([f"k{i}" for i in range(rows)], seed=1, captions_per_image=1)
    seen = torch.zeros(rows, vocab, dtype=torch.bool)
    seen[:, :40] = True
    for top_k, top_p in [(50, 0.9), (10, 0.5), (50, 1.0), (1, 0.9)]:
        sampler = TokenSampler(
            end_token_id=0, repetition_penalty=1.1, min_length=5, top_k=top_k, top_p=top_p
        )
        got = sampler(logits, seen, torch.tensor(4), seeds)
        scores, expected = _full_vocabulary_draw(logits, seen, seeds, top_k, top_p)
        if ties and top_p < 1.0 and top_k > 1:
            values, _ = _top_candidates(_penalised(logits, seen), top_k, top_p)
            assert torch.equal(values.isfinite().sum(-1), scores.isfinite().sum(-1))
        else:
            assert torch.equal(got, expected)
    if ties:  # ties at the k-th score did occur, and were kept
        kth = torch.topk(logits, 50).values[:, -1:]
        assert ((logits >= kth).sum(dim=-1) > 50).any()
