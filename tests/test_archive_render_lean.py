"""The lean rendering paths (issue 15, item 2: rendering cheaper) give the general code's bytes.

`Renderer.plain` writes the entry of a plain text message with a fraction of the general path's calls. The
property: over any month of mixed events (edits, reactions, deletions, replies, settings, memberships,
withheld records, Signal names, attachments, hostile text, missing times), the transcript with the lean path is
byte for byte the transcript without it; the lean path accepts exactly the plain messages nothing touches and
declines the rest. The package test builds January of the archive test log (two rooms, a room name, an edit,
a deletion, an image, a withheld message) with and without the lean path, inline and with the rendering pool
forced on, and compares every file's SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
from datetime import tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive import render
from bridge.archive.dossier import DossierSummary
from bridge.archive.lookahead import Lookahead
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.transcript import TranscriptEntry, kinds, write_transcript
from bridge.archive.transcript.kinds import Renderer
from bridge.archive.transcript.text import local_time
from bridge.events import MATRIX, SIGNAL, Attachment, ConversationId, Event, EventId, Kind, SenderId, SourceName
from bridge.policy import Withheld
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, archive_log_two_months, seal_for
from tests.test_archive_scan import _FIELD_VALUES, _FIELDS, _events

T0 = 1_705_320_000_000
SENDERS = [None, "@a:example.org", "@b:example.org", "@a:example.org\u202e", "+31612345678"]
TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("<>&\"'\r\n\u202e👍🏽🇳🇱"), max_size=20)
VALUES = st.none() | st.booleans() | st.integers(-3, 3) | TEXT
CONTENT_KEYS = [
    "msgtype", "body", "format", "formatted_body", "reply_to", "sender_name", "encryption",
    "redacted_before_capture", "membership", "target", "displayname", "key", "removed", "reason", "voice",
]  # fmt: skip
PLAIN = frozenset(("msgtype", "body"))


@st.composite
def months(draw: st.DrawFn) -> list[TranscriptEntry]:
    """A conversation-month: events of every kind that changes how a message shows, pointing at each other."""
    n = draw(st.integers(1, 14))
    entries: list[TranscriptEntry] = []
    for i in range(n):
        kind = draw(st.sampled_from([Kind.MESSAGE] * 6 + [Kind.EDIT, Kind.REACTION, Kind.DELETION, Kind.MEMBERSHIP,
                                                        Kind.STATE, Kind.ATTACHMENT, Kind.NOTICE]))  # fmt: skip
        plain = draw(st.booleans())
        keys = draw(st.lists(st.sampled_from(["msgtype", "body"] if plain else CONTENT_KEYS), max_size=4))
        content: dict[str, Any] = {k: draw(VALUES) for k in keys}
        if kind == Kind.STATE and draw(st.booleans()):
            content = {"type": "m.room.topic", "content": {"topic": draw(TEXT)}}
        earlier = draw(st.integers(0, max(0, i - 1)))
        relates = f"$e{earlier}" if i and kind in (Kind.EDIT, Kind.REACTION, Kind.DELETION) else None
        if i and draw(st.integers(0, 3)) == 0:
            content["reply_to"] = f"$e{earlier}"  # a reply quotes an earlier message (a snippet of it)
        atts = (Attachment("b1", "a.png", "image/png", 3, "stored"),) if kind == Kind.ATTACHMENT else ()
        sent = draw(st.none() | st.integers(T0 - 3 * 86_400_000, T0 + 3 * 86_400_000))
        event = Event(
            source=SourceName(draw(st.sampled_from([MATRIX, SIGNAL]))),
            conversation=ConversationId("!r:example.org"),
            event_id=EventId(f"$e{i}"),
            kind=kind,
            sender=SenderId(s) if (s := draw(st.sampled_from(SENDERS))) is not None else None,
            sent_at=sent,
            received_at=T0 + i,
            content=content,
            relates_to=EventId(relates) if relates is not None else None,
            attachments=atts,
        )
        withheld = Withheld("privé", "@archivaris:example.org", T0, 3) if draw(st.integers(0, 9)) == 0 else None
        shown = None if withheld is not None and draw(st.booleans()) else event
        entries.append(TranscriptEntry(100 + i, shown, withheld, {"b1": "media/a.png"}))
    return entries


def _transcript(entries: list[TranscriptEntry], edited: Any, deleted: Any, ahead: bool, tz: tzinfo) -> bytes:
    out = io.BytesIO()
    events = [e.event for e in entries if e.event is not None and e.withheld is None]
    write_transcript(
        out,
        title="t",
        conversation="!r:example.org",
        month="2024-01",
        entries=entries,
        edited_ids=edited,
        deleted_ids=deleted,
        names={"@b:example.org": "Bea"},
        lookahead=Lookahead.of(events) if ahead else None,
        tz=tz,
    )
    return out.getvalue()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=months(),
    marked=st.lists(st.integers(0, 13), max_size=3),
    ahead=st.booleans(),
    zone=st.sampled_from(["Europe/Amsterdam", "UTC", "Asia/Kathmandu"]),
)
def test_the_lean_entry_gives_the_general_transcript(
    entries: list[TranscriptEntry], marked: list[int], ahead: bool, zone: str
) -> None:
    """The whole transcript is the same bytes with and without `Renderer.plain` (marks from the writer's
    pre-pass too: edited and deleted ids, as sets and as mappings)."""
    edited = {f"$e{i}": "$e0" for i in marked[:1]}
    deleted = {f"$e{i}" for i in marked[1:]}
    tz = ZoneInfo(zone)
    lean = _transcript(entries, edited, deleted, ahead, tz)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kinds, "LEAN", False)
        general = _transcript(entries, edited, deleted, ahead, tz)
    assert lean == general


RAWS = st.dictionaries(
    st.sampled_from(["type", "content", "event_id", "sender", "body"]), st.none() | TEXT | st.dictionaries(TEXT, TEXT)
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(entries=months(), raws=st.lists(RAWS, min_size=14, max_size=14), ahead=st.booleans())
def test_a_message_is_rendered_without_its_raw(
    entries: list[TranscriptEntry], raws: list[dict[str, Any]], ahead: bool
) -> None:
    """`DossierLines` holds messages without their `raw`: the transcript (and the look-ahead and summary made of
    the same events) must not read a message's `raw`. Every event of a month gets a `raw` (a type, content,
    other keys); the transcript is the same bytes with every message's `raw` emptied."""
    given = [
        e._replace(event=dataclasses.replace(e.event, raw=raw)) if e.event is not None else e
        for e, raw in zip(entries, raws, strict=False)
    ]
    bare = [
        e._replace(event=dataclasses.replace(e.event, raw={}))
        if e.event is not None and e.event.kind == Kind.MESSAGE
        else e
        for e in given
    ]
    tz = ZoneInfo("Europe/Amsterdam")
    full = _transcript(given, {}, set(), ahead, tz)
    assert _transcript(bare, {}, set(), ahead, tz) == full


def _reference_first_pass(lines: list[render.DossierLine], targets: Any) -> tuple[DossierSummary, Lookahead]:
    """What `render._first_pass` stands for: every event through `DossierSummary.add`, and `Lookahead.of`."""
    summary = DossierSummary()

    def events() -> Any:
        for line in lines:
            if line.event is None:
                summary.withheld_count += 1
            else:
                summary.add(line.event)
                yield line.event

    return summary, Lookahead.of(events(), targets)


def _comparable(ahead: Lookahead) -> tuple[object, ...]:
    names = ahead.participants.names
    return (dataclasses.replace(ahead, participants=None), list(names.items()))  # type: ignore[arg-type]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=months(),
    replies=st.lists(st.booleans(), min_size=14, max_size=14),
    targets=st.sets(st.integers(0, 13)),
    names=st.lists(VALUES, min_size=14, max_size=14),
)
def test_the_first_pass_is_the_summary_and_the_lookahead(
    entries: list[TranscriptEntry], replies: list[bool], targets: set[int], names: list[object]
) -> None:
    """`render._first_pass` (its common case inline) gives the same `DossierSummary` and `Lookahead` as every
    event through `DossierSummary.add` and `Lookahead.of`: months of every kind, withheld lines, messages
    relating to something, replies, Signal profile names of every type, edit targets from the writer."""
    lines: list[render.DossierLine] = []
    for e, reply, name in zip(entries, replies, names, strict=False):
        ev = e.event
        if e.withheld is not None or ev is None:
            lines.append(render.DossierLine(e.seq, None, e.withheld))
            continue
        if ev.kind == Kind.MESSAGE and reply and ev.relates_to is None:
            ev = dataclasses.replace(ev, relates_to=EventId("$e0"))  # a message relating to something
        if ev.kind == Kind.MESSAGE and name is not None:
            ev = dataclasses.replace(ev, content={**ev.content, "sender_name": name})
        lines.append(render.DossierLine(e.seq, ev, None))
    named = {ev.relates_to for line in lines if (ev := line.event) is not None and ev.kind == Kind.EDIT}
    edited = {target: "$x" for target in (*(f"$e{i}" for i in targets), *named) if target is not None}
    state: Any = SimpleNamespace(edited=edited)
    summary, ahead = render._first_pass(lines, state)  # type: ignore[arg-type]
    want_summary, want_ahead = _reference_first_pass(lines, edited.keys())
    assert summary == want_summary
    assert _comparable(ahead) == _comparable(want_ahead)


def test_an_unknown_event_is_rendered_with_its_raw() -> None:
    """What `test_a_message_is_rendered_without_its_raw` relies on: an event the transcript has no view of shows
    its `raw` (its type), so a `raw` that is read changes the transcript."""
    ev = Event(MATRIX, ConversationId("!r:example.org"), EventId("$u"), Kind.UNKNOWN, SenderId("@a:x"), T0, T0)
    typed = dataclasses.replace(ev, raw={"type": "org.example.nieuw"})
    tz = ZoneInfo("UTC")
    shown = [_transcript([TranscriptEntry(1, e, None, {})], {}, set(), True, tz) for e in (ev, typed)]
    assert b"org.example.nieuw" in shown[1] and shown[0] != shown[1]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(entries=months(), ahead=st.booleans())
def test_the_lean_entry_takes_exactly_the_untouched_plain_messages(entries: list[TranscriptEntry], ahead: bool) -> None:
    """`Renderer.plain` accepts a message with no attachments and only msgtype/body that nothing in the month
    points at, and gives the general entry for it; it declines every other event (None)."""
    events = [e.event for e in entries if e.event is not None and e.withheld is None]
    look = Lookahead.of(events) if ahead else Lookahead()
    touched = look.quoted | set(look.deletions) | {ev.event_id for ev in look.settings}
    lean_renderer = Renderer({}, look.edited, frozenset(), look)
    general_renderer = Renderer({}, look.edited, frozenset(), look)
    for entry in entries:
        ev = entry.event
        if ev is None or entry.withheld is not None:
            continue
        t = local_time(ev.sent_at if ev.sent_at is not None else ev.received_at)
        lean = lean_renderer.plain(entry.seq, ev, t)
        if lean is None:  # as the transcript does: a declined event takes the general path (names learnt there)
            lean_renderer._entry(entry, t)
        general = general_renderer._entry(entry, t)  # the general path itself
        expected = (
            ev.kind == Kind.MESSAGE and not ev.attachments and ev.content.keys() <= PLAIN and ev.event_id not in touched
        )
        assert (lean is not None) == expected, (ev, touched)
        if lean is not None:
            assert lean == general


def test_a_touched_or_rich_message_is_declined() -> None:
    """Each reason to decline on its own: an attachment, another content key, a reaction to it, another kind."""
    base = Event(MATRIX, ConversationId("!r"), EventId("$m"), Kind.MESSAGE, SenderId("@a:x"), T0, T0,
                 {"msgtype": "m.text", "body": "hoi"})  # fmt: skip
    reaction = Event(MATRIX, ConversationId("!r"), EventId("$r"), Kind.REACTION, SenderId("@b:x"), T0, T0,
                     {"key": "👍"}, relates_to=EventId("$m"))  # fmt: skip
    t = local_time(T0)
    assert Renderer({}, {}, (), Lookahead.of([base])).plain(1, base, t) is not None
    assert Renderer({}, {}, (), Lookahead.of([base, reaction])).plain(1, base, t) is None
    assert Renderer({}, {"$m": "$x"}, (), Lookahead()).plain(1, base, t) is None  # edited (writer's pre-pass)
    assert Renderer({}, {}, {"$m"}, Lookahead()).plain(1, base, t) is None  # deleted (writer's pre-pass)
    rich = Event(MATRIX, ConversationId("!r"), EventId("$m"), Kind.MESSAGE, SenderId("@a:x"), T0, T0,
                 {"msgtype": "m.text", "body": "hoi", "format": "org.matrix.custom.html"})  # fmt: skip
    assert Renderer({}, {}, (), Lookahead()).plain(1, rich, t) is None
    att = Event(MATRIX, ConversationId("!r"), EventId("$m"), Kind.MESSAGE, SenderId("@a:x"), T0, T0,
                {"body": "a.png"}, attachments=(Attachment("b", "a.png", "image/png", 1, "stored"),))  # fmt: skip
    assert Renderer({}, {}, (), Lookahead()).plain(1, att, t) is None
    edit = Event(MATRIX, ConversationId("!r"), EventId("$e"), Kind.EDIT, SenderId("@a:x"), T0, T0, {"body": "x"})
    assert Renderer({}, {}, (), Lookahead()).plain(1, edit, t) is None


# -- the package ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> LogDir:
    return archive_log_two_months(tmp_path_factory.mktemp("leanlog"))


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_the_package_is_the_same_with_the_lean_paths(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """January's package by the general code (lean paths off, one process) and by the lean code in 1 and 2
    processes (the rendering pool forced on): every file hashes the same."""
    shutil.copytree(made.data_dir, tmp_path / "data")
    log = LogDir(tmp_path / "data", made.key_file, made.keys)
    january = Month(2024, 1)
    with monkeypatch.context() as mp:
        mp.setattr(kinds, "LEAN", False)
        before = snapshot(log.data_dir, log.keys, january, tmp_path / "general", OPTIONS, seal=seal_for(log), workers=1)
    want = _digests(before.path)
    assert any(rel.endswith("transcript.html") for rel in want) and len(want) > 20
    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0)
    for workers in (1, 2):
        out = tmp_path / f"lean{workers}"
        built = snapshot(log.data_dir, log.keys, january, out, OPTIONS, seal=seal_for(log), workers=workers)
        assert _digests(built.path) == want


def _outcome(decode: Any, d: object) -> tuple[str, object]:
    try:
        ev = decode(d)
    except Exception as exc:  # the error itself is what is compared
        return ("error", (type(exc), str(exc)))
    return ("event", (ev, [(type(getattr(ev, f)), getattr(ev, f)) for f in render._EVENT_FIELDS]))


@settings(max_examples=500, deadline=None)
@given(
    event=_events(),
    changes=st.lists(
        st.tuples(
            st.sampled_from(_FIELDS),
            st.one_of(st.just("<del>"), _FIELD_VALUES, st.sampled_from([*(k.value for k in Kind), "nope", 2])),
        ),
        max_size=3,
    ),
)
def test_the_lean_event_decode_is_event_from_json(event: Event, changes: list[tuple[str, object]]) -> None:
    """`render.event_of` gives exactly what `Event.from_json` gives (the same event, field by field and type by
    type, or the same error) for encodings of events of every kind and source, with fields removed, of other
    types, empty, unknown kinds and versions, attachments, and for values that are not objects."""
    d: dict[str, Any] = event.to_json()
    for name, value in changes:
        if value == "<del>":
            d.pop(name, None)
        else:
            d[name] = value
    for case in (d, [d], "x", None):
        assert _outcome(render.event_of, case) == _outcome(Event.from_json, case)


@pytest.mark.parametrize("kind", list(Kind))
def test_the_lean_event_decode_agrees_for_every_field_of_every_value(kind: Kind) -> None:
    """Every field of a plain encoding replaced by every value of another type (or removed), one at a time:
    `render.event_of` and `Event.from_json` agree on each."""
    from tests.conftest import make_event

    base = make_event(1).to_json()
    base["kind"] = kind.value
    for name in _FIELDS:
        for value in ["<del>", None, "", "x", "$e1", 0, 7, True, False, [], {}, ["a"], {"k": 1}, 2.5]:
            d = dict(base)
            if value == "<del>":
                del d[name]
            else:
                d[name] = value
            assert _outcome(render.event_of, d) == _outcome(Event.from_json, d), (name, value)
    assert _outcome(render.event_of, base) == _outcome(Event.from_json, base)


def _read(lines: Any) -> tuple[str, object]:
    try:
        return ("lines", list(lines()))
    except Exception as exc:  # the error itself is what is compared
        return ("error", (type(exc), str(exc)))


def _twice(path: Path, budget: int | None) -> tuple[str, object]:
    """The lines of a second pass over one `DossierLines` (rendering takes two), after a first one."""
    try:
        lines = render.DossierLines(path, cache_bytes=budget)
        first = list(lines)
    except Exception as exc:
        return ("error", (type(exc), str(exc)))
    second = _read(lambda: lines)
    assert second == ("lines", first)
    return second


def _bare(result: tuple[str, object]) -> tuple[str, object]:
    """`result` with every message's `raw` emptied (as `DossierLines` holds them)."""
    kind, lines = result
    if kind != "lines":
        return result
    assert isinstance(lines, list)
    return kind, [
        line._replace(event=dataclasses.replace(ev, raw={}))
        if (ev := line.event) is not None and ev.kind == Kind.MESSAGE
        else line
        for line in lines
    ]


def test_dossier_lines_are_each_line_parsed_by_dossier_line_parse(made: LogDir, tmp_path: Path) -> None:
    """`DossierLines` (its common case inline) gives, for every line of January's dossiers (plain messages, an
    edit, a deletion, an image, a withheld tombstone) and for lines that are no event line at all, what
    `DossierLine.parse` gives line by line, or the same error, streamed, held and held in part, pass after pass;
    held messages without their `raw`, every other event as parsed."""
    shutil.copytree(made.data_dir, tmp_path / "data")
    log = LogDir(tmp_path / "data", made.key_file, made.keys)
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    files = sorted(pkg.rglob("events.jsonl"))
    lines = [line for f in files for line in f.read_bytes().splitlines(keepends=True)]
    assert any(b'"withheld":' in line for line in lines) and len(lines) > 5
    parsed = [render.DossierLine.parse(line) for line in lines]
    assert any(p.event is not None and p.event.kind == Kind.MESSAGE and p.event.raw for p in parsed)
    assert any(p.event is not None and p.event.kind != Kind.MESSAGE and p.event.raw for p in parsed)
    odd = [b"[1]\n", b'{"seq":3}\n', b'{"seq":3,"event":{"v":1}}\n', b'{"withheld":null,"seq":4,"event":[]}\n', b"x\n"]
    cases = [lines, *([*lines[:2], bad] for bad in odd)]
    for n, case in enumerate(cases):
        path = tmp_path / f"case{n}.jsonl"
        path.write_bytes(b"".join(case))
        want = _read(lambda: (render.DossierLine.parse(line) for line in case))  # noqa: B023  (read at once)
        assert _read(lambda: render.DossierLines(path, cache_bytes=0)) == want  # noqa: B023  (streamed: as parsed)
        size = path.stat().st_size
        # held whole, and held in part (budgets inside a line, at a line's charge, past it)
        budgets = (None, 1, 767, 768, 769, 1024, 2048, size // 2, size - 1, size, size * 5 // 3, 10 * size)
        for budget in budgets:
            assert _bare(_read(lambda: render.DossierLines(path, cache_bytes=budget))) == _bare(want), budget  # noqa: B023
            assert _bare(_twice(path, budget)) == _bare(want), budget
        if n == 0:  # held whole: no message keeps its raw, every other event does
            assert _twice(path, None) == _bare(want) != want
