"""The import path's fast normalise gives exactly the full normaliser's bytes (issue 15)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.events import EncodingError, Kind, canonical_bytes
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


# Whitespace a writer of JSON may put around separators: compact, Python's default, spaced before the colon
# (the decoder's `":` count misses such a key), newlines and tabs.
_SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : "), (",\n", "\t:\n"), (",", " :")])
# Bodies that hold what the key count sees: `":` inside a string, escaped colons and quotes, non-ASCII.
_BODY = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(['":', '" :', "\\u003a", ":", '"', "\\", "é", "\U0001f600", "x"]), max_size=8).map(
        "".join
    ),
)


@st.composite
def _plain_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events at or near the fast path's shape: every envelope field well typed, `format` fields present,
    null or absent, `unsigned` absent, null, flat, nested or holding a float."""
    content: dict[str, Any] = {"msgtype": draw(st.sampled_from(["m.text", "m.notice", "m.emote"])), "body": draw(_BODY)}
    for key in ("format", "formatted_body"):
        value = draw(st.one_of(st.just(_MISSING), st.none(), st.text(max_size=8)))
        if value is not _MISSING:
            content[key] = value
    event: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": draw(st.sampled_from(["!r:x", '!"r":x', "!r\\:x"])),
        "event_id": draw(st.sampled_from(["$e", '$"e":', "$é"])),
        "sender": "@a:x",
        "origin_server_ts": draw(st.integers(-(2**63), 2**64 - 1)),
        "content": content,
    }
    unsigned = draw(
        st.one_of(
            st.just(_MISSING), st.none(), st.fixed_dictionaries({"age": st.integers(0, 10**6)}),
            st.dictionaries(st.text(max_size=4), _value, max_size=3),
        )
    )  # fmt: skip
    if unsigned is not _MISSING:
        event["unsigned"] = unsigned
    keys = list(event)
    order = draw(st.permutations(keys))
    return {k: event[k] for k in order}


@given(event=_plain_events(), received_at=st.integers(-(2**63), 2**64 - 1), separators=_SEPARATORS, ascii=st.booleans())
@example(event=PLAIN, received_at=1, separators=(" , ", " : "), ascii=False)
@example(event={**PLAIN, "content": {"msgtype": "m.text", "body": '":":":'}}, received_at=1, separators=(",", ":"),
         ascii=False)  # fmt: skip
def test_fast_encoding_of_plain_messages_in_any_layout_is_the_full_normalisers(
    event: dict[str, Any], received_at: int, separators: tuple[str, str], ascii: bool
) -> None:
    """The spliced encoding, and the decoder's exact checks where the key count cannot decide (a key spaced
    before its colon, `":` in a string, a float or deep value in `unsigned`), give the full normaliser's
    bytes for plain messages in every key order and layout."""
    line = json.dumps(event, ensure_ascii=ascii, separators=separators).encode()
    assert fast.encode_line(line, received_at) == _slow(line, received_at)


def test_a_duplicate_key_hidden_by_the_layout_is_not_fast() -> None:
    """A key repeated with a space before its colon (the `":` count alone misses it) or inside `unsigned` or
    `content`: unknown, as the full normaliser has it."""
    base = dict(PLAIN)
    lines = [
        json.dumps(base, separators=(",", " : ")).encode().replace(b'"sender" :', b'"sender" : "@b:x", "sender" :'),
        orjson.dumps(base).replace(b'"age":12', b'"age":12,"age":13'),
        orjson.dumps(base).replace(b'"body":', b'"body":"a","body":'),
    ]
    for line in lines:
        result = fast.encode_line(line, 1)
        assert result == _slow(line, 1) and result[3] is True, line


def test_a_received_at_orjson_cannot_encode_fails_as_the_full_normaliser_does() -> None:
    """`received_at` beyond 64 bits: the same EncodingError as the full normaliser's, never other bytes."""
    line = orjson.dumps(PLAIN)
    for received_at in (2**64, -(2**63) - 1):
        with pytest.raises(EncodingError):
            _slow(line, received_at)
        with pytest.raises(EncodingError):
            fast.encode_line(line, received_at)


def test_the_common_message_is_spliced() -> None:
    """bench/ingest.py's event (Python's default separators, `unsigned.age`) takes the splice, not the
    decoder's exact checks or the full normaliser (else the fast path is dead code)."""
    line = json.dumps(PLAIN).encode()
    event = orjson.loads(line)
    shape = fast._shape(event, 5)
    assert shape is not None and fast._keys(event) == 10 and line.count(b'":') == 10
    assert fast._splice(event, shape, 5) == fast.encode_line(line, 5) == _slow(line, 5)


def _repeats_a_key(line: bytes) -> bool:
    """True if some object of `line` (JSON) holds a key twice (the stdlib sees every member as written)."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        repeated.extend(key for key in set(keys) if keys.count(key) > 1)
        return dict(items)

    json.loads(line, object_pairs_hook=pairs)
    return bool(repeated)


# A member written again (before the one kept: orjson keeps the last) at the top, in `content` or in `unsigned`.
_REPEATS = st.sampled_from([
    (b"", ["type", "room_id", "event_id", "sender", "origin_server_ts", "content", "unsigned"]),
    (b'"content"', ["msgtype", "body", "format", "formatted_body"]),
    (b'"unsigned"', ["age", ""]),
])  # fmt: skip
_REPEATED_VALUES = st.one_of(_value, st.sampled_from(['"', '\\"', "\\u0022", '":', "a"]))


@given(
    event=_plain_events(),
    separators=_SEPARATORS,
    ascii=st.booleans(),
    repeat=st.one_of(st.none(), st.tuples(_REPEATS, st.integers(0, 6), _REPEATED_VALUES)),
    escape=st.booleans(),
)
@example(event=PLAIN, separators=(", ", ": "), ascii=False, repeat=None, escape=False)
def test_the_quote_count_accepts_only_lines_without_a_repeated_key(
    event: dict[str, Any],
    separators: tuple[str, str],
    ascii: bool,
    repeat: tuple[tuple[bytes, list[str]], int, Any] | None,
    escape: bool,
) -> None:
    """`_quotes_match` is True only for a line that repeats no key and that `decode` returns as parsed (so
    the splice is the full normaliser's encoding), whatever the layout, a key repeated at any level with any
    value, or a `"` written as `\\u0022`; and True for the plain messages of a usual export."""
    if escape:  # every `"` in a string written as `\u0022` (via `\x01`, which JSON writes as `\u0001`)
        event = _quotes_as(event, "\x01")
    line = json.dumps(event, ensure_ascii=ascii, separators=separators).encode()
    if escape:
        line = line.replace(b"\\u0001", b"\\u0022")
    if repeat is not None:
        (where, keys), pick, value = repeat
        at = line.find(b"{", line.find(where)) + 1  # after the opening brace of the object `where` names
        if not at or line.find(where) < 0:
            return
        member = json.dumps({keys[pick % len(keys)]: value}).encode()[1:-1]
        line = line[:at] + member + (b"" if line[at:].lstrip().startswith(b"}") else b", ") + line[at:]
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return  # Infinity or NaN in `unsigned`: not JSON, not a shape the count is asked about
    shape = fast._shape(parsed, 5) if type(parsed) is dict else None
    if shape is None:
        return
    accepted = fast._quotes_match(line, parsed, shape)
    if accepted:
        assert not _repeats_a_key(line)
        assert decode.decode(line) == parsed
        assert fast.encode_line(line, 5) == _slow(line, 5)
    if repeat is None and '"' not in "".join(_strings(parsed)) and decode._plain_keys(parsed, decode._FAST_DEPTH) >= 0:
        assert accepted, line  # no `"` in a string, no float, no repeat: the usual line passes in any layout


def _quotes_as(value: Any, other: str) -> Any:
    """`value` with every `"` in its keys and strings replaced by `other`."""
    if type(value) is dict:
        return {k.replace('"', other): _quotes_as(v, other) for k, v in value.items()}
    if type(value) is list:
        return [_quotes_as(v, other) for v in value]
    return value.replace('"', other) if type(value) is str else value


def _strings(value: Any) -> list[str]:
    """Every key and string value in a parsed JSON value."""
    if type(value) is dict:
        return [*value, *(s for v in value.values() for s in _strings(v))]
    if type(value) is list:
        return [s for v in value for s in _strings(v)]
    return [value] if type(value) is str else []


def test_the_quote_count_refuses_hidden_repeats() -> None:
    """A key repeated (its value the same or not, spaced before its colon or not) or a `"` escaped as
    `\\u0022` in a string: never accepted by the count; the result is still the full normaliser's."""
    plain = json.dumps(PLAIN).encode()
    lines = [
        json.dumps(PLAIN, separators=(",", " : ")).encode().replace(b'"sender" :', b'"sender" : "@b:x", "sender" :'),
        plain.replace(b'"sender":', b'"sender" : "@b:x", "sender":'),
        plain.replace(b'"age": 12', b'"age": 12, "age": 13'),
        plain.replace(b'"body":', b'"body": "a", "body":'),
        plain.replace(b'"kamerbrief', b'"\\u0022kamerbrief'),
        plain.replace(b"{", b'{"type": "m.room.message", ', 1),
    ]
    for line in lines:
        parsed = orjson.loads(line)
        shape = fast._shape(parsed, 1)
        assert shape is not None and not fast._quotes_match(line, parsed, shape), line
        assert fast.encode_line(line, 1) == _slow(line, 1)
    shape = fast._shape(orjson.loads(plain), 1)
    assert shape is not None and fast._quotes_match(plain, orjson.loads(plain), shape)
