"""Choosing the next caption token: CapFilt's logits rules and per-row seeded sampling.

The rules are those of salesforce/BLIP ``generate(sample=True)`` as transformers applies
them, in the same order and with the same floating-point operations: repetition penalty
over every token already in the row (prompt included), no end token before the minimum
length, top-k, then top-p (nucleus). Every tensor keeps its shape from step to step (a
``seen`` mask instead of a growing token list, the step as a tensor), so a decoding step
can be captured in a CUDA graph.

Sampling is greedy decoding over log-probabilities plus Gumbel(0, 1) noise, which draws
from the filtered distribution. The noise is a counter-based hash of (key, seed, caption
index, step, token), so a caption depends on its image and key only, never on which other
images share its batch, and the same numbers are drawn on CPU and GPU.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF


def row_seeds(keys: Sequence[str], seed: int, captions_per_image: int) -> torch.Tensor:
    """Two 32-bit words per (key, caption index), from sha256, key-major (K rows per key)."""
    words = []
    for key in keys:
        for index in range(captions_per_image):
            digest = hashlib.sha256(f"{seed}\x00{index}\x00{key}".encode()).digest()
            words.append(
                (int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little"))
            )
    return torch.tensor(words, dtype=torch.int64).reshape(-1, 2)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 integer hash on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(
    seeds: torch.Tensor, step: int | torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Gumbel(0, 1) noise for token ids ``tokens`` (``vocab`` for all rows, or ``rows x n``), a
    pure function of (seed row, step, token id).

    ``step`` is the row length before the token is drawn (prompt included), a Python int or
    a 0-dim int64 tensor on the seeds' device.
    """
    step = torch.as_tensor(step, dtype=torch.int64, device=seeds.device)
    step_word = _mix32(step * 0x9E3779B9 + 0x632BE5AB)
    state = _mix32(seeds[:, 0] ^ _mix32(seeds[:, 1] ^ step_word))
    bits = _mix32(state[:, None] ^ _mix32(tokens.to(torch.int64) * 0x9E3779B1)) >> 8
    uniform = (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(uniform))


def top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Scores outside the top k, then outside the nucleus of mass ``top_p``, set to -inf.

    As transformers' ``TopKLogitsWarper`` then ``TopPLogitsWarper`` (ties at the k-th score
    kept; the most probable token always kept), sorting the whole vocabulary.
    """
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), -math.inf)
    return scores


def _top_candidates(
    scores: torch.Tensor, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same filter as :func:`top_k_top_p` without sorting the vocabulary: the ``2k`` best
    scores (descending, -inf where filtered) and their token ids.

    transformers' top-p sorts the whole row, in which the tokens outside the top k are -inf
    and come first; that row is rebuilt here from the candidates, so the softmax and the
    cumulative sum see the same numbers in the same places. Ties at the k-th score are kept
    as transformers keeps them, up to ``k`` of them.
    """
    vocab = scores.shape[-1]
    values, index = torch.topk(scores, min(2 * top_k, vocab))
    values = values.masked_fill(values < values[:, top_k - 1 : top_k], -math.inf)
    if top_p < 1.0:
        ascending = values.flip(-1)
        row = torch.cat(
            [ascending.new_full((len(values), vocab - ascending.shape[1]), -math.inf), ascending],
            dim=1,
        )
        cumulative = row.softmax(dim=-1).cumsum(dim=-1)[:, -ascending.shape[1] :]
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        values = values.masked_fill(remove.flip(-1), -math.inf)
    return values, index


class TokenSampler:
    """The next token of each row from its logits, under CapFilt's decoding rules.

    ``sample``: a draw from the filtered distribution (top-k, top-p) with the rows' seeded
    noise; otherwise the most probable token (greedy decoding).
    """

    def __init__(
        self,
        *,
        end_token_id: int,
        repetition_penalty: float,
        min_length: int,
        sample: bool = True,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> None:
        self.sample = sample
        self.end_token_id = end_token_id
        self.repetition_penalty = repetition_penalty
        self.min_length = min_length
        self.top_k = top_k
        self.top_p = top_p

    def __call__(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor,
        length: torch.Tensor,
        seeds: torch.Tensor,
    ) -> torch.Tensor:
        """Token ids ``rows``; ``logits`` float32 ``rows x vocab``, ``seen`` the boolean mask of
        tokens already in each row, ``length`` the rows' length (0-dim int64 tensor),
        ``seeds`` the rows' :func:`row_seeds`."""
        scores = logits
        if self.repetition_penalty != 1.0:
            penalty = self.repetition_penalty
            penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
            scores = torch.where(seen, penalised, scores)
        if self.min_length > 0:
            end = scores[:, self.end_token_id]
            blocked = end.masked_fill(length < self.min_length, -math.inf)
            scores = scores.clone() if scores is logits else scores
            scores[:, self.end_token_id] = blocked
        if not self.sample:
            return scores.argmax(dim=-1)
        if not 0 < self.top_k < scores.shape[-1]:
            scores = top_k_top_p(scores, self.top_k, self.top_p)
            tokens = torch.arange(scores.shape[-1], device=scores.device)
            noise = gumbel_noise(seeds, length, tokens)
            return (scores.float().log_softmax(dim=-1) + noise).argmax(dim=-1)
        # Only the candidates can be drawn: noise for them alone, log-probabilities over the
        # whole filtered row (as the full computation normalises them).
        values, index = _top_candidates(scores, self.top_k, self.top_p)
        filtered = torch.full_like(scores, -math.inf).scatter_(1, index, values)
        log_probs = filtered.float().log_softmax(dim=-1).gather(1, index)
        choice = (log_probs + gumbel_noise(seeds, length, index)).argmax(dim=-1, keepdim=True)
        return index.gather(1, choice)[:, 0]
