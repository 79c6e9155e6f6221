"""Normalise one Matrix client-server event into an `Event`.

Contract (pure: no I/O, no clock, no randomness):

* `normalise(...)` never raises. Input whose envelope, type or defining
  fields (a message's msgtype and body, an edit's target, a poll's question)
  break the Matrix spec becomes an `Event` of kind UNKNOWN whose `problem`
  names the first thing found wrong. A bad optional field (a mistyped
  `file`, `m.mentions`, relation, duration, ...) is left out and named in
  `problem` ("; "-joined), and the event keeps its kind. Nothing is guessed
  and nothing is dropped.
* `Event.raw` is the whole event as received. Input that is not a JSON object,
  or that canonical JSON cannot hold exactly (integers beyond 64 bits, NaN,
  lone surrogates, tuples or other non-JSON Python values), is kept byte for
  byte as `events.unparsed_raw(...)` in an UNKNOWN event.
* Same input, same Event (byte-identical canonical encoding). An event without
  an event_id gets "sha256:<hex>" of its canonical (or raw) bytes, so importing
  the same line twice is idempotent.
* `content` is a small dict whose shape depends on the kind (see the `*_parts`
  handlers in `message`, `relations` and `state_events`). Events redacted before capture keep their kind and carry
  `redacted_before_capture: true` (and `redacted_by` when known).

Theory of operation: `decode.decode` turns the input into a plain JSON
dict or keeps its bytes; `_envelope` reads the fields every event has;
`_classify` picks a handler by state_key presence and type. Handlers read
defining fields through accessors that raise `Malformed`, which becomes an
UNKNOWN event, and optional ones through `decode.soft`, which appends the
`Malformed` text to the event's problems instead. The `except Exception` in `normalise` is a safety net for bugs here,
never a path for input. The importer calls this once per line, so the path of
a well-formed event makes few calls: optional fields are looked at only when
present, and decoded values are copied with orjson rather than `copy.deepcopy`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from bridge import events
from bridge.events import Attachment, ConversationId, Event, EventId, JSONDict, Kind, SenderId
from bridge.sources.decode import Malformed, Undecodable, decode, is_int, opt_dict, plain_copy, reencode
from bridge.sources.matrix.message import message_parts, poll_parts, sticker_parts
from bridge.sources.matrix.polls import POLL_TYPES
from bridge.sources.matrix.relations import Parts, encrypted_parts, reaction_parts, redaction_parts
from bridge.sources.matrix.state_events import CALL_TYPES, call_parts, state_parts

#: Timeline types whose content is empty only once redacted, with the kind they keep.
_BARE_KIND = {
    "m.room.message": Kind.MESSAGE,
    "m.sticker": Kind.ATTACHMENT,
    "m.reaction": Kind.REACTION,
    "m.room.encrypted": Kind.UNDECRYPTABLE,
    **dict.fromkeys(POLL_TYPES, Kind.POLL),
}


_ENVELOPE_IDS = ("room_id", "event_id", "sender")


def normalise(
    raw: object,
    *,
    room_id: str | None = None,
    received_at: int,
    decryption: Mapping[str, Any] | None = None,
) -> Event:
    """One Matrix client-server event (dict, or its JSON text; anything else is kept as unknown) as an `Event`.

    Never raises. `room_id` is used when the event has none (sync timelines omit it).
    `decryption` is the live source's evidence for a decrypted event (session
    id, sender key, device, verified...); it is stored as `content["encryption"]`.
    """
    room = room_id if isinstance(room_id, str) and room_id and events.json_safe(room_id) else None
    try:
        decoded = decode(raw)
        if isinstance(decoded, Undecodable):
            return _unparsed(decoded, room, received_at, decryption)
        return _build(decoded, room, received_at, decryption)
    except Exception as exc:  # safety net: a bug here must not lose the event
        bug = Undecodable(reencode(raw), f"normaliser bug: {type(exc).__name__}")
        return _unparsed(bug, room, received_at, None)


# --- building the Event ---------------------------------------------------------------------


def _build(event: JSONDict, room: str | None, received_at: int, decryption: Mapping[str, Any] | None) -> Event:
    conversation, event_id, sender, sent_at, problem = _envelope(event, room)
    kind, relates_to = Kind.UNKNOWN, None
    content: JSONDict = {}
    attachments: tuple[Attachment, ...] = ()
    if problem is None:  # a mistyped envelope field already makes the event unknown
        problems: list[str] = []  # bad optional fields: marked on the event, which keeps its kind
        try:
            kind, content, relates_to, attachments = _classify(event, problems)
            problem = "; ".join(problems) or None
        except Malformed as exc:
            problem = str(exc)
    if decryption is not None:
        content, evidence_problem = _with_decryption(content, decryption)
        problem = problem or evidence_problem
    if event_id is None:
        problem = problem or "no event_id: id is the sha256 of the event"
        event_id = _hash_id(events.canonical_json(event))
    return Event(  # positional: keywords cost 0.6 µs a call here; the order is Event's field order
        events.MATRIX,
        ConversationId(conversation),
        EventId(event_id),
        kind,
        None if sender is None else SenderId(sender),
        sent_at,
        received_at,
        content,
        None if relates_to is None else EventId(relates_to),
        attachments,
        event,
        problem,
    )


def _envelope(event: JSONDict, room: str | None) -> tuple[str, str | None, str | None, int | None, str | None]:
    """conversation, event_id, sender, sent_at and the first problem; a mistyped field reads as None."""
    room_id, event_id, sender = event.get("room_id"), event.get("event_id"), event.get("sender")
    sent_at = event.get("origin_server_ts")
    if (  # the common case, inlined (decoded values have exact JSON types: `type(x) is int` is exact)
        (room_id is None or (isinstance(room_id, str) and room_id))
        and (event_id is None or (isinstance(event_id, str) and event_id))
        and (sender is None or (isinstance(sender, str) and sender))
        and (sent_at is None or type(sent_at) is int)
    ):
        return room_id or room or "unknown", event_id, sender, sent_at, None
    problems = [f"{key} is not a non-empty string" for key in _ENVELOPE_IDS if not _is_id(event.get(key))]
    if not (sent_at is None or is_int(sent_at)):
        problems.append("origin_server_ts is not an integer")
        sent_at = None
    room_id, event_id, sender = (value if _is_id(value) else None for value in (room_id, event_id, sender))
    return room_id or room or "unknown", event_id, sender, sent_at, problems[0]


def _is_id(value: object) -> bool:
    """An optional id field: absent (None) or a non-empty string."""
    return value is None or (isinstance(value, str) and value != "")


def _unparsed(decoded: Undecodable, room: str | None, received_at: int, decryption: Mapping[str, Any] | None) -> Event:
    """An UNKNOWN event keeping the input bytes; ids from a parsed dict are still used."""
    salvage = decoded.salvage or {}
    content, _ = _with_decryption({}, decryption)
    sent_at = salvage.get("origin_server_ts")
    sender = _clean_str(salvage.get("sender"))
    return Event(
        source=events.MATRIX,
        conversation=ConversationId(_clean_str(salvage.get("room_id")) or room or "unknown"),
        event_id=EventId(_clean_str(salvage.get("event_id")) or _hash_id(decoded.data)),
        kind=Kind.UNKNOWN,
        sender=None if sender is None else SenderId(sender),
        sent_at=sent_at if is_int(sent_at) and events.json_safe(sent_at) else None,
        received_at=received_at,
        content=content,
        raw=events.unparsed_raw(decoded.data),
        problem=decoded.problem,
    )


def _clean_str(value: object) -> str | None:
    return value if isinstance(value, str) and value and events.json_safe(value) else None


def _hash_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _with_decryption(content: JSONDict, decryption: Mapping[str, Any] | None) -> tuple[JSONDict, str | None]:
    if decryption is None:
        return content, None
    exact = plain_copy(decryption) if isinstance(decryption, Mapping) else None
    if exact is None:
        return content, "decryption evidence is not JSON; not recorded"
    return {**content, "encryption": exact}, None


# --- kinds ----------------------------------------------------------------------------------


def _classify(event: JSONDict, problems: list[str]) -> Parts:
    etype = event.get("type")
    if not isinstance(etype, str) or not etype:
        raise Malformed("type is not a non-empty string")
    content = event.get("content")
    if not isinstance(content, dict):
        raise Malformed("content is not an object")
    unsigned = event.get("unsigned")
    if content and (unsigned is None or (isinstance(unsigned, dict) and unsigned.get("redacted_because") is None)):
        marker = None  # the common case, decided without calls: not redacted
    else:
        marker = _redaction_marker(etype, event, content)
    if "state_key" in event:
        kind, out, relates_to, attachments = state_parts(etype, event, content)
    elif not content and etype in _BARE_KIND:
        kind, out, relates_to, attachments = _BARE_KIND[etype], {}, None, ()
    elif (handler := _TIMELINE.get(etype)) is not None:
        kind, out, relates_to, attachments = handler(event, content, marker is not None, problems)
    else:
        raise Malformed(f"unknown event type {etype[:64]!r}")
    return kind, out if marker is None else {**out, **marker}, relates_to, attachments


def _redaction_marker(etype: str, event: JSONDict, content: JSONDict) -> JSONDict | None:
    """`redacted_before_capture` (and `redacted_by`) for an event redacted before we saw it."""
    unsigned = opt_dict(event, "unsigned")
    because = None if unsigned is None else opt_dict(unsigned, "redacted_because", "unsigned.")
    if because is None and (content or etype not in _BARE_KIND or "state_key" in event):
        return None
    marker: JSONDict = {"redacted_before_capture": True}
    by = None if because is None else because.get("event_id")
    if isinstance(by, str) and by:
        marker["redacted_by"] = by
    return marker


#: Timeline (non-state) handlers by type; each gets (event, content, redacted before capture, problems).
_TIMELINE: dict[str, Callable[[JSONDict, JSONDict, bool, list[str]], Parts]] = {
    "m.room.message": message_parts,
    "m.sticker": sticker_parts,
    "m.reaction": reaction_parts,
    "m.room.redaction": redaction_parts,
    "m.room.encrypted": encrypted_parts,
    **dict.fromkeys(POLL_TYPES, poll_parts),
    **dict.fromkeys(CALL_TYPES, call_parts),
}
