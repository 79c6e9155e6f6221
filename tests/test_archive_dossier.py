"""DossierSummary: participants, bounded MDTO events and withheld counts from one pass over a month."""

from __future__ import annotations

from typing import Any

from bridge.archive.dossier import DossierSummary
from bridge.archive.mdto import DossierInfo, Organisation, Participant, Ref, dossier_xml, validate
from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId

T0 = 1_700_000_000_000


def ev(i: int, kind: Kind = Kind.MESSAGE, sender: str = "@a:x", **kw: Any) -> Event:
    return Event(
        MATRIX,
        ConversationId("!r:x"),
        EventId(f"$e{i}"),
        kind,
        SenderId(sender),
        T0 + i,
        T0 + i,
        kw.pop("content", {"msgtype": "m.text", "body": "hi"}),
        **kw,
    )


def test_creation_edits_deletions_and_sealing_in_log_order() -> None:
    """First message -> Creatie; edits -> Wijziging; deletions -> Verwijdering in chat; sealing -> Bevriezing."""
    s = DossierSummary()
    s.add(ev(0, Kind.MEMBERSHIP, content={"membership": "join", "target": "@a:x", "displayname": "Anna"}))
    s.add(ev(1))
    s.add(ev(2))
    s.add(ev(3, Kind.EDIT, relates_to=EventId("$e1")))
    s.add(ev(4, Kind.DELETION, sender="@b:x", relates_to=EventId("$e2"), content={"reason": None}))
    types = [e.type for e in s.events(T0 + 99)]
    assert types == ["Creatie", "Wijziging", "Verwijdering in chat", "Bevriezing"]
    assert s.events(T0 + 99)[0].at_ms == T0 + 1
    assert s.participants() == (Participant("@a:x", "matrix", "Anna"), Participant("@b:x", "matrix"))


def test_withheld_events_leave_no_trace_but_the_count() -> None:
    """A withheld event adds neither a participant nor an MDTO event; only withheld_count grows."""
    s = DossierSummary()
    s.add(ev(0, sender="@secret:x"), withheld=True)
    s.add(ev(1, Kind.EDIT, sender="@secret:x", relates_to=EventId("$e0")), withheld=True)
    assert s.withheld_count == 2 and s.participants() == () and s.events() == ()


def test_events_are_capped_and_folded() -> None:
    """Past `cap` per type, events fold into one counted event: memory stays bounded for busy months."""
    s = DossierSummary(cap=3)
    for i in range(10):
        s.add(ev(i, Kind.EDIT, relates_to=EventId("$x")))
    events = s.events()
    assert len(events) == 4
    assert events[-1].result == "en nog 7 keer (wijziging)" and events[-1].at_ms == T0 + 9


def test_summary_feeds_a_valid_dossier() -> None:
    """Participants, events and withheld count from the summary make a dossier that validates."""
    s = DossierSummary()
    for i in range(5):
        s.add(ev(i, sender=f"<b>@{i}</b>"))
    s.add(ev(9), withheld=True)
    info = DossierInfo(
        "k",
        "b",
        "n",
        "2023-11",
        Organisation("Org", "id"),
        Ref("serie"),
        s.participants(),
        s.events(T0 + 10),
        withheld_count=s.withheld_count,
    )
    validate(dossier_xml(info))
