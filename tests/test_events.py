"""Tests for bridge.events: the Event value and its canonical encoding."""

from __future__ import annotations

import base64
import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import events
from bridge.events import (
    MATRIX,
    SIGNAL,
    Attachment,
    ConversationId,
    EncodingError,
    Event,
    EventId,
    Kind,
    SenderId,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
JSON_SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
JSON_DICTS = st.dictionaries(st.text(), JSON_VALUES, max_size=5)
OPT_TEXT = st.none() | st.text()
ATTACHMENTS = st.builds(
    Attachment,
    status=st.sampled_from(["stored", "pending", "oversized", "failed"]),
    media_type=OPT_TEXT,
    filename=OPT_TEXT,
    size=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    sha256=OPT_TEXT,
    blob_id=OPT_TEXT,
    url=OPT_TEXT,
    error=OPT_TEXT,
)
EVENTS = st.builds(
    Event,
    source=st.sampled_from([MATRIX, SIGNAL]),
    conversation=st.text(min_size=1).map(ConversationId),
    event_id=st.text(min_size=1).map(EventId),
    kind=st.sampled_from(list(Kind)),
    sender=st.none() | st.text().map(SenderId),
    sent_at=st.none() | INT64,
    received_at=INT64,
    content=JSON_DICTS,
    relates_to=st.none() | st.text(min_size=1).map(EventId),
    attachments=st.lists(ATTACHMENTS, max_size=3).map(tuple),
    raw=JSON_DICTS,
    problem=OPT_TEXT,
)


def sample_event() -> Event:
    return Event(
        source=MATRIX,
        conversation=ConversationId("!kabinet:example.org"),
        event_id=EventId("$Zb3rN9qVx1:example.org"),
        kind=Kind.ATTACHMENT,
        sender=SenderId("@minister:example.org"),
        sent_at=1_700_000_000_000,
        received_at=1_700_000_000_250,
        content={"msgtype": "m.image", "body": "notulen.png"},
        attachments=(Attachment(status="pending", media_type="image/png", url="mxc://example.org/abc", size=1234),),
        raw={"type": "m.room.message", "content": {"msgtype": "m.image", "body": "notulen.png"}},
    )


def test_round_trip_of_a_full_event() -> None:
    """An event with attachments survives canonical_bytes -> event_from_bytes unchanged."""
    event = sample_event()
    assert events.event_from_bytes(events.canonical_bytes(event)) == event


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    """The encoding has sorted keys, no whitespace, raw UTF-8, and carries the version."""
    event = Event(
        source=MATRIX,
        conversation=ConversationId("!r:x"),
        event_id=EventId("$e"),
        kind=Kind.MESSAGE,
        sender=None,
        sent_at=None,
        received_at=1,
        content={"z": 1, "a": "één"},
    )
    data = events.canonical_bytes(event)
    assert b" " not in data and b"\n" not in data
    assert data.startswith(b'{"attachments":[],"content":{"a":"\xc3\xa9\xc3\xa9n","z":1},')
    assert orjson.loads(data)["v"] == events.ENCODING_VERSION


def test_key_is_source_conversation_event_id() -> None:
    """The idempotency key is (source, conversation, event_id)."""
    assert sample_event().key == ("matrix", "!kabinet:example.org", "$Zb3rN9qVx1:example.org")


@given(EVENTS)
def test_round_trip_property(event: Event) -> None:
    """Every Event holding JSON values round-trips exactly through its canonical bytes."""
    assert events.event_from_bytes(events.canonical_bytes(event)) == event


@given(EVENTS, st.randoms(use_true_random=False))
def test_encoding_is_deterministic(event: Event, rnd: random.Random) -> None:
    """Equal events encode to identical bytes, whatever the insertion order of their dicts."""
    items = list(event.content.items())
    rnd.shuffle(items)
    reordered = Event(**{**_fields(event), "content": dict(items)})
    assert events.canonical_bytes(reordered) == events.canonical_bytes(event)
    assert events.canonical_bytes(event) == events.canonical_bytes(event)


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in Event.__slots__}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"{}",
        b'{"v": 999}',
        b'{"v": 1, "source": "matrix"}',
        b'{"v":1,"attachments":[],"content":{},"conversation":"!r","event_id":"$e","kind":"bogus",'
        b'"problem":null,"raw":{},"received_at":1,"relates_to":null,"sender":null,"sent_at":null,'
        b'"source":"matrix"}',
        b'{"v":1,"attachments":[],"content":{},"conversation":"","event_id":"$e","kind":"message",'
        b'"problem":null,"raw":{},"received_at":1,"relates_to":null,"sender":null,"sent_at":null,'
        b'"source":"matrix"}',
    ],
)
def test_garbage_raises_encoding_error(data: bytes) -> None:
    """Bytes that are not a canonical event (not JSON, wrong version, missing or bad fields) raise EncodingError."""
    with pytest.raises(EncodingError):
        events.event_from_bytes(data)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "\ud800", {1: "non-str key"}, object()])
def test_canonical_json_refuses_what_it_cannot_hold(value: object) -> None:
    """Values canonical JSON cannot hold raise EncodingError, and json_safe says False for them."""
    with pytest.raises(EncodingError):
        events.canonical_json(value)
    assert not events.json_safe(value)


def test_unparsed_raw_keeps_exact_bytes() -> None:
    """unparsed_raw stores the input bytes as base64 under `unparsed_b64`."""
    data = b"\xff\x00not json"
    assert base64.b64decode(events.unparsed_raw(data)["unparsed_b64"]) == data


@pytest.mark.parametrize("field", ["source", "conversation", "event_id"])
def test_event_refuses_empty_key_fields(field: str) -> None:
    """An Event with an empty source, conversation or event_id cannot be constructed."""
    with pytest.raises(ValueError, match="non-empty"):
        Event(**{**_fields(sample_event()), field: ""})


def test_event_refuses_a_kind_that_is_not_a_kind() -> None:
    """`kind` must be a Kind member, not a bare string."""
    with pytest.raises(TypeError):
        Event(**{**_fields(sample_event()), "kind": "message"})
