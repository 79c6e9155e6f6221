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
"""

from __future__ import annotations

import orjson

from bridge import events
from bridge.events import JSONDict, Kind
from bridge.sources.decode import decode
from bridge.sources.matrix.normalise import normalise

_ENVELOPE = frozenset({"type", "room_id", "event_id", "sender", "origin_server_ts", "content", "unsigned"})
_CONTENT = frozenset({"msgtype", "body", "format", "formatted_body"})
_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})


def encode_line(line: bytes, received_at: int) -> tuple[str, str, bytes, bool]:
    """(conversation, event_id, canonical payload, is unknown) of one import line (see module docstring)."""
    try:
        decoded = decode(line)
        if type(decoded) is dict:
            fast = _plain_message(decoded, received_at)
            if fast is not None:
                return fast
    except Exception:  # noqa: S110  # the full normaliser below keeps the line and names the bug
        pass
    event = normalise(line, received_at=received_at)
    return event.conversation, event.event_id, events.canonical_bytes(event), event.kind is Kind.UNKNOWN


def _plain_message(event: JSONDict, received_at: int) -> tuple[str, str, bytes, bool] | None:
    """The encoding of a plain text/notice/emote message with a complete envelope, else None."""
    if event.get("type") != "m.room.message" or not event.keys() <= _ENVELOPE:
        return None
    room, event_id, sender, sent_at = (
        event.get("room_id"),
        event.get("event_id"),
        event.get("sender"),
        event.get("origin_server_ts"),
    )
    if not (type(room) is str and room and type(event_id) is str and event_id and type(sender) is str and sender) or (
        type(sent_at) is not int
    ):
        return None
    content, unsigned = event.get("content"), event.get("unsigned")
    if type(content) is not dict or not content.keys() <= _CONTENT:
        return None
    if unsigned is not None and (type(unsigned) is not dict or "redacted_because" in unsigned):
        return None
    msgtype, body = content.get("msgtype"), content.get("body")
    if msgtype not in _MSGTYPES or type(body) is not str:
        return None
    out: JSONDict = {"msgtype": msgtype, "body": body}
    for key in ("format", "formatted_body"):
        value = content.get(key)
        if value is None:
            continue
        if type(value) is not str:
            return None  # the full normaliser names it in `problem`
        out[key] = value
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
