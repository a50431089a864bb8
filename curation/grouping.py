"""Assemble image groups: one unique image with every pair whose image copies it."""

from __future__ import annotations

from collections.abc import Iterable

from curation.records import HashedPair, ImageGroup, Member


def text_identity(text: str | None) -> str:
    """The form under which two web texts count as the same text (case and spacing folded)."""
    return " ".join((text or "").lower().split())


def build_group(members: Iterable[tuple[HashedPair, str, float]]) -> ImageGroup:
    """Build an :class:`ImageGroup` from ``(pair, kind, similarity)`` triples.

    Exactly one member has kind ``"self"``: the representative, whose image is kept. Members
    are ordered by uid so the group does not depend on shuffle order; image bytes are dropped
    from every member but the representative.
    """
    ordered = sorted(members, key=lambda m: m[0].uid)
    reps = [m for m in ordered if m[1] == "self"]
    if len(reps) != 1:
        raise ValueError(f"an image group needs exactly one representative, got {len(reps)}")
    rep = reps[0][0]
    out: list[Member] = []
    texts: list[str] = []
    seen: set[str] = set()
    for hashed, kind, similarity in ordered:
        if hashed is not rep:
            hashed.pair.image = None
        out.append(Member(hashed=hashed, kind=kind, similarity=similarity))
        ident = text_identity(hashed.pair.text)
        if ident and ident not in seen:
            seen.add(ident)
            texts.append(hashed.pair.text.strip())
    return ImageGroup(rep=rep, members=out, texts=texts)
