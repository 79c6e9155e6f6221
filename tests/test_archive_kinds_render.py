"""Every kind, from every upstream fixture shape, renders a non-empty, meaningful transcript body.

The fixtures are the real shapes of `tests/fixtures/matrix/events.json` and `tests/fixtures/signal/*.json`
(each citing where it comes from); they go through the real normalisers, then through the transcript
writer with its first pass, and the entry's body (everything but the sender/time head) must say something.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.lookahead import Lookahead
from bridge.archive.transcript import TranscriptEntry, write_transcript
from bridge.archive.transcript.message import with_mentions
from bridge.events import MATRIX, SIGNAL, ConversationId, Event, EventId, Kind, SenderId
from bridge.sources.matrix.normalise import normalise
from bridge.sources.signal.envelopes import normalise_envelope
from bridge.sources.signal.identities import Identity, mapping_event

FIXTURES = Path(__file__).parent / "fixtures"
RECEIVED = 1_700_000_000_750
MATRIX_FIXTURES: list[dict[str, Any]] = json.loads((FIXTURES / "matrix" / "events.json").read_text("utf-8"))
SIGNAL_FIXTURES = sorted((FIXTURES / "signal").glob("*.json"))


def _matrix_events() -> list[tuple[str, Event]]:
    return [(f"matrix:{f['name']}", normalise(f["event"], received_at=RECEIVED)) for f in MATRIX_FIXTURES]


def _signal_events() -> list[tuple[str, Event]]:
    out = []
    for path in SIGNAL_FIXTURES:
        for event in normalise_envelope(path.read_bytes(), account=None, received_at=RECEIVED):
            out.append((f"signal:{path.stem}", event))
    return out


def _synthetic() -> list[tuple[str, Event]]:
    """Kinds no upstream fixture produces (the archiver's own notices, our own membership/retention shapes)."""

    def ev(kind: Kind, content: dict[str, Any], eid: str) -> Event:
        return Event(MATRIX, ConversationId("!r:x"), EventId(eid), kind, SenderId("@a:x"), 1, 2, content)

    return [
        ("synthetic:notice", ev(Kind.NOTICE, {"notice": "gap", "from": 1, "to": 2}, "$n")),
        ("synthetic:membership", ev(Kind.MEMBERSHIP, {"membership": "join", "target": "@a:x"}, "$m")),
        ("synthetic:retention", ev(Kind.RETENTION_CHANGE, {"max_lifetime": 86_400_000}, "$r")),
        ("synthetic:deletion", ev(Kind.DELETION, {"reason": None}, "$d")),
        ("synthetic:empty message", ev(Kind.MESSAGE, {"body": None}, "$e")),
        ("synthetic:empty unknown", ev(Kind.UNKNOWN, {}, "$u")),
        ("synthetic:identity mapping", _mapping()),
    ]


def _mapping() -> Event:
    person = Identity("5e2f9d10-8a3b-4c6d-b7e8-1f2a3b4c5d6e", "PNI:84a939c0", "+31600000002")
    return mapping_event("+31600000001", person, "listContacts", {}, 1)


ALL = _matrix_events() + _signal_events() + _synthetic()


def bodies(events: list[Event]) -> dict[str, str]:
    """Render `events` as one transcript (with the first pass); event id -> the visible text of its body."""
    out = io.BytesIO()
    write_transcript(
        out,
        title="t",
        conversation="c",
        month="2023-11",
        entries=[TranscriptEntry(i, e) for i, e in enumerate(events)],
        lookahead=Lookahead.of(events),
    )
    doc = lxml.html.fromstring(out.getvalue())
    found: dict[str, str] = {}
    for li, event in zip(doc.xpath("//li[contains(@class, 'entry')]"), events, strict=True):
        for head in li.xpath("./div[@class='head']"):
            head.drop_tree()
        found[event.event_id] = " ".join(li.text_content().split())
    return found


@pytest.mark.parametrize(("name", "event"), ALL, ids=[name for name, _ in ALL])
def test_every_fixture_renders_a_non_empty_body(name: str, event: Event) -> None:
    """No entry of any fixture shape is blank: its body (not counting sender and time) has visible text."""
    assert bodies([event])[event.event_id], f"{name} ({event.kind}) renders an empty body"


def test_the_fixtures_cover_every_kind() -> None:
    """The parametrised test above sees every Kind, so a new kind cannot slip in blank."""
    assert {event.kind for _, event in ALL} == set(Kind)


def _one(name: str) -> Event:
    return next(event for n, event in ALL if n == name)


def test_signal_sticker_shows_pack_and_sticker() -> None:
    """A Signal sticker (no text) names its pack and sticker id, and its emoji when the event has one."""
    event = _one("signal:sticker")
    text = bodies([event])[event.event_id]
    assert "sticker" in text and "9acc9e8aba563d26a4994e69263e3b25" in text and "#3" in text
    with_emoji = _with_content(event, sticker={**event.content["sticker"], "emoji": "🐙"})
    assert "🐙" in bodies([with_emoji])[event.event_id]


def test_matrix_sticker_is_marked_as_one() -> None:
    """A Matrix sticker says it is a sticker, with its description."""
    event = _one("matrix:sticker (spec m.sticker example)")
    assert "sticker: Landing" in bodies([event])[event.event_id]


def test_signal_payment_shows_note_and_amount_if_any() -> None:
    """A payment says so, with its note; the amount when recorded, else that signal-cli does not expose it."""
    event = _one("signal:payment")
    text = bodies([event])[event.event_id]
    assert "betaling" in text and "lunch 12 maart" in text and "bedrag niet" in text
    paid = _with_content(event, payment={**event.content["payment"], "amount": "1.5 MOB"})
    assert "bedrag 1.5 MOB" in bodies([paid])[event.event_id]


def test_shared_contact_shows_the_contact() -> None:
    """A shared contact shows the contact's name and numbers."""
    event = _one("signal:shared_contact")
    text = bodies([event])[event.event_id]
    assert "gedeeld contact" in text and any(n in text for n in event.content["contacts"][0]["numbers"])


def _with_content(event: Event, **content: Any) -> Event:
    return dataclasses.replace(event, content={**event.content, **content})


def _call(source: str, eid: str, sender: str, at: int, call: dict[str, Any]) -> Event:
    return Event(
        MATRIX if source == "matrix" else SIGNAL,
        ConversationId("c"),
        EventId(eid),
        Kind.STATE,
        SenderId(sender),
        at,
        at,
        {"type": "m.call" if source == "matrix" else "signal.call", "call": call},
    )


@pytest.mark.parametrize("source", ["matrix", "signal"])
def test_a_call_is_summarised_who_started_answered_ended_and_how_long(source: str) -> None:
    """A call's start names who answered and how long it lasted; its end says who ended it and the duration;
    ICE/candidate signalling is one short line, not a state dump."""
    start, answer, end = ("invite", "answer", "hangup") if source == "matrix" else ("offer", "answer", "hangup")
    ice = "candidates" if source == "matrix" else "ice_update"
    calls = [
        _call(source, "e1", "@alice:x", 1_700_000_000_000, {"action": start, "call_id": "c1"}),
        _call(source, "e2", "@bob:x", 1_700_000_005_000, {"action": ice, "call_id": "c1"}),
        _call(source, "e3", "@bob:x", 1_700_000_010_000, {"action": answer, "call_id": "c1"}),
        _call(source, "e4", "@alice:x", 1_700_000_135_000, {"action": end, "call_id": "c1", "reason": None}),
    ]
    shown = bodies(calls)
    assert "begon een oproep" in shown["e1"] and "aangenomen door @bob:x" in shown["e1"] and "2:05" in shown["e1"]
    assert "oproepsignalering" in shown["e2"] and "{" not in shown["e2"]
    assert "nam de oproep aan" in shown["e3"]
    assert "beëindigde de oproep" in shown["e4"] and "duur 2:05" in shown["e4"]


def test_an_unanswered_call_says_so() -> None:
    """A call that was never answered is shown as not answered, with no duration."""
    calls = [
        _call("matrix", "e1", "@alice:x", 1_700_000_000_000, {"action": "invite", "call_id": "c9"}),
        _call(
            "matrix",
            "e2",
            "@alice:x",
            1_700_000_030_000,
            {"action": "hangup", "call_id": "c9", "reason": "invite_timeout"},
        ),
    ]
    shown = bodies(calls)
    assert "niet aangenomen" in shown["e1"] and "niet aangenomen" in shown["e2"] and "timeout" in shown["e2"]
    assert "duur" not in shown["e2"]


def test_room_upgrade_names_and_links_the_other_conversation() -> None:
    """A tombstone says where the conversation continues and a create with a predecessor where it came from,
    linked when the package holds that conversation."""
    tomb = _one("matrix:room upgrade: m.room.tombstone")
    create = _one("matrix:room upgrade: m.room.create with predecessor")
    successor = tomb.content["replacement_room"]
    predecessor = create.content["predecessor"]["room_id"]
    out = io.BytesIO()
    write_transcript(
        out,
        title="t",
        conversation="c",
        month="2023-11",
        entries=[TranscriptEntry(1, tomb), TranscriptEntry(2, create)],
        links={successor: "../next/transcript.html"},
    )
    doc = lxml.html.fromstring(out.getvalue())
    tomb_li, create_li = doc.xpath("//li[contains(@class, 'entry')]")
    assert "gaat verder in" in tomb_li.text_content() and successor in tomb_li.text_content()
    assert [a.get("href") for a in tomb_li.xpath(".//a[@class='conversation']")] == ["../next/transcript.html"]
    assert "zet dat gesprek voort" in create_li.text_content() and predecessor in create_li.text_content()
    assert create_li.xpath(".//a[@class='conversation']") == []  # not in this package: shown, not linked


def test_identity_mapping_names_every_id() -> None:
    """A Signal identity mapping says which ids are one person and where signal-cli said so."""
    event = _one("synthetic:identity mapping")
    text = bodies([event])[event.event_id]
    assert "één persoon" in text and "+31600000002" in text and "PNI:84a939c0" in text and "listContacts" in text


def test_signal_mentions_show_the_person_not_a_placeholder() -> None:
    """A Signal mention (U+FFFC at `start`, UTF-16 units) reads "@" + the person's name when the transcript
    knows it (their `sourceName` on an earlier message), else "@" + their id; never the bare placeholder."""
    group = _one("signal:group_message")
    (mention,) = group.content["mentions"]
    text = bodies([group])[group.event_id]
    assert "\ufffc" not in text and f"@{mention['uuid']}" in text
    earlier = dataclasses.replace(
        group,
        event_id=EventId("earlier"),
        sender=SenderId(mention["uuid"]),
        content={"body": "hoi", "sender_name": "Joke"},
    )
    assert "@Joke" in bodies([earlier, group])[group.event_id]


def test_signal_sender_name_is_shown_with_the_full_id() -> None:
    """Signal has no membership events: the envelope's `sourceName` is the display name, next to the full id."""
    event = _one("signal:dm_received")
    out = io.BytesIO()
    write_transcript(out, title="t", conversation="c", month="m", entries=[TranscriptEntry(1, event)])
    head = lxml.html.fromstring(out.getvalue()).xpath("//div[@class='head']")[0].text_content()
    assert f"{event.content['sender_name']} {event.sender}" in head


@given(
    body=st.text(alphabet=st.sampled_from("ab\ufffc😀 ")),
    mentions=st.lists(
        st.fixed_dictionaries(
            {"uuid": st.sampled_from(["u1", "u2"]), "start": st.integers(-3, 12), "length": st.integers(-1, 3)}
        ),
        max_size=4,
    ),
)
def test_with_mentions_never_raises_and_keeps_text_outside_mentions(body: str, mentions: list[dict[str, Any]]) -> None:
    """Whatever offsets a hostile envelope gives, the substitution never raises; without mentions the body is
    unchanged; every valid non-overlapping mention becomes "@" + the name."""
    assert with_mentions(body, [], str) == body
    shown = with_mentions(body, mentions, lambda who: who.upper())
    units = len(body.encode("utf-16-le")) // 2
    valid = [m for m in mentions if m["start"] >= 0 and m["length"] >= 0 and m["start"] + m["length"] <= units]
    if len(valid) == 1:
        assert "@" + valid[0]["uuid"].upper() in shown


def test_identity_mapping_links_the_persons_other_conversations_in_the_package() -> None:
    """The mapping event, filed in the person's ACI conversation, links the dossiers this package holds under
    the person's PNI or number (messages captured before the link was known)."""
    event = _one("synthetic:identity mapping")
    pni_conversation = "direct:+31600000001:PNI:84a939c0"
    out = io.BytesIO()
    links = {pni_conversation: "../pni/transcript.html", "direct:+31600000001:+31699999999": "../other/t.html"}
    write_transcript(out, title="t", conversation="c", month="m", entries=[TranscriptEntry(1, event)], links=links)
    hrefs = lxml.html.fromstring(out.getvalue()).xpath("//a[@class='conversation']/@href")
    assert hrefs == ["../pni/transcript.html"]
