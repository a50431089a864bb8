"""Noun phrases of a caption, found from closed word classes (no part-of-speech tagger).

Captions are short and regular. A noun phrase opens with a determiner or number ("a",
"the", "two") or with any other open-class word after a boundary, runs over open-class
words, and ends before the next boundary word (preposition, conjunction, common verb,
pronoun, comma) or determiner; its last word is the head noun, the words between determiner and head
its modifiers. "a man riding a brown horse on the beach" gives "a man", "a brown horse"
(modifier "brown", head "horse") and "the beach".

The word lists are English closed classes plus the commonest caption verbs, so the split
works on any English caption dataset without a model; it misreads some words (a verb not in
the list is read as part of a noun phrase). Small well-kept taggers need a data download
at run time (NLTK) or come from outside the package registry (spaCy's models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split(" "))


DETERMINERS = _word_set(
    "a an the this that these those some any two three four five six seven eight nine ten "
    "several many few one another each every both his her its their my your our no"
)
PREPOSITIONS = _word_set(
    "on in at of to with by near under over above below behind beside besides between into "
    "onto from for through across along around inside outside against toward towards "
    "beneath underneath atop next up down off out like without within upon among amid "
    "about after before during while"
)
CONJUNCTIONS = _word_set("and or but nor , ;")
VERBS = _word_set(
    "is are was were be been being has have had sits sit sitting stands stand "
    "standing holds holding hold rides riding ride lies lying laying walks walking eats "
    "eating plays playing looks looking flies flying wears wearing carries carrying runs "
    "running shows showing shown parked covered filled made sitting stacked placed "
    "hanging waiting watching using doing going getting"
)
PRONOUNS = _word_set("there it they he she we i you them him")
BOUNDARIES = PREPOSITIONS | CONJUNCTIONS | VERBS | PRONOUNS
#: Words that join two noun phrases without ordering them: exchanging the phrases on either
#: side of only these words keeps the meaning ("a cat and a dog", "a cat next to a dog").
SYMMETRIC = _word_set("and or , ; with next to beside near by & plus")

_WORD = re.compile(r"[^\s,;]+|[,;]")


def words_of(text: str) -> list[str]:
    """Lowercase words of ``text``, with commas and semicolons as words of their own."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Chunk:
    """A noun phrase: words ``start`` to ``head`` (inclusive); ``determiner`` tells whether
    word ``start`` is a determiner."""

    start: int
    head: int
    determiner: bool

    @property
    def modifiers(self) -> range:
        """Indices of the words between the determiner and the head."""
        return range(self.start + int(self.determiner), self.head)

    def text(self, words: list[str]) -> str:
        return " ".join(words[self.start : self.head + 1])


def is_open(word: str) -> bool:
    """Whether ``word`` can be part of a noun phrase after its determiner."""
    return word not in BOUNDARIES and word not in DETERMINERS


def chunks(words: list[str]) -> list[Chunk]:
    """The noun phrases of ``words`` in order; a determiner with no open word after it
    ("the" at the end of a cut text) is no phrase."""
    found: list[Chunk] = []
    i = 0
    while i < len(words):
        start = i
        determiner = words[i] in DETERMINERS
        j = i + 1 if determiner else i
        while j < len(words) and is_open(words[j]):
            j += 1
        if j > start + int(determiner):
            found.append(Chunk(start, j - 1, determiner))
            i = j
        else:
            i = max(j, i + 1)
    return found


def heads(words: list[str]) -> set[int]:
    """Indices of the head nouns of ``words``: the words a complete phrase ends on."""
    return {chunk.head for chunk in chunks(words)}


def symmetric_between(words: list[str], first: Chunk, second: Chunk) -> bool:
    """True when only :data:`SYMMETRIC` words stand between two phrases (in either order)."""
    a, b = sorted((first, second), key=lambda c: c.start)
    between = words[a.head + 1 : b.start]
    return all(word in SYMMETRIC for word in between)
