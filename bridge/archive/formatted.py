"""Formatted (HTML) message bodies made safe to show, and quoted reply fallbacks removed (pure).

`sanitise(formatted_body, reply)` keeps only a strict allow-list of text-level and
block tags with no attributes at all (no links, images, styles, classes or ids:
nothing can load, run or point anywhere) through nh3 (the Ammonia sanitiser);
`script`, `style` and, for a reply, the `<mx-reply>` fallback are removed with their
content. Links keep their text; the URL is in the plain body one click away.

The output is part of the transcript, which `verify-package` re-derives byte for
byte: a newer nh3 that serialises differently makes verification report the
transcript as different (loudly, never silently).

`strip_reply_fallback(body)` removes the leading `> ` quote lines of a plain body and
the blank line after them, as the Matrix spec tells clients to do for replies.
"""

from __future__ import annotations

import nh3

MATRIX_HTML = "org.matrix.custom.html"

#: Text formatting and structure only; every attribute is dropped.
TAGS = frozenset(
    {
        "b", "strong", "i", "em", "u", "s", "del", "strike", "code", "pre", "blockquote", "p", "br", "hr",
        "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "sub", "sup", "span", "div",
        "table", "thead", "tbody", "tr", "th", "td", "caption",
    }
)  # fmt: skip
_DROPPED_WITH_CONTENT = frozenset({"script", "style", "template", "noscript", "title", "textarea", "svg", "math"})


def sanitise(formatted_body: str, reply: bool) -> str:
    """`formatted_body` reduced to `TAGS` without attributes; the `<mx-reply>` fallback dropped for a reply."""
    drop = _DROPPED_WITH_CONTENT | {"mx-reply"} if reply else _DROPPED_WITH_CONTENT
    return nh3.clean(
        formatted_body,
        tags=set(TAGS),
        clean_content_tags=set(drop),
        attributes={},
        strip_comments=True,
        link_rel=None,
    )


def strip_reply_fallback(body: str) -> str:
    """`body` without its leading `>` quote lines (and the blank line after them)."""
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i == 0:
        return body
    if i < len(lines) and lines[i] == "":
        i += 1
    return "\n".join(lines[i:])


def shows_formatted(content: dict[str, object]) -> str | None:
    """The formatted body to show, or None (not Matrix HTML, or the same text as the body)."""
    formatted = content.get("formatted_body")
    if content.get("format") != MATRIX_HTML or not isinstance(formatted, str):
        return None
    return None if formatted == content.get("body") else formatted
