"""The `events` command's work: find events in the log by conversation, sender, period, text and kind.

An information specialist needs the exact id of a message before `withhold`, and a Woo request starts with
"everything X wrote about Y in March". `find(data_dir, keys, query)` streams the log through the
authenticated reader (`bridge.log.reader.iter_events`: every record decrypted in memory and checked, nothing
written anywhere) and yields the events `query` selects, oldest first. `matches(event, query)` is the pure
filter; `snippet(event)` a one-line, control-character-free preview of its text.

Text matching is case- and compatibility-insensitive (NFKC + casefold) over every string in the event's
content (body, formatted body, captions, poll questions and answers, reaction keys, file names…), excluding
the decryption evidence, so what a person saw is what they can search for.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.events import Event, Kind
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_events

_NOT_SEARCHED = frozenset({"encryption"})  # decryption evidence: keys and ids, not what anyone wrote
SNIPPET = 72


@dataclass(frozen=True, slots=True)
class Query:
    conversation: str | None = None
    #: Substring of the sender id (case-insensitive): "@minister" or a phone number's digits.
    sender: str | None = None
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    text: str | None = None
    kinds: frozenset[Kind] = frozenset()


@dataclass(frozen=True, slots=True)
class Found:
    seq: int
    event: Event


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _strings(value: object, skip: frozenset[str] = frozenset()) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def searchable_text(event: Event) -> str:
    """Every string of the content (and attachment names), joined: what a text query looks in."""
    parts = list(_strings(event.content, _NOT_SEARCHED))
    parts.extend(a.filename for a in event.attachments if a.filename)
    return "\n".join(parts)


def when_ms(event: Event) -> int:
    """The time a query's period applies to: when it was sent, else when the archiver received it."""
    return event.sent_at if event.sent_at is not None else event.received_at


def matches(event: Event, query: Query) -> bool:
    if query.conversation is not None and event.conversation != query.conversation:
        return False
    if query.kinds and event.kind not in query.kinds:
        return False
    if query.sender is not None and _fold(query.sender) not in _fold(event.sender or ""):
        return False
    at = when_ms(event)
    if query.since_ms is not None and at < query.since_ms:
        return False
    if query.until_ms is not None and at >= query.until_ms:
        return False
    return query.text is None or _fold(query.text) in _fold(searchable_text(event))


def snippet(event: Event, width: int = SNIPPET) -> str:
    """One line of the event's text for a listing: control and format characters shown as ⟨U+XXXX⟩."""
    body = event.content.get("body")
    text = body if isinstance(body, str) and body else searchable_text(event)
    out: list[str] = []
    for ch in " ".join(text.split()):
        out.append(f"⟨U+{ord(ch):04X}⟩" if unicodedata.category(ch) in ("Cc", "Cf") else ch)
    line = "".join(out)
    return line if len(line) <= width else line[: width - 1] + "…"


def find(data_dir: Path, keys: KeyMaterial, query: Query) -> Iterator[Found]:
    for seq, event in iter_events(data_dir, keys):
        if matches(event, query):
            yield Found(seq, event)
