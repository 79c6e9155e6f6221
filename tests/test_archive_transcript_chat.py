"""The transcript reads like the chat: replies quote their original, reactions gather under their message,
edits show the latest text with earlier versions one click away, deletions stay in place, set-up is grouped,
emoji carry their names. And none of it leaks what is withheld or lets chat text become markup."""

from __future__ import annotations

from typing import Any

import lxml.html
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive.lookahead import Lookahead
from bridge.archive.lookalike import visible
from bridge.archive.transcript import TranscriptEntry, anchor, clean_text
from bridge.archive.transcript.text import emoji_html, emoji_name, esc
from bridge.events import EventId, Kind, SenderId
from bridge.policy import Withheld
from tests.test_archive_transcript import ALICE, BOB, HOSTILE, assert_inert, entries_of, ev, render


def words(el: Any) -> str:
    return " ".join(el.text_content().split())


def entry_of(doc: Any, event_id: str) -> Any:
    return doc.xpath(f'//li[@id="{anchor(event_id)}"]')[0]


def render_like_the_package(entries: list[TranscriptEntry]) -> Any:
    """As `render.py` does: the first pass sees only what is not withheld (tombstones have no event)."""
    shown = [e.event for e in entries if e.event is not None and e.withheld is None]
    return assert_inert(render(entries, lookahead=Lookahead.of(shown)))


def test_reply_quotes_a_snippet_of_its_original_with_a_link() -> None:
    long = "Kun je de Kamerbrief voor morgen klaarzetten? " * 5
    events = [ev(0, content={"body": long}), ev(1, content={"body": "Ja", "reply_to": "$e0"}, sender=ALICE)]
    doc = render_like_the_package(entries_of(events))
    quote = entry_of(doc, "$e1").xpath('./blockquote[@class="reply"]/a[@class="quote"]')[0]
    assert quote.get("href") == f"#{anchor('$e0')}"
    said = words(quote)
    assert said.startswith("@minister:example.org: “Kun je de Kamerbrief") and said.endswith("…”")
    assert len(said) < 120


def test_a_reply_to_a_message_not_in_the_month_says_so() -> None:
    doc = render_like_the_package(entries_of([ev(1, content={"body": "Ja", "reply_to": "$elders"})]))
    assert "antwoord op $elders (niet eerder in dit overzicht)" in words(entry_of(doc, "$e1"))


def test_hostile_text_in_quotes_versions_and_reactions_stays_text() -> None:
    """The attack: chat text and a display name crafted to become markup where they are repeated (quote, the
    edit's lead, version list, reaction)."""
    for evil in HOSTILE:
        name = {"membership": "join", "target": "@minister:example.org", "displayname": evil + ": x"}
        events = [
            ev(9, Kind.MEMBERSHIP, name),  # the name is repeated in quotes and the edit's lead too
            ev(0, content={"body": evil}),
            ev(1, content={"body": "ok", "reply_to": "$e0"}, sender=ALICE),
            ev(2, Kind.EDIT, {"body": evil + " v2"}, relates_to=EventId("$e0")),
            ev(3, Kind.REACTION, {"key": evil}, relates_to=EventId("$e0"), sender=BOB),
            ev(4, Kind.DELETION, {"reason": evil}, relates_to=EventId("$e0"), sender=BOB),
        ]
        doc = render_like_the_package(entries_of(events))
        original = entry_of(doc, "$e0")
        shown = " ".join(clean_text(evil).split())
        assert words(original.xpath('./div[@class="body"]')[0]) == " ".join(clean_text(evil + " v2").split())
        assert shown in words(original.xpath('.//details[@class="versions"]')[0])
        assert shown in words(original.xpath('.//ul[@class="reactions"]')[0])
        assert shown in words(entry_of(doc, "$e1").xpath(".//a[@class='quote']")[0])
        lead = entry_of(doc, "$e2").xpath(".//a[@class='quote']")[0]
        assert words(lead) == " ".join(f"het bericht van {visible(clean_text(evil))}: x".split()) and len(lead) == 1


def test_withheld_content_never_reaches_a_quote_or_a_version() -> None:
    """A withheld original is not quoted by its reply; a withheld edit is not among the original's versions."""
    w = Withheld("privé", "A. Archivaris", 1, 9)
    secret = ev(0, content={"body": "geheime tekst"})
    entries = [
        TranscriptEntry(0, None, w),
        TranscriptEntry(1, ev(1, content={"body": "ok", "reply_to": "$e0"}, sender=ALICE)),
        TranscriptEntry(2, ev(2, content={"body": "openbaar"})),
        TranscriptEntry(3, None, w),  # an edit of $e2 with secret text, withheld
        TranscriptEntry(4, ev(4, Kind.REACTION, {"key": "👍"}, relates_to=EventId("$e0"), sender=BOB)),
    ]
    doc = render_like_the_package(entries)
    data = lxml.html.tostring(doc, encoding="unicode")
    assert "geheime" not in data and secret.event_id not in words(entry_of(doc, "$e2"))
    assert "antwoord op $e0 (niet eerder in dit overzicht)" in words(entry_of(doc, "$e1"))
    assert not entry_of(doc, "$e2").xpath(".//details")


def test_edit_shows_latest_text_and_every_earlier_version() -> None:
    events = [
        ev(0, content={"body": "v1"}),
        ev(1, Kind.EDIT, {"body": "v2"}, relates_to=EventId("$e0")),
        ev(2, Kind.EDIT, {"body": "v3"}, relates_to=EventId("$e0")),
        ev(3, Kind.EDIT, {"body": "kaping"}, relates_to=EventId("$e0"), sender=BOB),  # not the sender: ignored
    ]
    doc = render_like_the_package(entries_of(events))
    original = entry_of(doc, "$e0")
    assert words(original.xpath('./div[@class="body"]')[0]) == "v3"
    versions = original.xpath('.//details[@class="versions"]')[0]
    assert versions.get("open") is None and "2 eerdere versies" in words(versions.xpath("./summary")[0])
    rows = [words(li) for li in versions.xpath("./ol/li")]
    assert len(rows) == 2 and rows[0].endswith(":v1") and rows[1].endswith(":v2")
    assert versions.xpath("./ol/li[2]/a")[0].get("href") == f"#{anchor('$e1')}"
    assert "kaping" not in words(original.xpath('./div[@class="body"]')[0])
    for i in (1, 2, 3):  # every edit keeps its own entry in log order
        assert entry_of(doc, f"$e{i}") is not None


def test_deleted_message_stays_readable_with_who_and_when() -> None:
    events = [ev(0, content={"body": "oeps"}), ev(5, Kind.DELETION, {"reason": "fout"}, relates_to=EventId("$e0"))]
    doc = render_like_the_package(entries_of(events))
    original = entry_of(doc, "$e0")
    assert "deleted" in original.get("class").split() and words(original.xpath('./div[@class="body"]')[0]) == "oeps"
    note = words(original.xpath('./p[@class="deleted-note"]')[0])
    assert note.startswith("Verwijderd door @minister:example.org op dinsdag 14 november 2023 23:13:25")
    assert "(reden: fout)" in note
    assert original.xpath('./p[@class="deleted-note"]/a')[0].get("href") == f"#{anchor('$e5')}"


def test_reactions_gather_under_their_message_per_emoji() -> None:
    target = EventId("$e0")
    events = [
        ev(0),
        ev(1, Kind.REACTION, {"key": "👍"}, relates_to=target, sender=ALICE),
        ev(2, Kind.REACTION, {"key": "👍"}, relates_to=target, sender=BOB),
        ev(3, Kind.REACTION, {"key": "🎉"}, relates_to=target, sender=ALICE),
        ev(4, Kind.REACTION, {"key": "👍", "removed": True}, relates_to=target, sender=ALICE),
    ]
    doc = render_like_the_package(entries_of(events))
    rows = [words(li) for li in entry_of(doc, "$e0").xpath('./ul[@class="reactions"]/li')]
    assert rows == [
        "👍 (thumbs up sign) 1 @alice:example.org (ingetrokken), @bob:example.org",
        "🎉 (party popper) 1 @alice:example.org",
    ]


def test_set_up_is_summarised_once_and_grouped_in_the_log() -> None:
    """State changes are listed in one closed block at the top; consecutive state and membership entries are
    one closed group in the log; every entry keeps its id (links still land)."""
    state = [
        ev(i, Kind.STATE, {"type": t, "state_key": "", "content": c})
        for i, (t, c) in enumerate(
            [
                ("m.room.create", {"room_version": "12"}),
                ("m.room.join_rules", {"join_rule": "invite"}),
                ("m.room.name", {"name": "Overleg"}),
            ]
        )
    ]
    join = ev(3, Kind.MEMBERSHIP, {"membership": "join", "target": "@minister:example.org"})
    events = [*state, join, ev(4), ev(5, Kind.STATE, {"type": "m.room.topic", "state_key": "", "content": {}})]
    doc = render_like_the_package(entries_of(events))
    block = doc.xpath('//details[@id="instellingen"]')[0]
    assert block.get("open") is None and len(block.xpath("./ol/li")) == 4
    assert "wie mag deelnemen: alleen op uitnodiging" in words(block) and "naam: “Overleg”" in words(block)
    groups = doc.xpath('//li[contains(@class, "group")]')
    assert (
        len(groups) == 1
        and words(groups[0].xpath(".//summary")[0]) == "3 instellingen en 1 lidmaatschapswijziging #0–#3"
    )
    for i in range(6):
        assert entry_of(doc, f"$e{i}") is not None
    assert entry_of(doc, "$e5").xpath("./p//a")[0].get("href") == f"#inst-{anchor('$e5')}"  # a lone one, ungrouped


def test_a_long_run_of_set_up_is_split_so_memory_stays_bounded() -> None:
    joins = [
        ev(
            i,
            Kind.MEMBERSHIP,
            {"membership": "join", "target": f"@u{i}:example.org"},
            sender=SenderId(f"@u{i}:example.org"),
        )
        for i in range(600)
    ]
    doc = render_like_the_package(entries_of(joins))
    sizes = [len(g.xpath(".//li[@id]")) for g in doc.xpath('//li[contains(@class, "group")]')]
    assert sizes == [256, 256, 88]


def test_day_headings_follow_the_archive_timezone() -> None:
    """Two messages either side of midnight in Amsterdam (22:59 and 23:01 UTC in winter) get two headings."""
    first = ev(0, sent_at=1_700_002_740_000)  # 2023-11-14 22:59 UTC = 23:59 CET
    second = ev(1, sent_at=1_700_002_860_000)  # 23:01 UTC = 00:01 CET on the 15th
    doc = render_like_the_package(entries_of([first, second]))
    assert [h.text for h in doc.xpath('//li[@class="day"]/h2')] == [
        "dinsdag 14 november 2023",
        "woensdag 15 november 2023",
    ]


def test_footer_gives_the_record_range_and_how_to_verify() -> None:
    from bridge.archive.transcript import Provenance

    data = render(
        entries_of([ev(0), ev(1)]), provenance=Provenance("log-a", 10, 50, 1_700_000_000_000, "maand verzegeld")
    )
    footer = words(assert_inert(data).xpath("//footer")[0])
    assert "recordnummers #0 tot en met #1" in footer and "records 10 tot en met 49 van het log log-a" in footer
    assert "proof/checkpoint-end.txt" in footer and "na 50 records" in footer
    assert "sha256sum -c manifest-sha256.txt" in footer and "chatarchief verify-package" in footer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from("ab <&\"'👍🏽🎉\u200d👨👩🇳🇱☕\ufe0f"), max_size=30))
def test_emoji_wrapping_keeps_the_text_and_adds_only_named_spans(text: str) -> None:
    """Property: wrapping emoji never changes the text a reader gets, and adds only emoji spans that hold
    nothing but the emoji and carry its name."""
    html = f"<div>{emoji_html(esc(text))}</div>"
    div = lxml.html.fragment_fromstring(html)
    assert div.text_content() == clean_text(text)
    for span in div.iter("span"):
        assert span.get("class") == "emoji" and len(span) == 0
        assert span.get("title") == emoji_name(span.text or "") != ""


def test_emoji_names() -> None:
    assert emoji_name("👍") == "thumbs up sign"
    assert emoji_name("🇳🇱") == "vlag NL"
    assert emoji_name("👍🏽") == "thumbs up sign + emoji modifier fitzpatrick type-4"


def test_a_message_the_homeserver_never_confirmed_is_marked_and_its_notice_says_why() -> None:
    """The archivist's side of `tests/test_spool_confirm.py`: a message that came only through the spool and a
    later `spool_event_unconfirmed` notice naming it. The message (a plain text message, which would otherwise
    take the lean path) carries a mark linking to the notice, the notice says in words what it means and links
    back; a message nobody questioned carries no such mark; the notice's event id is text, never markup."""
    from bridge.events import SPOOL_UNCONFIRMED

    for forged_id in ("$forged", HOSTILE[0]):
        events = [
            ev(0, content={"msgtype": "m.text", "body": "echt besluit"}),
            ev(1, content={"msgtype": "m.text", "body": "vervalst besluit"}, event_id=EventId(forged_id)),
        ]
        question = {"notice": SPOOL_UNCONFIRMED, "event_id": forged_id, "room_id": "!r:x", "waited_s": 121}
        events.append(ev(2, Kind.NOTICE, question, sender=None))
        doc = render_like_the_package(entries_of(events))
        marked = entry_of(doc, forged_id)
        mark = marked.xpath('.//span[@class="mark rejected"]')
        assert len(mark) == 1 and words(mark[0]).startswith("niet bevestigd door de homeserver")
        assert mark[0].xpath("./a")[0].get("href") == f"#{anchor('$e2')}"
        assert not entry_of(doc, "$e0").xpath('.//span[contains(@class, "mark")]')
        warning = entry_of(doc, "$e2").xpath('./p[@class="warn"]')[0]
        assert "kwam alleen binnen via de spool" in words(warning)
        assert warning.xpath("./a")[0].get("href") == f"#{anchor(forged_id)}"
