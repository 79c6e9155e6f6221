"""The HTML transcript: every kind rendered, hostile chat text inert (checked by parsing), deterministic."""

from __future__ import annotations

import io
import unicodedata
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive.lookahead import Lookahead
from bridge.archive.transcript import (
    CSP,
    TIMEZONE,
    TranscriptEntry,
    anchor,
    clean_text,
    format_time,
    safe_href,
    write_transcript,
)
from bridge.archive.transcript.message import general_body, message_body
from bridge.archive.transcript.text import _full, local_time, time_html
from bridge.events import MATRIX, SIGNAL, Attachment, ConversationId, Event, EventId, Kind, SenderId, SourceName
from bridge.policy import Withheld

ROOM = "!room:example.org"
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC = 23:13:20 CET

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
    "\"'><svg onload=alert(1)>",
    "</style></bdi></li></ol><iframe src=//evil>",
    "a\x00b\x07c\x1b[31m",
    "\u202eevil.exe\u202c gpj.",
    "<!-- x --> ]]> &amp; &lt;",
    'O\'Brien "quoted"',
]


def ev(i: int, kind: Kind = Kind.MESSAGE, content: dict[str, Any] | None = None, **kw: Any) -> Event:
    defaults: dict[str, Any] = {
        "source": MATRIX,
        "conversation": ConversationId(ROOM),
        "event_id": EventId(f"$e{i}"),
        "kind": kind,
        "sender": SenderId("@minister:example.org"),
        "sent_at": T0 + i * 1000,
        "received_at": T0 + i * 1000 + 5,
        "content": {"msgtype": "m.text", "body": f"message {i}"} if content is None else content,
    }
    defaults.update(kw)
    return Event(**defaults)


def render(entries: list[TranscriptEntry], **kw: Any) -> bytes:
    out = io.BytesIO()
    args: dict[str, Any] = {"title": "Minister & staf", "conversation": ROOM, "month": "2023-11"}
    args.update(kw)
    write_transcript(out, entries=iter(entries), **args)
    return out.getvalue()


def entries_of(events: list[Event], **kw: Any) -> list[TranscriptEntry]:
    return [TranscriptEntry(seq, e, **kw) for seq, e in enumerate(events)]


class _Collect(HTMLParser):
    """The stdlib's HTML5 tokenizer: a second, independent view of the tags and attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_inert(data: bytes) -> Any:
    """No script, no event handler, no foreign URL; one CSP meta; returns the lxml document."""
    doc = lxml.html.document_fromstring(data)
    for bad in ("script", "iframe", "object", "embed", "form", "base", "link", "svg", "math", "textarea"):
        assert not doc.xpath(f"//{bad}"), bad
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        for name, value in el.attrib.items():
            assert not name.lower().startswith("on"), (el.tag, name)
            if name in ("href", "src"):
                assert value.startswith("#") or ":" not in value.split("/", 1)[0], value
    metas = doc.xpath("//meta[@http-equiv]")
    assert len(metas) == 1 and metas[0].get("content") == CSP
    parser = _Collect()
    parser.feed(data.decode("utf-8"))
    for tag, attrs in parser.tags:
        assert tag not in ("script", "iframe", "svg", "object", "embed", "base", "form"), tag
        assert all(not a.startswith("on") for a, _ in attrs), (tag, attrs)
    return doc


def text_of(doc: Any) -> str:
    return str(doc.text_content())


# -- each kind ------------------------------------------------------------------------


def test_message_reply_time_and_marks() -> None:
    """A message shows sender, Amsterdam time and plain body; originals later edited/deleted are marked."""
    events = [ev(0), ev(1, content={"msgtype": "m.text", "body": "antwoord", "reply_to": "$e0"})]
    data = render(entries_of(events), edited_ids={"$e0": "$e9"}, deleted_ids={"$e1": "@minister:example.org"})
    doc = assert_inert(data)
    text = text_of(doc)
    assert "dinsdag 14 november 2023 23:13:20 (UTC+01:00)" in data.decode() and "message 0" in text
    assert doc.xpath('//time[@datetime="2023-11-14T23:13:20+01:00"]')[0].text_content() == "23:13"
    assert "bewerkt, laatste versie: $e9" in text and "Verwijderd door de afzender; het archief bewaart" in text
    assert doc.xpath('//html[@lang="nl"]') and doc.xpath('//li[@class="day"]/h2')[0].text == "dinsdag 14 november 2023"
    assert doc.xpath(f'//a[@href="#{anchor("$e0")}"]') and doc.xpath(f'//li[@id="{anchor("$e0")}"]')


def test_formatted_body_is_sanitised_with_the_plain_body_one_click_away() -> None:
    """A differing Matrix HTML body is shown through the allow-list (tags kept, attributes, scripts and
    links' targets dropped); the plain body sits in a <details>."""
    content = {
        "msgtype": "m.text",
        "body": "*vet* link",
        "format": "org.matrix.custom.html",
        "formatted_body": '<b onclick="x()">vet</b><script>alert(1)</script><a href="https://evil/">link</a>'
        '<img src="mxc://evil/x"><font color="red">!</font>',
    }
    doc = assert_inert(render(entries_of([ev(0, content=content)])))
    formatted = doc.xpath('//div[@class="body formatted"]')[0]
    assert (
        lxml.html.tostring(formatted, encoding="unicode")
        == '<div class="body formatted" dir="auto"><b>vet</b>link!</div>'
    )
    assert doc.xpath("//li//details/summary")[0].text_content() == "platte tekst zoals verstuurd"
    assert doc.xpath('//details/div[@class="body plain"]')[0].text_content() == "*vet* link"
    assert "alert" not in text_of(doc) and not doc.xpath("//img")


def test_formatted_body_equal_to_body_or_not_html_is_plain() -> None:
    """No <details> when the formatted body is the body, or its format is not Matrix HTML."""
    same = {"msgtype": "m.text", "body": "x", "format": "org.matrix.custom.html", "formatted_body": "x"}
    other = {"msgtype": "m.text", "body": "x", "format": "text/markdown", "formatted_body": "<b>x</b>"}
    doc = assert_inert(render(entries_of([ev(0, content=same), ev(1, content=other)])))
    assert not doc.xpath("//li//details") and not doc.xpath("//b") and len(doc.xpath('//div[@class="body"]')) == 2


def test_reply_fallback_is_not_shown_twice() -> None:
    """A reply's quoted fallback (`> ` lines in body, <mx-reply> in formatted_body) is stripped; without a
    reply relation the same text is shown as sent."""
    body = "> <@minister:example.org> message 0\n> tweede regel\n\nmijn antwoord"
    formatted = "<mx-reply><blockquote>message 0</blockquote></mx-reply>mijn <i>antwoord</i>"
    reply = {"msgtype": "m.text", "body": body, "reply_to": "$e0"}
    rich = {**reply, "format": "org.matrix.custom.html", "formatted_body": formatted}
    plain = {"msgtype": "m.text", "body": body}
    doc = assert_inert(render(entries_of([ev(0), ev(1, content=reply), ev(2, content=rich), ev(3, content=plain)])))
    bodies = [d.text_content() for d in doc.xpath('//div[contains(@class, "body")]')]
    assert bodies == ["message 0", "mijn antwoord", "mijn antwoord", "mijn antwoord", body]


def test_edit_deletion_reaction_link_to_their_target() -> None:
    """Edits, deletions and reactions name and link their target; a deletion keeps the original visible."""
    events = [
        ev(0),
        ev(1, Kind.EDIT, {"msgtype": "m.text", "body": "message 0 (fixed)"}, relates_to=EventId("$e0")),
        ev(2, Kind.REACTION, {"key": "👍"}, relates_to=EventId("$e0")),
        ev(3, Kind.DELETION, {"reason": "typo"}, relates_to=EventId("$e0")),
    ]
    doc = assert_inert(render(entries_of(events), edited_ids={"$e0"}, deleted_ids={"$e0"}))
    text = text_of(doc)
    assert "bewerking van $e0" in text and "message 0 (fixed)" in text and "message 0" in text
    assert "reageerde met 👍 (thumbs up sign) op $e0" in text
    assert "verwijderde $e0 (niet eerder in dit overzicht) (reden: typo); het origineel blijft in het archief" in text
    assert "bewerkt, latere versies hieronder" in text
    assert len(doc.xpath(f'//a[not(@class="seq")][@href="#{anchor("$e0")}"]')) == 3


def test_membership_names_state_retention_and_notes() -> None:
    """Joins teach display names; state, retention (a warning), undecryptable and unknown render as notes."""
    events = [
        ev(0, Kind.MEMBERSHIP, {"membership": "join", "target": "@minister:example.org", "displayname": "De Minister"}),
        ev(1),
        ev(2, Kind.STATE, {"type": "m.room.topic", "state_key": "", "content": {"topic": "Overleg"}}),
        ev(3, Kind.RETENTION_CHANGE, {"max_lifetime": 86_400_000 * 7, "min_lifetime": None, "previous": None}),
        ev(4, Kind.UNDECRYPTABLE, {"algorithm": "m.megolm.v1.aes-sha2"}),
        ev(5, Kind.UNKNOWN, {}, problem="content is not an object"),
        ev(6, Kind.MEMBERSHIP, {"membership": "leave", "target": "@minister:example.org"}),
    ]
    doc = assert_inert(render(entries_of(events)))
    text = text_of(doc)
    joined = " ".join(doc.xpath(f'//li[@id="{anchor("$e0")}"]')[0].text_content().split())
    assert joined == "De Minister @minister:example.org 23:13 #0kwam erbij (weergavenaam De Minister)"
    assert "m.room.topic" in text and "Overleg" in text
    assert "Waarschuwing (archiefwet)" in text and "7 dagen" in text
    assert "kon niet worden ontsleuteld" in text and "content is not an object" in text
    left = " ".join(doc.xpath(f'//li[@id="{anchor("$e6")}"]')[0].text_content().split())
    assert left == "@minister:example.org 23:13 #6verliet het gesprek"  # the name is forgotten with the leave
    assert doc.xpath('//li[contains(@class, "retention_change")]//p[@class="warn"]')


def test_attachments_inline_linked_or_missing() -> None:
    """Images inline via relative src, other files linked, media not in the package noted; no foreign URLs."""
    img = Attachment("stored", "image/png", "foto.png", 10, "ab", "blob-img")
    pdf = Attachment("stored", "application/pdf", "nota.pdf", 20, "cd", "blob-pdf")
    gone = Attachment("failed", "image/png", "kwijt.png", error="404")
    events = [ev(0, Kind.ATTACHMENT, {"msgtype": "m.image", "body": "foto.png"}, attachments=(img, pdf, gone))]
    media = {"blob-img": "media/foto.png", "blob-pdf": "media/nota 1.pdf"}
    doc = assert_inert(render(entries_of(events, media=media)))
    assert doc.xpath('//img[@src="media/foto.png"][@alt="foto.png"]')
    assert doc.xpath('//a[@href="media/nota%201.pdf"]')
    assert "ophalen mislukt: 404" in text_of(doc)


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:x",
        "data:text/html,x",
        "https://evil/x",
        "//evil/x",
        "/etc/passwd",
        "\\\\evil\\x",
        "c:\\x",
        "media/\x00x",
        "",
    ],
)
def test_unsafe_media_hrefs_are_not_linked(href: str) -> None:
    """A media href with a scheme, an absolute path, backslashes or controls is shown unlinked."""
    att = Attachment("stored", "image/png", "x.png", 1, "ab", "b")
    doc = assert_inert(
        render(entries_of([ev(0, Kind.ATTACHMENT, {"body": "x"}, attachments=(att,))], media={"b": href}))
    )
    assert not doc.xpath("//img") and not doc.xpath('//a[starts-with(@href, "media")]')
    assert safe_href(href) is None


def test_withheld_shows_only_a_tombstone() -> None:
    """A withheld event shows reason, author and decision time; not its body, sender or attachments."""
    att = Attachment("stored", "image/png", "geheim.png", 1, "ab", "b")
    secret = ev(
        0,
        content={"msgtype": "m.text", "body": "partijpolitiek geheim"},
        attachments=(att,),
        sender=SenderId("@partijgenoot:example.org"),
    )
    w = Withheld("partijpolitiek", "A. Archivaris", T0 + 3_600_000, 42)
    data = render([TranscriptEntry(0, secret, w, {"b": "media/geheim.png"}), TranscriptEntry(1, None, w)])
    doc = assert_inert(data)
    text = text_of(doc)
    assert (
        "achtergehouden: partijpolitiek, door A. Archivaris, woensdag 15 november 2023 00:13:20 (UTC+01:00)"
        " (besluitrecord #42)" in text
    )
    for leaked in (b"geheim", b"partijgenoot"):
        assert leaked not in data
    assert doc.xpath(f'//li[@id="{anchor("$e0")}"]') and doc.xpath('//li[@id="rec-1"]')


def test_times_are_amsterdam_and_hostile_times_do_not_raise() -> None:
    """Summer time is CEST; absurd timestamps render as 'invalid time' instead of failing the package."""
    assert format_time(1_720_000_000_000) == "2024-07-03 11:46:40 CEST"
    assert format_time(2**62).startswith("invalid time")
    assert format_time(None) == "unknown time"
    assert_inert(render(entries_of([ev(0, sent_at=-(2**62))])))


def reference_format_time(ms: int) -> str:
    """format_time as first written: strftime for every value."""
    try:
        return datetime.fromtimestamp(ms // 1000, TIMEZONE).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, OSError, ValueError):
        return f"invalid time ({ms})"


@settings(max_examples=2000)
@given(
    st.one_of(
        st.integers(),
        st.integers(min_value=-62_135_600_000_000, max_value=253_402_400_000_000),  # around years 1..9999
        st.integers(min_value=-4_000_000_000_000, max_value=4_200_000_000_000),  # 1843..2103: LMT, AMT, DST
    )
)
def test_format_time_equals_strftime(ms: int) -> None:
    """The hand-formatted time is exactly strftime's string (zone names, DST, years below 1000, overflow)."""
    assert format_time(ms) == reference_format_time(ms)


def test_format_time_equals_strftime_around_every_amsterdam_transition() -> None:
    """Each second within two minutes of the clock changes of 1900..2100 formats as strftime does."""

    def offset(second: int) -> object:
        return datetime.fromtimestamp(second, TIMEZONE).utcoffset()

    transitions = 0
    for day in range(-70 * 366, 130 * 366):
        lo, hi = day * 86_400, day * 86_400 + 86_400
        if offset(lo) == offset(hi):
            continue
        while hi - lo > 1:  # the first second of the new offset
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
        transitions += 1
        for second in range(hi - 120, hi + 120):
            assert format_time(second * 1000 + 999) == reference_format_time(second * 1000 + 999)
    assert transitions > 300


# -- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_text_everywhere_is_inert_and_shown_as_text(evil: str) -> None:
    """The same hostile string in title, ids, names, body, file name, reasons: no markup, shown as text."""
    att = Attachment("stored", f"image/png{evil}", evil, 1, "ab", "b")
    events = [
        ev(0, Kind.MEMBERSHIP, {"membership": "join", "target": evil, "displayname": evil}, sender=SenderId(evil)),
        ev(
            1,
            content={"msgtype": "m.text", "body": evil, "reply_to": evil},
            sender=SenderId(evil),
            event_id=EventId(evil),
        ),
        ev(2, Kind.ATTACHMENT, {"msgtype": "m.file", "body": evil}, attachments=(att,)),
        ev(3, Kind.DELETION, {"reason": evil}, relates_to=EventId(evil)),
        ev(4, Kind.REACTION, {"key": evil}, relates_to=EventId(evil)),
        ev(5, Kind.STATE, {"type": evil, "state_key": evil, "content": {evil: evil}}),
    ]
    entries = entries_of(events, media={"b": "media/x.bin"})
    entries.append(TranscriptEntry(6, ev(6), Withheld(evil, evil, T0, 1)))
    data = render(entries, title=evil, conversation=evil, month=evil, edited_ids={evil}, deleted_ids={evil})
    doc = assert_inert(data)
    shown = clean_text(evil)
    assert doc.xpath("//title")[0].text_content() == shown
    assert text_of(doc).count(shown) >= 10


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_text_in_notices_calls_upgrades_and_signal_parts_is_inert(evil: str) -> None:
    """Hostile text in look-alike names (the notice), call reasons, upgrade targets, stickers, payments,
    shared contacts, captions, mentions, sender names and identity mappings: no markup, shown as text."""
    signal = {"source": SIGNAL, "sender": SenderId("5e2f9d10")}
    call = {"type": "m.call.hangup", "call": {"action": "hangup", "call_id": evil, "reason": evil}}
    extras = {
        "body": "\ufffc " + evil,
        "sender_name": evil,
        "mentions": [{"uuid": evil, "start": 0, "length": 1}],
        "sticker": {"pack_id": evil, "sticker_id": 1, "emoji": evil},
        "payment": {"note": evil, "amount": evil},
        "contacts": [{"name": evil, "numbers": [evil], "emails": [evil], "organization": evil}],
        "captions": [evil],
        "conversation_as_received": evil,
    }
    att = Attachment("stored", "image/png", evil, 1, "ab", "b")
    events = [
        join(0, "@minister:example.org", evil),
        join(1, "@evil:example.org", evil),
        ev(2, Kind.STATE, {"type": "m.call.invite", "call": {"action": "invite", "call_id": evil}}),
        ev(3, Kind.STATE, call),
        ev(4, Kind.STATE, {"type": "m.room.tombstone", "state_key": "", "replacement_room": evil, "content": {}}),
        ev(5, Kind.STATE, {"type": "m.room.create", "state_key": "", "predecessor": {"room_id": evil}}),
        ev(6, Kind.ATTACHMENT, extras, attachments=(att,), **signal),
        ev(7, Kind.STATE, {"type": "signal.identity_mapping", "identities": {"aci": evil, "number": evil}}, **signal),
        ev(8, Kind.STATE, {"type": "signal.pin", "pin": {"action": "pin", "target": evil, "duration_seconds": 60}}),
    ]
    doc = assert_inert(
        render(entries_of(events, media={"b": "media/x.png"}), lookahead=Lookahead.of(events), links={evil: evil})
    )
    assert doc.xpath('//section[@class="lookalikes"]')
    assert text_of(doc).count(clean_text(evil)) >= 10


def _element_count(data: bytes) -> int:
    """Elements, not counting the emoji wrappers (a span with the emoji's name around emoji the body holds)."""
    doc = lxml.html.document_fromstring(data)
    return sum(1 for el in doc.iter() if isinstance(el.tag, str) and el.get("class") != "emoji")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1))
def test_any_body_is_text_and_adds_no_elements(body: str) -> None:
    """For any body: the parsed body text is `clean_text(body)` exactly and the element count is unchanged
    (but for emoji wrappers, which hold only the emoji and carry only its Unicode name)."""
    baseline = _element_count(render(entries_of([ev(0, content={"msgtype": "m.text", "body": "x"})])))
    data = render(entries_of([ev(0, content={"msgtype": "m.text", "body": body})]))
    doc = assert_inert(data)
    divs = doc.xpath('//div[@class="body"]')
    assert len(divs) == 1 and divs[0].text_content() == clean_text(body)
    assert _element_count(data) == baseline
    for span in divs[0].xpath('.//span[@class="emoji"]'):
        assert len(span) == 0 and set(span.attrib) == {"class", "role", "aria-label", "title"}


@given(st.text())
def test_clean_text_is_idempotent_and_control_free(text: str) -> None:
    """clean_text leaves no C0/C1 control but TAB/LF, no CR, no surrogate; applying it twice changes nothing."""
    once = clean_text(text)
    assert clean_text(once) == once
    assert all(c in "\t\n" or not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) for c in once)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in once)
    once.encode("utf-8")


def reference_clean_text(text: str) -> str:
    """The first, per-character clean_text: the definition the fast one must match."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch if _reference_shown(ch) else "\ufffd" for ch in text)


def _reference_shown(ch: str) -> bool:
    if ch in "\t\n":
        return True
    if unicodedata.category(ch) in ("Cc", "Cs"):
        return False
    cp = ord(ch)
    return not (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)


#: Characters at the edges of what clean_text keeps, mixed into arbitrary text (surrogates included).
EDGES = "\t\n\r\x00\x08\x0b\x1f \x7e\x7f\x80\x9f\xa0\xad\u200d\u202e\u2028\ud7ff\ud800\udfff\ue000"
EDGES += "\ufdcf\ufdd0\ufdef\ufdf0\ufeff\ufffd\ufffe\uffff\U00010000\U0001fffe\U0001ffff\U0010fffd\U0010ffff"


@settings(max_examples=2000)
@given(st.text(alphabet=st.one_of(st.sampled_from(EDGES), st.characters(exclude_categories=()))))
def test_clean_text_equals_the_reference_implementation(text: str) -> None:
    """The regex/isprintable clean_text gives exactly what the per-character reference gives, for any text."""
    assert clean_text(text) == reference_clean_text(text)


@pytest.mark.parametrize(
    "text",
    ["", "plain", "a\r\nb\rc\n", "tab\tnew\nline", "é👍\n", "\u202e\n\x00", EDGES],
    ids=["empty", "plain", "cr", "tab-lf", "non-ascii", "bidi-nul", "edges"],
)
def test_clean_text_equals_the_reference_on_edge_cases(text: str) -> None:
    """Each fast path (printable, only TAB/LF/CR, needs replacing) agrees with the reference."""
    assert clean_text(text) == reference_clean_text(text)


def test_output_is_deterministic() -> None:
    """The same entries give byte-identical output; there is no generation timestamp."""
    events = [ev(0), ev(1, Kind.EDIT, {"msgtype": "m.text", "body": "b"}, relates_to=EventId("$e0"))]
    first = render(entries_of(events), edited_ids={"$e0"})
    assert first == render(entries_of(events), edited_ids={"$e0"})
    assert first.startswith(b"<!DOCTYPE html>") and first.endswith(b"</html>\n")
    assert b"Dit verslag toont 2 records: recordnummers #0 tot en met #1." in first


# -- fidelity: polls, removed reactions, edits by others, lookalike names, markers ------------------------

ALICE, BOB = SenderId("@alice:example.org"), SenderId("@bob:example.org")


def render_ahead(events: list[Event], **kw: Any) -> Any:
    """Render with the first pass the package writer does; returns the checked document."""
    return assert_inert(render(entries_of(events), lookahead=Lookahead.of(events), **kw))


def poll_events() -> list[Event]:
    answers = [{"id": "ja", "text": "Ja"}, {"id": "nee", "text": "Nee"}]
    start = {"action": "start", "question": "Akkoord?", "answers": answers, "max_selections": 1, "disclosed": True}
    vote = {"action": "vote"}
    s = EventId("$e0")
    return [
        ev(0, Kind.POLL, {"poll": start}),
        ev(1, Kind.POLL, {"poll": {**vote, "answers": ["ja"]}}, relates_to=s, sender=ALICE),
        ev(2, Kind.POLL, {"poll": {**vote, "answers": ["nee"]}}, relates_to=s, sender=BOB),
        ev(3, Kind.POLL, {"poll": {**vote, "answers": ["ja"]}}, relates_to=s, sender=BOB),
        ev(4, Kind.POLL, {"poll": {**vote, "answers": ["bogus"]}}, relates_to=s),
        ev(5, Kind.POLL, {"poll": {"action": "end", "text": "Besloten"}}, relates_to=s),
        ev(6, Kind.POLL, {"poll": {**vote, "answers": ["nee"]}}, relates_to=s, sender=ALICE),
    ]


def test_poll_start_votes_and_result() -> None:
    """A poll shows question and answers, each voter's last vote under the start, replaced votes noted,
    unknown answers and late votes not counted, and the result per answer at its end."""
    doc = render_ahead(poll_events())
    text = " ".join(text_of(doc).split())
    assert "begon een peiling: Akkoord?" in text
    assert [li.text_content() for li in doc.xpath('//ol[@class="answers"]/li')] == ["Ja", "Nee"]
    votes = [" ".join(li.text_content().split()) for li in doc.xpath('//ul[@class="votes"]/li')]
    assert votes == [
        "@alice:example.org: “Ja” ($e1)",
        "@bob:example.org: “Ja” ($e3)",
        "@minister:example.org: geen antwoord ($e4)",
    ]
    assert "vervangt de eerdere stem van deze afzender $e2" in text
    assert "stemde bogus (geen antwoord van deze peiling) in peiling $e0" in text
    assert "sloot peiling $e0 Besloten" in text
    assert [li.text_content() for li in doc.xpath('//ul[@class="tally"]/li')] == ["Ja: 2", "Nee: 0"]
    assert "na de afsluiting van de peiling: niet geteld" in text


def test_poll_without_first_pass_or_start_still_shows_what_it_can() -> None:
    """Without the first pass a start still lists its answers; a vote on a poll not started this month
    shows its answer ids and says why."""
    events = poll_events()
    doc = assert_inert(render(entries_of([events[0], events[1]])))
    assert [li.text_content() for li in doc.xpath('//ol[@class="answers"]/li')] == ["Ja", "Nee"]
    doc = render_ahead([events[1]])
    assert "de peiling begon niet in deze maand" in text_of(doc) and "ja" in text_of(doc)


@pytest.mark.parametrize("flag", ["removed", "remove"])
def test_removed_reaction_never_reads_reacted(flag: str) -> None:
    """A reaction with removed (or, in older logs, remove) true reads "trok de reactie in", also under its
    message (struck through, "ingetrokken")."""
    events = [ev(0), ev(1, Kind.REACTION, {"key": "👍", flag: True}, relates_to=EventId("$e0"))]
    doc = render_ahead(events)
    text = " ".join(text_of(doc).split())
    assert "trok de reactie 👍 (thumbs up sign) in op minister:example.org: “message 0”" in text.replace("@", "")
    assert "reageerde" not in text
    gathered = doc.xpath(f'//li[@id="{anchor("$e0")}"]//ul[@class="reactions"]/li')
    assert [" ".join(li.text_content().split()) for li in gathered] == [
        "👍 (thumbs up sign) 0 @minister:example.org (ingetrokken)"
    ]
    assert gathered[0].xpath(".//s/a")[0].get("href") == f"#{anchor('$e1')}"


def test_edit_by_another_sender_is_a_rejected_attempt() -> None:
    """An edit whose sender is not the original's does not mark the original edited: the original notes
    the ignored attempt and the edit is shown as rejected; the sender's own edit still marks it."""
    target = EventId("$e0")
    events = [
        ev(0),
        ev(1, Kind.EDIT, {"msgtype": "m.text", "body": "ik trek mijn steun in"}, relates_to=target, sender=BOB),
        ev(2, Kind.EDIT, {"msgtype": "m.text", "body": "message 0, fixed"}, relates_to=EventId("$e9"), sender=BOB),
    ]
    doc = render_ahead(events, edited_ids={"$e0": "$e1"})
    text = " ".join(text_of(doc).split())
    original = doc.xpath(f'//li[@id="{anchor("$e0")}"]')[0]
    assert "bewerkt" not in original.text_content() and not original.xpath(".//details")
    assert "bewerkingspoging door een ander genegeerd, zie $e1" in text
    assert "afgewezen bewerkingspoging: $e0 is verstuurd door @minister:example.org, niet door deze afzender" in text
    assert "bewerking van $e9 (niet eerder in dit overzicht)" in text  # original not in this month: shown as sent
    own = [*events, ev(3, Kind.EDIT, {"msgtype": "m.text", "body": "v2"}, relates_to=target)]
    doc = render_ahead(own, edited_ids={"$e0": "$e3"})
    text = " ".join(text_of(doc).split())
    original = doc.xpath(f'//li[@id="{anchor("$e0")}"]')[0]
    assert original.xpath('./div[@class="body"]')[0].text_content() == "v2"  # the latest text, in place
    summary = " ".join(original.xpath(".//details/summary")[0].text_content().split())
    assert (
        summary.startswith("bewerkt, laatst op dinsdag 14 november 2023 23:13:23")
        and "(naar de bewerking); 1 eerdere" in summary
    )
    assert "oorspronkelijk, dinsdag 14 november 2023 23:13:20 (UTC+01:00):message 0" in text
    assert "bewerkingspoging door een ander genegeerd, zie $e1" in text


def join(i: int, who: str, name: str) -> Event:
    return ev(i, Kind.MEMBERSHIP, {"membership": "join", "target": who, "displayname": name}, sender=SenderId(who))


def test_names_and_ids_show_invisibles_and_full_ids() -> None:
    """Bidi overrides and zero-width characters in names and ids are shown as ⟨U+XXXX⟩; the id is always shown."""
    sneaky = "@ev\u202eil\u200b:example.org"
    events = [join(0, sneaky, "Mini\u200dster"), ev(1, sender=SenderId(sneaky))]
    text = text_of(render_ahead(events))
    assert "Mini⟨U+200D⟩ster @ev⟨U+202E⟩il⟨U+200B⟩:example.org" in text
    assert "\u202e" not in text and "\u200d" not in text


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("De Minister", "weergavenaam lijkt op die van @minister:example.org"),
        ("de  MINISTER\u200b", "weergavenaam lijkt op die van @minister:example.org"),
        ("Dе Мinistеr", "weergavenaam lijkt op die van @minister:example.org"),  # Cyrillic е, М
        ("@minister:example.org", "weergavenaam lijkt op de id @minister:example.org"),
        ("ｍｉｎｉｓｔｅｒ", "weergavenaam lijkt op de id @minister:example.org"),  # fullwidth, NFKC
    ],
)
def test_lookalike_names_are_flagged(name: str, why: str) -> None:
    """A display name equal to another participant's name or id after NFKC, casefold, removing invisibles
    and folding Cyrillic/Greek lookalikes carries a visible warning; the genuine name does not."""
    events = [join(0, "@minister:example.org", "De Minister"), join(1, "@evil:example.org", name), ev(2)]
    doc = render_ahead(events)

    def warnings(i: int) -> list[str]:
        return [
            w.text_content()
            for w in doc.xpath(f'//li[@id="{anchor(f"$e{i}")}"]/div[@class="head"]//span[@class="warn lookalike"]')
        ]

    assert warnings(1) == [f"⚠ {why}"]
    assert warnings(2) in ([], ["⚠ weergavenaam lijkt op die van @evil:example.org"])  # symmetric for names


def test_distinct_names_are_not_flagged() -> None:
    """Different names and ids carry no warning."""
    events = [join(0, "@minister:example.org", "De Minister"), join(1, "@bob:example.org", "Bob"), ev(2)]
    assert not render_ahead(events).xpath('//span[contains(@class, "lookalike")]')


def test_lookalike_ids_are_flagged_once_on_the_later_one() -> None:
    """An id that differs from another only by a homoglyph is listed once, in the notice at the top, and only
    the later-appearing id carries the marker (the code cannot tell which one is the impostor)."""
    events = [ev(0), ev(1, sender=SenderId("@mіnister:example.org")), ev(2)]  # Cyrillic і
    doc = render_ahead(events)
    warnings = [w.text_content() for w in doc.xpath('//span[@class="warn lookalike"]')]
    assert warnings == ["⚠ id lijkt op @minister:example.org"]
    assert doc.xpath(f'//li[@id="{anchor("$e1")}"]//span[@class="warn lookalike"]')
    notice = doc.xpath('//section[@class="lookalikes"]//li')
    assert [li.text_content() for li in notice] == [
        "@mіnister:example.org en @minister:example.org: de ids lijken op elkaar"
    ]


def test_lookalike_notice_lists_each_pair_once_whatever_the_traffic() -> None:
    """However many messages both look-alikes send, the notice has one line per pair; no look-alikes, no notice."""
    evil = SenderId("@evil:example.org")
    events = [join(0, "@minister:example.org", "De Minister"), join(1, evil, "De Mіnister")]
    events += [ev(i, sender=evil if i % 2 else SenderId("@minister:example.org")) for i in range(2, 40)]
    doc = render_ahead(events)
    rows = [li.text_content() for li in doc.xpath('//section[@class="lookalikes"]//li')]
    assert rows == ["@evil:example.org en @minister:example.org: “De Mіnister” lijkt op “De Minister”"]
    marked = {
        li.get("id")
        for li in doc.xpath('//li[contains(@class, "entry")][@id]')
        if li.xpath('.//span[@class="warn lookalike"]')
    }
    assert marked == {anchor(f"$e{i}") for i in range(1, 40, 2)}  # evil's join and messages, never the minister's
    assert not render_ahead([ev(0), ev(1, sender=SenderId("@bob:example.org"))]).xpath("//section")


def test_voice_view_once_and_disappearing_markers() -> None:
    """Voice messages show a marker and their duration; view-once and disappearing messages say so."""
    events = [
        ev(0, Kind.ATTACHMENT, {"msgtype": "m.audio", "body": "v.ogg", "voice": {}, "info": {"duration": 83_000}}),
        ev(1, content={"body": "geheim", "view_once": True, "expires_in_seconds": 3600}),
    ]
    text = text_of(render_ahead(events))
    assert "spraakbericht, 1:23" in text and "eenmalig bekijken" in text
    assert "verdwijnend: chatprogramma's verwijderen het 1:00:00 na lezen" in text


def test_unknown_event_shows_type_and_content() -> None:
    """An unknown event names its raw type and shows its content as indented JSON."""
    raw = {"type": "com.example.thing", "content": {"x": "<b>1</b>"}}
    doc = render_ahead([ev(0, Kind.UNKNOWN, {}, raw=raw, problem="unknown event type")])
    text = text_of(doc)
    assert "onbekende gebeurtenis van type com.example.thing" in text and '"x": "<b>1</b>"' in text
    assert not doc.xpath("//b")


@given(
    content=st.dictionaries(
        st.sampled_from(["msgtype", "body"]),
        st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.text(), max_size=2),
    ),
    source=st.sampled_from(["matrix", "signal"]),
)
def test_the_plain_message_fast_path_is_the_general_body(content: dict[str, object], source: str) -> None:
    """`message_body`'s fast path (content of only msgtype and body, no attachments) gives exactly what the
    general path gives (issue 15: transcript speed; output must stay byte-identical)."""
    ev = Event(
        source=SourceName(source),
        conversation=ConversationId("!r:example.org"),
        event_id=EventId("$e"),
        kind=Kind.MESSAGE,
        sender=SenderId("@a:example.org"),
        sent_at=1,
        received_at=1,
        content=content,
    )
    assert message_body(ev, {}) == general_body(ev, {})


@given(
    ms=st.integers(-62_135_596_800_000, 253_402_300_799_000),
    zone=st.sampled_from(["Europe/Amsterdam", "UTC", "America/St_Johns", "Asia/Kathmandu", "America/Caracas"]),
)
def test_time_html_is_the_full_dutch_time(ms: int, zone: str) -> None:
    """`time_html` (built from the ISO text's pieces) shows exactly `_full`, the clock time and the ISO time,
    for any time and zone (old offsets with seconds too)."""
    tz = ZoneInfo(zone)
    t = local_time(ms, tz)
    if t is None:
        return
    want = f'<time class="time" datetime="{t.isoformat()}" title="{_full(t)}">{t.hour:02d}:{t.minute:02d}</time>'
    assert time_html(ms, tz) == want
    assert time_html(ms, tz, t) == want


class _Str(str):
    def __str__(self) -> str:
        return "shown <differently>"


@settings(max_examples=1000)
@given(
    value=st.one_of(
        st.text(
            alphabet=st.characters(codec="utf-8") | st.sampled_from("&<>\"'\r\n\t\x00\x7f\u202e\ufffe\ud800👍"),
            max_size=30,
        ),
        st.text(alphabet="abc &<>\"'", max_size=10),
        st.integers(),
        st.none(),
        st.text(max_size=5).map(_Str),
    )
)
def test_esc_is_clean_text_then_html_escape(value: object) -> None:
    """`esc`'s shortcut (text with nothing to clean or escape is returned as it is) gives what cleaning and
    escaping give, for any text (controls, surrogates, bidi marks, every escaped character), numbers, None and
    str subclasses with their own str()."""
    import html as html_module

    from bridge.archive.transcript.text import clean_text, esc

    assert esc(value) == html_module.escape(clean_text(str(value)), quote=True)
