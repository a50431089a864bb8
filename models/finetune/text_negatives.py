"""Extra ITM negatives made from the positive texts themselves.

In-batch negatives teach the filter to reject another image's text, and hard negatives
drawn from the ITC similarities to reject a text that differs in a detail. Neither shows it
a text cut short: a truncated alt-text mentions only true things, so a filter trained on
in-batch negatives alone tends to accept it. ``--truncated-negatives SHARE`` adds, for that
share of the pairs, the pair's own text cut after a random word of its second half as one
more negative of its image. Use it when complete texts are what you want to keep (a caption
that is a true prefix of a longer one is then rejected too).
"""

from __future__ import annotations

import random

#: Texts with fewer words are never cut.
MIN_WORDS = 4


def truncate_words(text: str, rng: random.Random) -> str | None:
    """``text`` cut after a random word, keeping at least half and dropping at least one word.

    ``None`` for a text of fewer than :data:`MIN_WORDS` words.
    """
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    keep = rng.randint((len(words) + 1) // 2, len(words) - 1)
    return " ".join(words[:keep])


def truncated_negatives(
    texts: list[str], share: float, rng: random.Random
) -> tuple[list[int], list[str]]:
    """Rows chosen with probability ``share`` and their texts cut short (rows whose text is
    too short to cut are skipped)."""
    rows: list[int] = []
    cut: list[str] = []
    if share <= 0:
        return rows, cut
    for row, text in enumerate(texts):
        if rng.random() < share and (short := truncate_words(text, rng)) is not None:
            rows.append(row)
            cut.append(short)
    return rows, cut
