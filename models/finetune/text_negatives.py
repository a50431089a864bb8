"""Extra ITM texts made from the training captions themselves.

In-batch negatives teach the filter to reject another image's text, and hard negatives
drawn from the ITC similarities to reject a text that differs in a detail. Neither shows
it a text whose words all belong to its image but are put together wrongly, so a filter
trained on them alone scores a caption much like a bag of words (Yuksekgonul et al. 2023,
"When and why vision-language models behave like bags-of-words"; their NegCLIP trains
with such negatives). Three kinds of extra texts fill the gap:

- **Composition negatives** (``--composition-negatives SHARE``): the caption with its
  words kept and its meaning broken (:data:`TRANSFORMS`): two noun phrases' modifiers or
  head nouns exchanged, two noun phrases exchanged, or a few neighbouring words shuffled
  across a phrase boundary. Noun phrases come from :mod:`models.finetune.phrases`.
- **Truncated negatives** (``--truncated-negatives SHARE``): the caption broken off inside
  a phrase. A cut after a complete phrase is a partial but true text and is never used.
- **Partial positives** (``--partial-positives SHARE``, a domain that can tell which parts
  of a caption are true on their own): a text describing some of the image, as a positive.
- **Reworded positives** (``--reworded-positives SHARE``): the caption with an opening
  ("a photo of") or words the tokenizer does not know inserted (up to one in four, at
  least three), as a positive;
  the other extra texts are reworded at the same rate, so wording says nothing of the match.
  A filter whose tokenizer was built from its training captions otherwise rejects correct
  texts that use other words.
- **Rephrased positives** (``--rephrased-positives SHARE``): the caption said another way
  with the same words and meaning (:func:`rephrase`): the clauses of a list in another
  order, a clause's place first or stated with a verb ("on the left is a red ball"), or
  a noun phrase's modifiers in another order ("a red big ball"), as a positive; the other
  extra texts are rephrased at the same rate, so that the order of clauses and of a
  phrase's modifiers says nothing of the match, while which phrase a word belongs to
  still does.
- **Unreadable negatives** (``--unreadable-negatives SHARE``): the caption with every
  open-class word replaced by the unknown-word token (half of them also with some known
  words dropped and the rest shuffled), as a negative: a text with nothing the filter can
  check (spam, to a small domain vocabulary) is not kept. Use it with
  reworded positives, which otherwise teach that unknown words are harmless.

A :class:`TextDomain` makes them; :class:`ShapesDomain` knows the shapes grammar exactly
(it adds attribute and position exchanges between objects, and checks every negative with
the parser, so that none is true of its image).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from curation.shapes import (
    Scene,
    caption,
    exchange_attribute,
    exchange_positions,
    is_true_of,
    parse_caption,
    partial_scene,
)
from models.finetune.phrases import (
    PREPOSITIONS,
    Chunk,
    chunks,
    heads,
    is_open,
    symmetric_between,
    words_of,
)
from models.finetune.settings import DomainName, ExtraTextShares

#: Texts with fewer words are never cut.
MIN_WORDS = 4
#: Openings that captions often start with, and that say nothing of the image.
OPENINGS = ("a picture of", "an image of", "a photo of", "there is", "this is")
#: Words that join two phrases of a list; one may be dropped without changing the meaning.
JOINERS = frozenset({"and", ","})
#: Words that join the clauses of a list, which may come in any order.
LIST_JOINERS = frozenset({"and", ",", ";"})
#: Ways to say where a thing is.
PLACE_WORDINGS = (
    "{noun} {place}",
    "{place} {noun}",
    "{place} is {noun}",
    "{place} there is {noun}",
    "{noun} is {place}",
    "there is {noun} {place}",
)
#: Width of the word-order shuffle window.
SHUFFLE_WINDOW = 3

Transform = Callable[[list[str], random.Random], list[str] | None]


def truncate_words(text: str, rng: random.Random) -> str | None:
    """``text`` cut inside a phrase, keeping at least half and dropping at least one word.

    The kept part never ends on a head noun (:func:`models.finetune.phrases.heads`): it ends
    on a determiner, a modifier, a preposition or a conjunction. ``None`` for a text of
    fewer than :data:`MIN_WORDS` words or with no such cut.
    """
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    ends = heads(words_of(" ".join(words)))
    # Words of text.split() and words_of() differ only by commas split off; map back.
    cuts = [
        k for k in range((len(words) + 1) // 2, len(words)) if _last_index(words, k) not in ends
    ]
    return " ".join(words[: rng.choice(cuts)]) if cuts else None


def _last_index(words: list[str], keep: int) -> int:
    """Index in ``words_of`` of the last word of ``words[:keep]``."""
    return len(words_of(" ".join(words[:keep]))) - 1


def _pairs(found: list[Chunk], rng: random.Random) -> list[tuple[Chunk, Chunk]]:
    pairs = [(a, b) for i, a in enumerate(found) for b in found[i + 1 :]]
    rng.shuffle(pairs)
    return pairs


def _exchanges_phrases(words: list[str], new: list[str], a: Chunk, b: Chunk) -> bool:
    """True when ``new`` is ``words`` with phrases ``a`` and ``b`` exchanged around only
    symmetric words: the same meaning ("a red ball and a blue ball" -> "a blue ball and a red
    ball")."""
    same = " ".join(new[a.start : a.head + 1]) == b.text(words) and " ".join(
        new[b.start : b.head + 1]
    ) == a.text(words)
    return same and symmetric_between(words, a, b)


def swap_modifiers(words: list[str], rng: random.Random) -> list[str] | None:
    """Exchange one modifier between two noun phrases, counted from the head ("a small red
    circle and a large blue square" -> "a small blue circle and a large red square")."""
    for a, b in _pairs(chunks(words), rng):
        depth = min(len(a.modifiers), len(b.modifiers))
        for d in rng.sample(range(1, depth + 1), depth):
            i, j = a.head - d, b.head - d
            if words[i] == words[j]:
                continue
            new = list(words)
            new[i], new[j] = words[j], words[i]
            if not _exchanges_phrases(words, new, a, b):
                return new
    return None


def _open_alike(words: list[str], a: Chunk, b: Chunk) -> bool:
    """Both phrases open with the same determiner, or both without one."""
    return a.determiner == b.determiner and (not a.determiner or words[a.start] == words[b.start])


def swap_heads(words: list[str], rng: random.Random) -> list[str] | None:
    """Exchange the head nouns of two noun phrases that open alike ("a man riding a horse"
    -> "a horse riding a man")."""
    for a, b in _pairs(chunks(words), rng):
        if words[a.head] == words[b.head] or not _open_alike(words, a, b):
            continue
        new = list(words)
        new[a.head], new[b.head] = words[b.head], words[a.head]
        if not _exchanges_phrases(words, new, a, b):
            return new
    return None


def swap_phrases(words: list[str], rng: random.Random) -> list[str] | None:
    """Exchange two whole noun phrases that open alike (both with or both without a
    determiner), unless only symmetric words ("and", "next to") stand between them."""
    for a, b in _pairs(chunks(words), rng):
        if (
            a.text(words) == b.text(words)
            or not _open_alike(words, a, b)
            or symmetric_between(words, a, b)
        ):
            continue
        first, second = sorted((a, b), key=lambda c: c.start)
        return (
            words[: first.start]
            + words[second.start : second.head + 1]
            + words[first.head + 1 : second.start]
            + words[first.start : first.head + 1]
            + words[second.head + 1 :]
        )
    return None


def shuffle_words(words: list[str], rng: random.Random) -> list[str] | None:
    """Shuffle :data:`SHUFFLE_WINDOW` neighbouring words that span a phrase boundary, so
    that a closed-class word (determiner, preposition, conjunction, verb) moves among the
    open ones: word order, not just the words, carries meaning. Reordering open words alone
    ("a big circle red") could keep the meaning and is never done."""
    starts = [
        s
        for s in range(len(words) - SHUFFLE_WINDOW + 1)
        if any(is_open(w) for w in words[s : s + SHUFFLE_WINDOW])
        and not all(is_open(w) for w in words[s : s + SHUFFLE_WINDOW])
    ]
    if not starts:
        return None
    s = rng.choice(starts)
    window = words[s : s + SHUFFLE_WINDOW]
    closed = [is_open(w) for w in window]
    orders = [
        order
        for order in itertools.permutations(range(SHUFFLE_WINDOW))
        if [is_open(window[i]) for i in order] != closed
    ]
    order = rng.choice(orders)
    return words[:s] + [window[i] for i in order] + words[s + SHUFFLE_WINDOW :]


TRANSFORMS: dict[str, Transform] = {
    "modifiers": swap_modifiers,
    "heads": swap_heads,
    "phrases": swap_phrases,
    "shuffle": shuffle_words,
}


def composition_negative(
    text: str, rng: random.Random, accept: Callable[[str], bool] | None = None
) -> str | None:
    """``text`` with its words kept and its composition broken by one of :data:`TRANSFORMS`
    (tried in random order), or None when none applies. ``accept`` may refuse a result
    (for example one that a domain parser reads as true)."""
    words = words_of(text)
    for name in rng.sample(list(TRANSFORMS), len(TRANSFORMS)):
        new = TRANSFORMS[name](words, rng)
        if new is None or new == words:
            continue
        result = " ".join(new)
        if accept is None or accept(result):
            return result
    return None


def reword(text: str, rng: random.Random, unknown: str) -> str:
    """``text`` in other words with the same meaning: an :data:`OPENINGS` phrase before it,
    ``unknown`` tokens (the tokenizer's unknown-word token) between its words, or both; and
    sometimes one joiner ("and", a comma) dropped or said with an unknown word, as BLIP's
    text cleaning drops the full stop or semicolon between two sentences. Longer texts get
    more unknown words (up to one in four, at least three), as a rewording of each clause
    would add them."""
    words = text.split()
    joiners = [i for i, word in enumerate(words) if word in JOINERS]
    if joiners and rng.random() < 0.3:
        index = rng.choice(joiners)
        if rng.random() < 0.5:
            del words[index]
        else:
            words[index] = unknown
    opening = rng.random() < 0.5
    for _ in range(rng.randint(0 if opening else 1, max(3, len(words) // 4))):
        words.insert(rng.randint(0, len(words)), unknown)
    return " ".join(([rng.choice(OPENINGS)] if opening else []) + words)


def _noun_and_place(clause: list[str]) -> tuple[str, str] | None:
    """The noun phrase and the place of a clause that says where a thing is: a noun phrase,
    prepositions ("on", "next to") and one noun phrase ("a red ball on the left"), or the
    place first ("on the left a red ball", "on the left there is a red ball"). None for
    any other clause."""
    found = chunks(clause)
    if len(found) != 2 or found[1].head != len(clause) - 1:
        return None
    first, second = found
    between = clause[first.head + 1 : second.start]
    if first.start == 0 and between and all(w in PREPOSITIONS for w in between):
        return " ".join(clause[: first.head + 1]), " ".join(clause[first.head + 1 :])
    before = clause[: first.start]
    if (
        before
        and all(w in PREPOSITIONS for w in before)
        and between in ([], ["is"], ["there", "is"])
    ):
        return " ".join(clause[second.start :]), " ".join(clause[: first.head + 1])
    return None


def _clauses(words: list[str]) -> tuple[list[list[str]], list[str]]:
    """The clauses of a list ("a cat on a bed and a dog on the floor") and the words that
    join them: :data:`LIST_JOINERS`, or "with" between two clauses that each place a noun
    phrase ("a cat on a bed with a dog on the floor"; "a man with a hat" is one clause)."""
    clauses: list[list[str]] = [[]]
    joiners: list[str] = []
    for word in words:
        if word in LIST_JOINERS and clauses[-1]:
            clauses.append([])
            joiners.append(word)
        elif word not in LIST_JOINERS:
            clauses[-1].append(word)
    if not clauses[-1]:
        clauses.pop()
        joiners = joiners[: len(clauses) - 1]
    split_clauses: list[list[str]] = []
    split_joiners: list[str] = []
    for index, clause in enumerate(clauses):
        if index:
            split_joiners.append(joiners[index - 1])
        parts = " ".join(clause).split(" with ")
        if len(parts) > 1 and all(_noun_and_place(part.split()) for part in parts):
            split_clauses += [part.split() for part in parts]
            split_joiners += ["with"] * (len(parts) - 1)
        else:
            split_clauses.append(clause)
    return split_clauses, split_joiners


def _joined(clauses: list[list[str]], joiners: list[str]) -> list[str]:
    """The words of ``clauses`` with ``joiners`` between them."""
    words = list(clauses[0])
    for joiner, clause in zip(joiners, clauses[1:], strict=True):
        words += [joiner, *clause]
    return words


def reorder_clauses(words: list[str], rng: random.Random) -> list[str] | None:
    """The clauses of a list in another order, with the same joiners ("a cat on a bed and a
    dog on the floor" -> "a dog on the floor and a cat on a bed"). ``None`` unless there are
    two or more clauses, each with a noun phrase."""
    clauses, joiners = _clauses(words)
    if len(clauses) < 2 or not all(chunks(clause) for clause in clauses):
        return None
    order = list(range(len(clauses)))
    while order == sorted(order):
        rng.shuffle(order)
    return _joined([clauses[i] for i in order], joiners)


def restate_place(words: list[str], rng: random.Random) -> list[str] | None:
    """One clause that says where a thing is, said another way (:data:`PLACE_WORDINGS`: "a
    red ball on the left" -> "on the left is a red ball", "there is a red ball on the left"
    and back). ``None`` when no clause is of that form (:func:`_noun_and_place`)."""
    clauses, joiners = _clauses(words)
    candidates = [
        (index, said) for index, clause in enumerate(clauses) if (said := _noun_and_place(clause))
    ]
    if not candidates:
        return None
    index, (noun, place) = rng.choice(candidates)
    wordings = [w.format(noun=noun, place=place).split() for w in PLACE_WORDINGS]
    clauses[index] = rng.choice([w for w in wordings if w != clauses[index]])
    return _joined(clauses, joiners)


def reorder_modifiers(words: list[str], rng: random.Random) -> list[str] | None:
    """The modifiers of one noun phrase in another order ("a big red ball" -> "a red big
    ball"): the phrase still says the same of the same thing. ``None`` when no phrase has
    two different modifiers."""
    found = [c for c in chunks(words) if len({words[i] for i in c.modifiers}) > 1]
    if not found:
        return None
    chunk = rng.choice(found)
    modifiers = [words[i] for i in chunk.modifiers]
    order = list(modifiers)
    while order == modifiers:
        rng.shuffle(order)
    new = list(words)
    new[chunk.modifiers.start : chunk.modifiers.stop] = order
    return new


def rephrase(text: str, rng: random.Random) -> str | None:
    """``text`` said another way with the same meaning: :func:`reorder_clauses`,
    :func:`restate_place` or :func:`reorder_modifiers`, sometimes more than one; ``None``
    when none applies."""
    words = words_of(text)
    steps = [reorder_clauses, restate_place, reorder_modifiers]
    rng.shuffle(steps)
    changed = False
    for step in steps:
        new = step(words, rng)
        if new is not None:
            words, changed = new, True
            if rng.random() < 0.5:
                break
    return " ".join(words) if changed else None


def unreadable(text: str, unknown: str, rng: random.Random) -> str:
    """``text`` with every open-class word (nouns, adjectives, ...) replaced by ``unknown``:
    its frame without anything that could be checked against an image. Half of them also
    lose some frame words and come in another order, as spam and boilerplate read to a
    small domain vocabulary: unknown words with a few known ones in between."""
    words = [word if not is_open(word) else unknown for word in words_of(text)]
    if rng.random() < 0.5:
        words = [word for word in words if word == unknown or rng.random() < 0.5] or [unknown]
        rng.shuffle(words)
    return " ".join(words)


class TextDomain:
    """Extra ITM texts for any caption dataset: the general transformations."""

    name = "general"

    def prepare(self, texts: list[str]) -> list[object]:
        """What the domain knows of each training text's image (nothing here)."""
        return [None] * len(texts)

    def negative(self, text: str, known: object, rng: random.Random) -> str | None:
        """A composition negative of ``text`` for its own image."""
        return composition_negative(text, rng)

    def truncated(self, text: str, known: object, rng: random.Random) -> str | None:
        """``text`` broken off inside a phrase."""
        return truncate_words(text, rng)

    def partial(self, text: str, known: object, rng: random.Random) -> str | None:
        """A true text describing part of the image (none without domain knowledge)."""
        return None

    def true_of(self, texts: list[str], known: list[object]) -> list[list[bool]] | None:
        """``B x B`` (image by text): texts of the batch true of another pair's image."""
        return None


class ShapesDomain(TextDomain):
    """The shapes domain (:mod:`curation.shapes`): captions are read with the parser, so
    negatives are exact and checked to be false, and partial descriptions are known true.

    A training caption that does not parse is treated as in :class:`TextDomain`.
    """

    name = "shapes"

    def prepare(self, texts: list[str]) -> list[object]:
        return [parse_caption(text) for text in texts]

    def negative(self, text: str, known: object, rng: random.Random) -> str | None:
        if not isinstance(known, Scene):
            return super().negative(text, known, rng)
        if rng.random() < 0.5:
            exchanged = exchange_attribute(known, rng)
            scene = exchanged[0] if exchanged else exchange_positions(known, rng)
            if scene is not None:
                return caption(scene, rng)
        return composition_negative(text, rng, accept=lambda t: not self._true(t, known))

    def truncated(self, text: str, known: object, rng: random.Random) -> str | None:
        cut = super().truncated(text, known, rng)
        if cut is None or (isinstance(known, Scene) and self._true(cut, known)):
            return None
        return cut

    def partial(self, text: str, known: object, rng: random.Random) -> str | None:
        part = partial_scene(known, rng) if isinstance(known, Scene) else None
        return None if part is None else caption(part, rng)

    def true_of(self, texts: list[str], known: list[object]) -> list[list[bool]] | None:
        return [
            [
                isinstance(scene, Scene) and isinstance(said, Scene) and is_true_of(said, scene)
                for said in known
            ]
            for scene in known
        ]

    @staticmethod
    def _true(text: str, scene: Scene) -> bool:
        said = parse_caption(text)
        return said is not None and is_true_of(said, scene)


def text_domain(name: DomainName) -> TextDomain:
    """The :class:`TextDomain` called ``name``."""
    return ShapesDomain() if DomainName(name) == DomainName.SHAPES else TextDomain()


@dataclass
class ExtraTextRows:
    """Extra texts of a batch: the row whose image each belongs to, and whether it is true."""

    rows: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    matches: list[bool] = field(default_factory=list)

    def add(self, row: int, text: str | None, matches: bool) -> None:
        if text:
            self.rows.append(row)
            self.texts.append(text)
            self.matches.append(matches)


def extra_texts(
    texts: list[str],
    known: list[object],
    shares: ExtraTextShares,
    domain: TextDomain,
    rng: random.Random,
    unknown: str = "[UNK]",
) -> ExtraTextRows:
    """For each text, with the given shares: a composition negative, a truncated negative,
    a partial positive, a reworded positive, an unreadable negative and a rephrased positive
    (rows whose text allows none are skipped). With a ``reworded`` or ``rephrased`` share,
    the composition, truncated and partial texts are reworded (:func:`reword`) or rephrased
    (:func:`rephrase`) at that rate too."""
    extra = ExtraTextRows()

    def maybe_reworded(text: str | None) -> str | None:
        if text and shares.reworded and rng.random() < shares.reworded:
            return reword(text, rng, unknown)
        return text

    def said_otherwise(text: str | None) -> str | None:
        if text and shares.rephrased and rng.random() < shares.rephrased:
            text = rephrase(text, rng) or text
        return maybe_reworded(text)

    for row, (text, fact) in enumerate(zip(texts, known, strict=True)):
        if shares.composition and rng.random() < shares.composition:
            extra.add(row, said_otherwise(domain.negative(text, fact, rng)), matches=False)
        if shares.truncated and rng.random() < shares.truncated:
            extra.add(row, said_otherwise(domain.truncated(text, fact, rng)), matches=False)
        if shares.partial and rng.random() < shares.partial:
            extra.add(row, said_otherwise(domain.partial(text, fact, rng)), matches=True)
        if shares.reworded and rng.random() < shares.reworded:
            extra.add(row, reword(text, rng, unknown), matches=True)
        if shares.unreadable and rng.random() < shares.unreadable:
            extra.add(row, unreadable(text, unknown, rng), matches=False)
        if shares.rephrased and rng.random() < shares.rephrased:
            extra.add(row, maybe_reworded(rephrase(text, rng)), matches=True)
    return extra
