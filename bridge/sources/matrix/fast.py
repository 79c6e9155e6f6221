"""The import path's normalise: one line in, its canonical Event bytes out, common messages without an Event.

Contract (pure, never raises for any input): `encode_line(line, received_at)` returns
`(conversation, event_id, payload, unknown)` where `payload` is byte for byte
`events.canonical_bytes(normalise(line, received_at=received_at))` and `unknown`
says whether that event is of kind UNKNOWN (a property test pins both).

Why: most of an import is plain text messages, and for them the full normaliser
builds dataclasses (the Event, its parts) only to turn them back into a dict for
the canonical encoding. Here a decoded `m.room.message` whose envelope and
content hold only the fields below, all well typed, is encoded straight from the
dict; anything else (state, relations, media, redactions, mistyped or extra
fields) takes the full `normalise`, which stays the one definition of an Event.

How it stays cheap (~3.5 instead of ~7 µs a line, bench/ingest.py's events): the line is parsed once, its
shape checked on the parse, and whether `decode` would return that parse as it is (no float, shallow, no key
repeated in any object) is decided on that shape, which knows its keys and strings without a walk (only
`unsigned` is walked): first by the line's count of `"`, two per string of the parse when none of them holds
a `"` (`_quotes_match`, one scan of the line), else by the decoder's own acceptance test (no more `":` than
keys, no key spaced before its colon: two scans); a line that passes is one `decode` returns as parsed, so
the result is `_plain_message`'s. A line that fails both goes through `decode` as before; any other line
straight to `normalise`. The canonical bytes are then spliced from orjson's encodings of the parts
in sorted-key order (`_splice`): `raw` is the parsed event encoded with sorted keys as it is (its keys are
the envelope's, so `content` comes first, as in the full encoding), which costs less than taking `content`
out and encoding the rest (the body is encoded twice, once for `content`: cheaper than the dict copy).
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge import events
from bridge.events import JSONDict, Kind
from bridge.sources import decode as _decode
from bridge.sources.decode import decode
from bridge.sources.matrix.normalise import normalise

_ENVELOPE = frozenset({"type", "room_id", "event_id", "sender", "origin_server_ts", "content", "unsigned"})
_CONTENT = frozenset({"msgtype", "body", "format", "formatted_body"})
_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
_SORT = orjson.OPT_SORT_KEYS
#: orjson's integer range (a `received_at` outside it makes orjson refuse, as `_plain_message` would).
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
#: The parts of `_plain_message`'s encoding around its values, keys in sorted order (`Event.to_json`'s
#: fields for kind MESSAGE with no relation or attachment): attachments, content, conversation, event_id,
#: kind, problem, raw, received_at, relates_to, sender, sent_at, source, v.
_AT_CONTENT = b'{"attachments":[],"content":'
_AT_CONVERSATION = b',"conversation":'
_AT_EVENT_ID = b',"event_id":'
_AT_RAW = b',"kind":' + orjson.dumps(Kind.MESSAGE.value) + b',"problem":null,"raw":'
_AT_RECEIVED = b',"received_at":'
_AT_SENDER = b',"relates_to":null,"sender":'
_AT_SENT = b',"sent_at":'
_AT_END = b',"source":' + orjson.dumps(events.MATRIX) + b',"v":' + orjson.dumps(events.ENCODING_VERSION) + b"}"
#: Nesting depth `decode` gives `unsigned` in its one-walk check (`_FAST_DEPTH` at the top, one less below).
_UNSIGNED_DEPTH = _decode._FAST_DEPTH - 1

_Shape = tuple[str, str, str, int, JSONDict, JSONDict]


def encode_line(line: bytes, received_at: int) -> tuple[str, str, bytes, bool]:
    """(conversation, event_id, canonical payload, is unknown) of one import line (see module docstring)."""
    try:
        event = orjson.loads(line)
        shape = _shape(event, received_at) if type(event) is dict else None
        if shape is not None:
            if _quotes_match(line, event, shape) or _decode.accepted_as_parsed(line, _keys(event)):
                return _splice(event, shape, received_at)  # `decode(line)` returns `event` itself
            decoded = decode(line)  # the decoder's exact checks decide
            if type(decoded) is dict:
                fast = _plain_message(decoded, received_at)
                if fast is not None:
                    return fast
    except Exception:  # noqa: S110  # the full normaliser below keeps the line and names the bug
        pass
    event = normalise(line, received_at=received_at)
    return event.conversation, event.event_id, events.canonical_bytes(event), event.kind is Kind.UNKNOWN


def _shape(event: JSONDict, received_at: int) -> _Shape | None:
    """(room, event id, sender, sent at, content, the content kept) of a plain text/notice/emote message
    with a complete envelope, else None: exactly the events `_plain_message` encodes."""
    get = event.get
    if get("type") != "m.room.message" or not _ENVELOPE.issuperset(event):
        return None
    room, event_id, sender, sent_at = get("room_id"), get("event_id"), get("sender"), get("origin_server_ts")
    if (
        type(room) is not str
        or type(event_id) is not str
        or type(sender) is not str
        or type(sent_at) is not int
        or not (room and event_id and sender)
    ):
        return None
    content, unsigned = get("content"), get("unsigned")
    if type(content) is not dict or not _CONTENT.issuperset(content):
        return None
    if unsigned is not None and (type(unsigned) is not dict or "redacted_because" in unsigned):
        return None
    msgtype, body = content.get("msgtype"), content.get("body")
    if msgtype not in _MSGTYPES or type(body) is not str:
        return None
    out: JSONDict
    if len(content) == 2:  # msgtype and body only: the content kept is the content (encoded with sorted keys)
        out = content
    else:
        out = {"msgtype": msgtype, "body": body}
        for key in ("format", "formatted_body"):
            value = content.get(key)
            if value is None:
                continue
            if type(value) is not str:
                return None  # the full normaliser names it in `problem`
            out[key] = value
    if type(received_at) is not int or not _INT_MIN <= received_at <= _UINT_MAX:
        return None
    return room, event_id, sender, sent_at, content, out


def _quotes_match(line: bytes, event: JSONDict, shape: _Shape) -> bool:
    """True only if `line` repeats no key in any object, for an event `_shape` accepted that is plain as
    parsed (`_plain_quotes`): its `"` count is exactly two per string (key or value) of the parse, no string
    of which holds a `"`. Never True for a line `decode` would not return as parsed (then False: the key
    count decides, `decode.accepted_as_parsed`).

    Why it is sound: in JSON text a `"` is a string's delimiter or, escaped (`\\"`), a character of the
    string; so a string holding no `"` when parsed (not even as `\\u0022`) has exactly two in the text, and
    the text's count is two per string written: each key of every object written, and each string value.
    orjson keeps the last of a repeated key's members and drops the others, each with its key (two more `"`,
    whatever its value), so the text holds at least two more than the parse whenever a key was repeated.
    Whitespace and other escapes hold no `"`: any layout passes. What it saves: one scan of the line for a
    one-byte `"` instead of the decoder's two (`":` and the spaced-colon pattern), 1.1 -> ~0.5 µs a line.
    """
    room, event_id, sender, _, content, _ = shape
    # Keys: the envelope's and the content's (`_shape`: of `_ENVELOPE` and `_CONTENT`, no `"` in them).
    # Strings: `type`, `room_id`, `event_id`, `sender`, and the content's non-null values (`_shape`: str or
    # None); `type` and `msgtype` are of `_shape`'s constants, no `"` in them.
    expected = 2 * (len(event) + len(content)) + 8
    if '"' in room or '"' in event_id or '"' in sender:
        return False
    for value in content.values():
        if value is not None:
            if '"' in value:
                return False
            expected += 2
    unsigned = event.get("unsigned")
    if unsigned is not None:  # `_shape`: a dict
        inner = _plain_quotes(unsigned, _UNSIGNED_DEPTH)
        if inner < 0:
            return False
        expected += inner
    return line.count(b'"') == expected


def _plain_quotes(value: dict[str, Any] | list[Any], depth: int) -> int:
    """Two per string (key or value) in `value` when it is plain within `depth` (`decode._plain_keys` >= 0:
    no float, not deeper) and no string holds a `"`; else -1."""
    if depth == 0:
        return -1
    n = 0
    item: Any
    if type(value) is dict:
        for item in value:
            if '"' in item:
                return -1
        n = 2 * len(value)
        value = value.values()  # type: ignore[assignment]
    for item in value:
        kind = type(item)
        if kind is str:
            if '"' in item:
                return -1
            n += 2
        elif kind is float:
            return -1
        elif kind is dict or kind is list:
            inner = _plain_quotes(item, depth - 1)
            if inner < 0:
                return -1
            n += inner
    return n


def _keys(event: JSONDict) -> int:
    """`decode._plain_keys(event, decode._FAST_DEPTH)` for an event `_shape` accepted: its values are str,
    int, None or the content (str and None values) but for `unsigned`, the only part walked."""
    unsigned = event.get("unsigned")
    inner = 0 if unsigned is None else _decode._plain_keys(unsigned, _UNSIGNED_DEPTH)
    return -1 if inner < 0 else len(event) + len(event["content"]) + inner


def _splice(event: JSONDict, shape: _Shape, received_at: int) -> tuple[str, str, bytes, bool]:
    """`_plain_message(event, received_at)` from orjson's encodings of the parts, in sorted-key order (the
    same bytes: a property test pins it against the full normaliser)."""
    room, event_id, sender, sent_at, _, out = shape
    payload = b"".join((
        _AT_CONTENT, orjson.dumps(out, option=_SORT), _AT_CONVERSATION, orjson.dumps(room), _AT_EVENT_ID,
        orjson.dumps(event_id), _AT_RAW, orjson.dumps(event, option=_SORT), _AT_RECEIVED, b"%d" % received_at,
        _AT_SENDER, orjson.dumps(sender), _AT_SENT, b"%d" % sent_at, _AT_END,
    ))  # fmt: skip
    return room, event_id, payload, False


def _plain_message(event: JSONDict, received_at: int) -> tuple[str, str, bytes, bool] | None:
    """The encoding of a plain text/notice/emote message with a complete envelope (`_shape`), else None."""
    shape = _shape(event, received_at)
    if shape is None:
        return None
    room, event_id, sender, sent_at, _, out = shape
    payload = orjson.dumps(  # Event.to_json's fields, for kind MESSAGE with no relation or attachment
        {
            "v": events.ENCODING_VERSION,
            "attachments": [],
            "content": out,
            "conversation": room,
            "event_id": event_id,
            "kind": Kind.MESSAGE.value,
            "problem": None,
            "raw": event,
            "received_at": received_at,
            "relates_to": None,
            "sender": sender,
            "sent_at": sent_at,
            "source": events.MATRIX,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return room, event_id, payload, False
