"""Assemble image groups: one unique image with every pair whose image copies it."""

from __future__ import annotations

from collections.abc import Iterable

from curation.reasons import DuplicateKind
from curation.records import HashedPair, ImageGroup, Member
from curation.texts import model_text


def text_identity(text: str | None) -> str:
    """The form under which two web texts count as the same text: the text the models see
    (:func:`curation.texts.model_text`), case folded. Empty when nothing is left."""
    return model_text(text).text.lower()


def build_group(members: Iterable[tuple[HashedPair, DuplicateKind | None, float]]) -> ImageGroup:
    """Build an :class:`ImageGroup` from ``(pair, kind, similarity)`` triples.

    Exactly one member has kind ``None``: the representative, whose image is kept. Members
    are ordered by uid so the group does not depend on shuffle order. ``texts`` are what the
    models score: each distinct web text as :func:`curation.texts.model_text` cleans it.
    """
    ordered = sorted(members, key=lambda m: m[0].uid)
    reps = [m for m in ordered if m[1] is None]
    if len(reps) != 1:
        raise ValueError(f"an image group needs exactly one representative, got {len(reps)}")
    texts: list[str] = []
    seen: set[str] = set()
    for hashed, _, _ in ordered:
        ident = text_identity(hashed.pair.text)
        if ident and ident not in seen:
            seen.add(ident)
            texts.append(model_text(hashed.pair.text).text)
    return ImageGroup(
        rep=reps[0][0],
        members=tuple(Member(hashed, kind, similarity) for hashed, kind, similarity in ordered),
        texts=tuple(texts),
    )
