"""Formatted bodies: the allow-list keeps formatting only; reply fallbacks come off."""

from __future__ import annotations

import pytest

from bridge.archive.formatted import sanitise, shows_formatted, strip_reply_fallback


@pytest.mark.parametrize(
    ("html", "reply", "shown"),
    [
        ("<b>vet</b> <i>schuin</i>", False, "<b>vet</b> <i>schuin</i>"),
        ('<a href="javascript:alert(1)">klik</a>', False, "klik"),
        ('<img src="mxc://x/y" onerror="alert(1)">', False, ""),
        ("<script>alert(1)</script><style>*{}</style>x", False, "x"),
        ('<span data-mx-spoiler style="color:red" class="c" id="i">s</span>', False, "<span>s</span>"),
        ("<mx-reply><blockquote>q</blockquote></mx-reply>a", True, "a"),
        ("<mx-reply>q</mx-reply>a", False, "qa"),
        ("<!-- c --><p>x", False, "<p>x</p>"),
    ],
)
def test_sanitise_keeps_formatting_only(html: str, reply: bool, shown: str) -> None:
    """No attribute, link target, image, script or style survives; mx-reply goes only for a reply."""
    assert sanitise(html, reply) == shown


def test_strip_reply_fallback() -> None:
    """Leading `>` lines and the blank line after them go; a body without them is unchanged."""
    assert strip_reply_fallback("> <@a:b> x\n> y\n\nantwoord\n> later quote") == "antwoord\n> later quote"
    assert strip_reply_fallback("geen citaat\n> x") == "geen citaat\n> x"


def test_shows_formatted_only_for_differing_matrix_html() -> None:
    """Only Matrix HTML that differs from the body is shown formatted."""
    assert shows_formatted({"format": "org.matrix.custom.html", "formatted_body": "<b>x</b>", "body": "x"})
    assert shows_formatted({"format": "org.matrix.custom.html", "formatted_body": "x", "body": "x"}) is None
    assert shows_formatted({"format": "other", "formatted_body": "<b>x</b>", "body": "x"}) is None
