"""The import path's fast normalise gives exactly the full normaliser's bytes (issue 15)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.events import Kind, canonical_bytes
from bridge.sources import decode
from bridge.sources.matrix import fast
from bridge.sources.matrix.normalise import normalise

_MISSING = object()
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=12), st.floats(allow_nan=False)
)
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# Mostly well-formed field values, sometimes anything (mistyped, empty, missing).
_id = st.one_of(st.sampled_from(["$e1:x", "!r:x", "@a:x"]), st.just(""), _value, st.just(_MISSING))
_text = st.one_of(st.text(max_size=40), _value, st.just(_MISSING))


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    content: dict[str, Any] = {
        "msgtype": draw(st.one_of(st.sampled_from(["m.text", "m.notice", "m.emote", "m.image", "m.location"]), _text)),
        "body": draw(_text),
        "format": draw(st.one_of(st.just(_MISSING), st.just("org.matrix.custom.html"), _value)),
        "formatted_body": draw(st.one_of(st.just(_MISSING), st.text(max_size=20), _value)),
    }
    if draw(st.booleans()):
        content.update(draw(st.dictionaries(st.sampled_from(["m.relates_to", "url", "info", "x"]), _value, max_size=2)))
    event: dict[str, Any] = {
        "type": draw(st.one_of(st.just("m.room.message"), st.sampled_from(["m.reaction", "m.room.name"]), _value)),
        "room_id": draw(_id),
        "event_id": draw(_id),
        "sender": draw(_id),
        "origin_server_ts": draw(st.one_of(st.integers(0, 2**63 - 1), _value, st.just(_MISSING))),
        "content": draw(st.one_of(st.just({k: v for k, v in content.items() if v is not _MISSING}), _value)),
        "unsigned": draw(
            st.one_of(
                st.just(_MISSING),
                st.fixed_dictionaries({"age": st.integers(0, 10**6)}),
                st.fixed_dictionaries({"redacted_because": _value}),
                _value,
            )
        ),
    }
    if draw(st.booleans()):
        event.update(draw(st.dictionaries(st.sampled_from(["state_key", "redacts", "extra"]), _value, max_size=2)))
    return {k: v for k, v in event.items() if v is not _MISSING}


def _slow(line: bytes, received_at: int) -> tuple[str, str, bytes, bool]:
    event = normalise(line, received_at=received_at)
    return event.conversation, event.event_id, canonical_bytes(event), event.kind is Kind.UNKNOWN


PLAIN = {
    "type": "m.room.message",
    "room_id": "!room:ministerie.example",
    "event_id": "$abc",
    "sender": "@official:ministerie.example",
    "origin_server_ts": 1_764_000_000_000,
    "content": {"msgtype": "m.text", "body": "kamerbrief morgen"},
    "unsigned": {"age": 12},
}


@given(event=_events(), received_at=st.integers(0, 2**63 - 1), spaced=st.booleans())
@example(event=PLAIN, received_at=1, spaced=False)
def test_fast_encoding_is_the_full_normalisers(event: dict[str, Any], received_at: int, spaced: bool) -> None:
    """For any event (plain messages and near misses: mistyped, empty, extra or missing fields, other types,
    redactions, floats), `encode_line` = conversation, id, canonical bytes and unknown-ness of `normalise`."""
    line = json.dumps(event, ensure_ascii=spaced, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert fast.encode_line(line, received_at) == _slow(line, received_at)


@given(line=st.binary(max_size=300))
def test_fast_encoding_of_any_bytes_is_the_full_normalisers(line: bytes) -> None:
    """Arbitrary bytes (not JSON, not objects, duplicate keys...) take the same path to the same bytes."""
    assert fast.encode_line(line, 7) == _slow(line, 7)


def test_duplicate_keys_and_big_integers_are_not_fast() -> None:
    """Input the decoder keeps as bytes (a repeated key, an integer beyond 64 bits) is unknown, as before."""
    dup = b'{"type":"m.room.message","type":"m.room.message","room_id":"!r:x","event_id":"$e","sender":"@a:x",'
    dup += b'"origin_server_ts":1,"content":{"msgtype":"m.text","body":"x"}}'
    big = orjson.dumps({**PLAIN, "unsigned": {"age": 1}}).replace(b'"age":1', b'"age":123456789012345678901234')
    for line in (dup, big):
        result = fast.encode_line(line, 1)
        assert result == _slow(line, 1) and result[3] is True


def test_plain_messages_take_the_fast_path() -> None:
    """The common import event is encoded without the full normaliser (else the fast path is dead code)."""
    for msgtype in ("m.text", "m.notice", "m.emote"):
        event = {**PLAIN, "content": {"msgtype": msgtype, "body": "b", "format": "org.matrix.custom.html"}}
        assert fast._plain_message(orjson.loads(orjson.dumps(event)), 5) is not None
    assert fast._plain_message({**PLAIN, "state_key": ""}, 5) is None


@given(value=st.dictionaries(st.text(max_size=4), _value, max_size=4), depth=st.integers(0, 6))
def test_one_walk_decides_what_the_two_checks_decide(value: dict[str, Any], depth: int) -> None:
    """The decoder's one-walk check counts the keys exactly when the value is plain within `depth`."""
    expected = decode._count_keys(value) if decode._plain_as_parsed(value, depth) else -1
    assert decode._plain_keys(value, depth) == expected
