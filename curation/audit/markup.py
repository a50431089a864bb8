"""Safe HTML building: every value is escaped unless it is :class:`Markup` built here.

Data from the web (texts, keys, file names, manifest values) only ever reaches the page
through :func:`escape`, as element text or a quoted attribute value; attribute names and
tags are fixed by the code. The page carries a Content-Security-Policy that allows no
script, no remote resource and no inline style except the report's own style sheet
(by hash), and images only as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import hashlib
import html

VOID = frozenset({"img", "meta", "br", "hr", "line", "rect", "circle", "polyline", "path"})
#: URI schemes an ``src`` or ``href`` may carry (anything else is dropped).
SAFE_SRC = ("data:image/jpeg;base64,", "data:image/png;base64,", "#")


class Markup(str):
    """A string of HTML that is already safe (built by this module from escaped parts)."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """Escape any value as HTML text or a quoted attribute value."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def render(children: object) -> Markup:
    """Children (markup, plain values or nested iterables of them) as markup."""
    if children is None:
        return Markup("")
    if isinstance(children, str | int | float):
        return escape(children)
    return Markup("".join(render(child) for child in children))  # type: ignore[union-attr]


def tag(element: str, /, *children: object, **attrs: object) -> Markup:
    """``<element attrs>children</element>``; attribute ``class_`` is written ``class``.

    ``None`` and ``False`` attributes are left out, ``True`` writes the bare name. ``src``
    and ``href`` keep only the schemes in :data:`SAFE_SRC`.
    """
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        if value is True:
            parts.append(attr)
            continue
        if attr in ("src", "href") and not str(value).startswith(SAFE_SRC):
            continue
        parts.append(f'{attr}="{escape(value)}"')
    if element in VOID and not children:
        # "/>" closes SVG shapes inside HTML (and is allowed on HTML void elements)
        return Markup("<" + " ".join(parts) + "/>")
    return Markup("<" + " ".join(parts) + f">{render(children)}</{element}>")


def style_hash(css: str) -> str:
    """The CSP source that allows exactly this inline style sheet."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(css: str) -> str:
    """No script, no remote anything; data: images and the page's own style sheet only."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'none'",
            "img-src data:",
            f"style-src {style_hash(css)}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def document(title: str, body: Markup, css: str) -> str:
    """A complete HTML page: charset, CSP and referrer meta tags first, then the style sheet."""
    head = Markup(
        '<meta charset="utf-8">'
        + tag("meta", http_equiv="Content-Security-Policy", content=content_security_policy(css))
        + tag("meta", name="referrer", content="no-referrer")
        + tag("meta", name="viewport", content="width=device-width, initial-scale=1")
        + tag("title", title)
        + Markup(f"<style>{css}</style>")
    )
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>{body}</body></html>\n'
