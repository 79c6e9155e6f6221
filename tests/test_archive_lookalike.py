"""Lookalike names and ids: invisibles made visible, skeletons compare what looks the same."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.lookalike import Participants, lookalikes, skeleton, visible


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


def test_participants_collect_names_in_order_of_appearance() -> None:
    """Participants remember every name of each id, in order of first appearance: the later id is the subject."""
    p = Participants()
    p.add("@minister:example.org", "De Minister")
    p.add("@bob:example.org", "Bob")
    p.add("@evil:example.org")
    p.add("@evil:example.org", "MINISTER")
    p.add("@b\u200bob:example.org")
    assert [(f.subject, f.other, f.why) for f in p.lookalikes()] == [
        ("@evil:example.org", "@minister:example.org", "weergavenaam lijkt op de id @minister:example.org"),
        ("@b\u200bob:example.org", "@bob:example.org", "id lijkt op @bob:example.org"),
    ]


def test_lookalikes_name_each_pair_once_with_the_later_id_as_subject() -> None:
    """A homoglyph id, a name like another's id and a name like another's name each give one finding, the
    later-appearing id its subject; a name empty once invisibles are removed is a finding alone."""
    found = lookalikes(
        {
            "@minister:example.org": ["De Minister"],
            "@evil:example.org": ["De Mіnister"],  # Cyrillic і
            "@mіnister:example.org": [],
            "@bob:example.org": ["Bob", "MINISTER"],
            "@ghost:example.org": ["\u200b"],
        }
    )
    assert [(f.subject, f.other, f.why) for f in found] == [
        ("@evil:example.org", "@minister:example.org", "weergavenaam lijkt op die van @minister:example.org"),
        ("@mіnister:example.org", "@minister:example.org", "id lijkt op @minister:example.org"),
        ("@bob:example.org", "@minister:example.org", "weergavenaam lijkt op de id @minister:example.org"),
        ("@bob:example.org", "@mіnister:example.org", "weergavenaam lijkt op de id @mіnister:example.org"),
        ("@ghost:example.org", None, "weergavenaam is leeg zonder onzichtbare tekens"),
    ]


_IDS = st.sampled_from(["@a:x", "@а:x", "@A:x", "@b:x", "@b\u200b:x", "@c:y", "a", "b"])
_NAMES = st.sampled_from(["a", "А", "b", "B\u200b", "@c:y", "c", "\u200b", "Dirk"])


def _looks_alike(first: tuple[str, list[str]], later: tuple[str, list[str]]) -> bool:
    """The pairwise rule, written out plainly: same id skeleton, a name like the other's id or localpart,
    or two names alike."""

    def id_keys(user_id: str) -> set[str]:
        local = user_id[1:].split(":", 1)[0] if user_id.startswith("@") and ":" in user_id else user_id
        return {skeleton(user_id), skeleton(local)}

    (a, a_names), (b, b_names) = first, later
    a_keys = {skeleton(n) for n in a_names} - {""}
    b_keys = {skeleton(n) for n in b_names} - {""}
    return skeleton(a) == skeleton(b) or bool(a_keys & id_keys(b)) or bool(b_keys & id_keys(a)) or bool(a_keys & b_keys)


@given(st.lists(st.tuples(_IDS, st.lists(_NAMES, max_size=2)), max_size=6, unique_by=lambda t: t[0]))
def test_lookalikes_are_once_per_pair_later_subject_and_complete(people: list[tuple[str, list[str]]]) -> None:
    """Whatever the participants: no pair is reported twice, the subject is always the later-appearing id, and
    every id that looks like an earlier participant is the subject of some finding (so it carries a marker)."""
    names = dict(people)
    order = list(names)
    found = lookalikes(names)
    assert found == lookalikes(names)  # a pure function
    pairs = [frozenset((f.subject, f.other)) for f in found if f.other is not None]
    assert len(pairs) == len(set(pairs))
    assert all(order.index(f.subject) > order.index(f.other) for f in found if f.other is not None)
    subjects = {f.subject for f in found}
    for j, later in enumerate(people):
        if any(_looks_alike(first, later) for first in people[:j]):
            assert later[0] in subjects
