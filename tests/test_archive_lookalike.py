"""Lookalike names and ids: invisibles made visible, skeletons compare what looks the same."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.lookalike import Participants, skeleton, visible


def test_visible_marks_bidi_zero_width_and_odd_spaces() -> None:
    """Bidi overrides, zero-width characters, NBSP and tag characters become ⟨U+XXXX⟩; emoji selectors stay."""
    assert visible("a\u202eb\u200bc\u00a0d\U000e0041") == "a⟨U+202E⟩b⟨U+200B⟩c⟨U+00A0⟩d⟨U+E0041⟩"
    assert visible("❤\ufe0f Zoë") == "❤\ufe0f Zoë"


@given(st.text())
def test_visible_leaves_no_format_character(text: str) -> None:
    """After `visible`, no format character (category Cf: bidi controls, zero-width, tags) is left but the
    emoji variation selectors."""
    shown = visible(text)
    assert not any(unicodedata.category(c) == "Cf" for c in shown)


def test_skeleton_folds_case_width_invisibles_and_homoglyphs() -> None:
    """Case, fullwidth forms, invisibles, extra spaces and Cyrillic/Greek lookalikes compare equal."""
    assert skeleton("De Minister") == skeleton("dе  MІNISTER\u200b") == skeleton("Ｄｅ Ｍｉｎｉｓｔｅｒ")
    assert skeleton("De Minister") != skeleton("De Ministers")


def test_participants_flag_names_and_ids() -> None:
    """A name like another's name, id or localpart is flagged; an id like another id is flagged; the rest not."""
    p = Participants()
    p.add("@minister:example.org", "De Minister")
    p.add("@evil:example.org")
    p.add("@bob:example.org", "Bob")
    assert p.name_warning("@evil:example.org", "De Mіnister") == "display name looks like that of @minister:example.org"
    assert p.name_warning("@evil:example.org", "MINISTER") == "display name looks like the id @minister:example.org"
    assert p.name_warning("@evil:example.org", "\u200b") is not None
    assert p.name_warning("@bob:example.org", "Bob") is None
    p.add("@b\u200bob:example.org")
    assert p.id_warning("@bob:example.org") == "id looks like @b\u200bob:example.org"
