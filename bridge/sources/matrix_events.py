"""Normalise one Matrix client-server event into an `Event`.

Contract (pure: no I/O, no clock, no randomness):

* `normalise(...)` never raises. Input that breaks the Matrix spec becomes an
  `Event` of kind UNKNOWN whose `problem` names the first thing found wrong;
  nothing is guessed and nothing is dropped.
* `Event.raw` is the whole event as received. Input that is not a JSON object,
  or that canonical JSON cannot hold exactly (integers beyond 64 bits, NaN,
  lone surrogates, tuples or other non-JSON Python values), is kept byte for
  byte as `events.unparsed_raw(...)` in an UNKNOWN event.
* Same input, same Event (byte-identical canonical encoding). An event without
  an event_id gets "sha256:<hex>" of its canonical (or raw) bytes, so importing
  the same line twice is idempotent.
* `content` is a small dict whose shape depends on the kind (see the `_*_parts`
  handlers). Events redacted before capture keep their kind and carry
  `redacted_before_capture: true` (and `redacted_by` when known).

Theory of operation: `_decode` turns the input into a plain JSON dict or keeps
its bytes; `_envelope` reads the fields every event has; `_classify` picks a
handler by state_key presence and type. Handlers read fields through accessors
that raise `_Malformed`, which becomes an UNKNOWN event. The `except Exception`
in `normalise` is a safety net for bugs here, never a path for input.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

import orjson

from bridge import events
from bridge.events import Attachment, ConversationId, Event, EventId, JSONDict, Kind, SenderId

_ATTACHMENT_MSGTYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})
#: Timeline types whose content is empty only once redacted, with the kind they keep.
_BARE_KIND = {
    "m.room.message": Kind.MESSAGE,
    "m.sticker": Kind.ATTACHMENT,
    "m.reaction": Kind.REACTION,
    "m.room.encrypted": Kind.UNDECRYPTABLE,
}
#: orjson turns integer literals outside 64 bits into floats; such input needs a second look.
_LONG_DIGITS = re.compile(rb"\d{19,}")
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


class _Malformed(Exception):
    """The event breaks the Matrix spec; the message becomes the Event's `problem`."""


@dataclass(frozen=True, slots=True)
class _Decoded:
    """The input as a plain JSON dict (`event`), or not (`problem` says why).

    `data` is what an id is hashed from: canonical bytes of `event`, else the
    input bytes. `salvage` is a parsed dict that could not be kept exactly; its
    string ids are still worth using.
    """

    event: JSONDict | None
    data: bytes
    salvage: Mapping[Any, Any] | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _Parts:
    """What a kind handler decides: the Event fields that depend on the type."""

    kind: Kind
    content: JSONDict
    relates_to: str | None = None
    attachments: tuple[Attachment, ...] = ()


def normalise(
    raw: Mapping[str, Any] | bytes | str,
    *,
    room_id: str | None = None,
    received_at: int,
    decryption: Mapping[str, Any] | None = None,
) -> Event:
    """One Matrix client-server event (dict, or its JSON text) as an `Event`; never raises.

    `room_id` is used when the event has none (sync timelines omit it).
    `decryption` is the live source's evidence for a decrypted event (session
    id, sender key, device, verified...); it is stored as `content["encryption"]`.
    """
    room = room_id if isinstance(room_id, str) and room_id and events.json_safe(room_id) else None
    try:
        decoded = _decode(raw)
        if decoded.event is None:
            return _unparsed(decoded, room, received_at, decryption)
        return _build(decoded.event, decoded.data, room, received_at, decryption)
    except Exception as exc:  # safety net: a bug here must not lose the event
        bug = _Decoded(None, _reencode(raw), None, f"normaliser bug: {type(exc).__name__}")
        return _unparsed(bug, room, received_at, None)


# --- decoding -------------------------------------------------------------------------------


def _decode(raw: object) -> _Decoded:
    if isinstance(raw, Mapping):
        return _decode_mapping(raw, None)
    if isinstance(raw, str):
        return _decode_bytes(raw.encode("utf-8", "surrogatepass"))
    if isinstance(raw, bytes | bytearray | memoryview):
        return _decode_bytes(bytes(raw))
    return _Decoded(None, _reencode(raw), None, f"input is a {type(raw).__name__}, not an event")


def _decode_bytes(data: bytes) -> _Decoded:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _Decoded(None, data, None, "not JSON")
    if not isinstance(parsed, dict):
        return _Decoded(None, data, None, "not a JSON object")
    if _LONG_DIGITS.search(data) and not _integers_fit(data):
        return _Decoded(None, data, parsed, "integer beyond 64 bits")
    return _decode_mapping(parsed, data)


def _decode_mapping(value: Mapping[Any, Any], original: bytes | None) -> _Decoded:
    exact = _plain_copy(value)
    if exact is None:
        data = original if original is not None else _reencode(value)
        return _Decoded(None, data, value, "not representable as canonical JSON")
    event, data = exact
    return _Decoded(event, data)


def _plain_copy(value: Mapping[Any, Any]) -> tuple[JSONDict, bytes] | None:
    """A plain-JSON deep copy and its canonical bytes, or None if canonical JSON changes it."""
    try:
        as_dict = dict(value)
        data = events.canonical_json(as_dict)
        copied = orjson.loads(data)
    except (events.EncodingError, TypeError, ValueError):
        return None
    return (copied, data) if copied == as_dict else None


def _integers_fit(data: bytes) -> bool:
    """Re-parse with the stdlib, which keeps integer literals exact, and check their range."""
    try:
        json.loads(data, parse_int=_checked_int)
    except (ValueError, RecursionError):
        return False
    return True


def _checked_int(literal: str) -> int:
    if len(literal) > 21:  # longer than any 64-bit integer; also avoids huge int() work
        raise ValueError("integer too long")
    number = int(literal)
    if not _INT_MIN <= number <= _UINT_MAX:
        raise ValueError("integer beyond 64 bits")
    return number


def _reencode(value: object) -> bytes:
    """Best-effort bytes of a non-JSON Python value, so that it can still be kept."""
    try:
        return json.dumps(value, default=repr).encode("ascii")
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(value).encode("utf-8", "backslashreplace")
    except Exception:  # a repr that fails (e.g. an int too long to print)
        return f"<unrepresentable {type(value).__name__}>".encode()


# --- building the Event ---------------------------------------------------------------------


def _build(
    event: JSONDict,
    data: bytes,
    room: str | None,
    received_at: int,
    decryption: Mapping[str, Any] | None,
) -> Event:
    problems: list[str] = []
    conversation, event_id, sender, sent_at = _envelope(event, room, problems)
    parts = _Parts(Kind.UNKNOWN, {})
    if not problems:  # a mistyped envelope field already makes the event unknown
        try:
            parts = _classify(event)
        except _Malformed as exc:
            problems.append(str(exc))
    content, evidence_problem = _with_decryption(parts.content, decryption)
    if evidence_problem:
        problems.append(evidence_problem)
    if event_id is None:
        problems.append("no event_id: id is the sha256 of the event")
    return Event(
        source=events.MATRIX,
        conversation=ConversationId(conversation),
        event_id=EventId(event_id or _hash_id(data)),
        kind=parts.kind,
        sender=None if sender is None else SenderId(sender),
        sent_at=sent_at,
        received_at=received_at,
        content=content,
        relates_to=None if parts.relates_to is None else EventId(parts.relates_to),
        attachments=parts.attachments,
        raw=event,
        problem=problems[0] if problems else None,
    )


def _envelope(event: JSONDict, room: str | None, problems: list[str]) -> tuple[str, str | None, str | None, int | None]:
    """conversation, event_id, sender, sent_at; a mistyped field is None and noted in `problems`."""
    conversation = _envelope_str(event, "room_id", problems) or room or "unknown"
    event_id = _envelope_str(event, "event_id", problems)
    sender = _envelope_str(event, "sender", problems)
    sent_at = event.get("origin_server_ts")
    if sent_at is None or _is_int(sent_at):
        return conversation, event_id, sender, sent_at
    problems.append("origin_server_ts is not an integer")
    return conversation, event_id, sender, None


def _unparsed(decoded: _Decoded, room: str | None, received_at: int, decryption: Mapping[str, Any] | None) -> Event:
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
        sent_at=sent_at if _is_int(sent_at) and events.json_safe(sent_at) else None,
        received_at=received_at,
        content=content,
        raw=events.unparsed_raw(decoded.data),
        problem=decoded.problem,
    )


def _envelope_str(event: JSONDict, key: str, problems: list[str]) -> str | None:
    value = event.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    problems.append(f"{key} is not a non-empty string")
    return None


def _clean_str(value: object) -> str | None:
    return value if isinstance(value, str) and value and events.json_safe(value) else None


def _hash_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _with_decryption(content: JSONDict, decryption: Mapping[str, Any] | None) -> tuple[JSONDict, str | None]:
    if decryption is None:
        return content, None
    exact = _plain_copy(decryption) if isinstance(decryption, Mapping) else None
    if exact is None:
        return content, "decryption evidence is not JSON; not recorded"
    return {**content, "encryption": exact[0]}, None


# --- kinds ----------------------------------------------------------------------------------


def _classify(event: JSONDict) -> _Parts:
    etype = event.get("type")
    if not isinstance(etype, str) or not etype:
        raise _Malformed("type is not a non-empty string")
    content = event.get("content")
    if not isinstance(content, dict):
        raise _Malformed("content is not an object")
    marker = _redaction_marker(etype, event, content)
    if "state_key" in event:
        parts = _state_parts(etype, event, content)
    else:
        parts = _timeline_parts(etype, event, content, bool(marker))
    return replace(parts, content={**parts.content, **marker}) if marker else parts


def _redaction_marker(etype: str, event: JSONDict, content: JSONDict) -> JSONDict:
    """`redacted_before_capture` (and `redacted_by`) for an event redacted before we saw it."""
    unsigned = _opt_dict(event, "unsigned")
    because = None if unsigned is None else _opt_dict(unsigned, "redacted_because", "unsigned.")
    if because is None and (content or etype not in _BARE_KIND or "state_key" in event):
        return {}
    marker: JSONDict = {"redacted_before_capture": True}
    by = None if because is None else because.get("event_id")
    if isinstance(by, str) and by:
        marker["redacted_by"] = by
    return marker


def _state_parts(etype: str, event: JSONDict, content: JSONDict) -> _Parts:
    state_key = event["state_key"]
    if not isinstance(state_key, str):
        raise _Malformed("state_key is not a string")
    if etype == "m.room.member":
        return _member_parts(state_key, event, content)
    if etype == "m.room.retention" and state_key == "":
        return _retention_parts(event, content)
    state = {"type": etype, "state_key": state_key, "content": copy.deepcopy(content)}
    return _Parts(Kind.STATE, state)


def _timeline_parts(etype: str, event: JSONDict, content: JSONDict, redacted: bool) -> _Parts:
    if not content and etype in _BARE_KIND:
        return _Parts(_BARE_KIND[etype], {})
    if etype == "m.room.message":
        return _message_parts(content)
    if etype == "m.sticker":
        return _sticker_parts(content)
    if etype == "m.reaction":
        return _reaction_parts(content)
    if etype == "m.room.redaction":
        return _redaction_parts(event, content, redacted)
    if etype == "m.room.encrypted":
        return _encrypted_parts(content)
    raise _Malformed(f"unknown event type {etype[:64]!r}")


def _message_parts(content: JSONDict) -> _Parts:
    relation = _opt_dict(content, "m.relates_to")
    if relation is not None and relation.get("rel_type") == "m.replace":
        return _edit_parts(content, relation)
    body, attachments = _message_content(content)
    return _Parts(Kind.ATTACHMENT if attachments else Kind.MESSAGE, body, attachments=attachments)


def _edit_parts(content: JSONDict, relation: JSONDict) -> _Parts:
    """An edit: content is the new content; without m.new_content, the outer one (marked)."""
    target = _req_id(relation, "event_id", "m.relates_to.")
    new_content = _opt_dict(content, "m.new_content")
    if new_content is not None:
        body, attachments = _message_content(new_content)
    else:
        outer = {key: value for key, value in content.items() if key != "m.relates_to"}
        body, attachments = _message_content(outer)
        body["new_content_missing"] = True
    return _Parts(Kind.EDIT, body, relates_to=target, attachments=attachments)


def _message_content(content: JSONDict) -> tuple[JSONDict, tuple[Attachment, ...]]:
    """The stable message dict (msgtype, body, optional format/relations/mentions) and media."""
    msgtype = _req_str(content, "msgtype")
    out: JSONDict = {"msgtype": msgtype, "body": _req_str(content, "body")}
    for key in ("format", "formatted_body"):
        if (value := _opt_str(content, key)) is not None:
            out[key] = value
    if msgtype == "m.location":
        out["geo_uri"] = _req_str(content, "geo_uri")
    out.update(_relation_fields(content))
    if (mentions := _opt_dict(content, "m.mentions")) is not None:
        out["mentions"] = copy.deepcopy(mentions)
    attachments = (_attachment(content),) if msgtype in _ATTACHMENT_MSGTYPES else ()
    return out, attachments


def _relation_fields(content: JSONDict) -> JSONDict:
    """reply_to, thread_root (+ reply_is_fallback) or another relation of a message."""
    relation = _opt_dict(content, "m.relates_to")
    if relation is None:
        return {}
    out: JSONDict = {}
    if (reply := _opt_dict(relation, "m.in_reply_to", "m.relates_to.")) is not None:
        out["reply_to"] = _req_id(reply, "event_id", "m.in_reply_to.")
    rel_type = _opt_str(relation, "rel_type", "m.relates_to.")
    if rel_type == "m.thread":
        out["thread_root"] = _req_id(relation, "event_id", "m.relates_to.")
        if _opt_bool(relation, "is_falling_back", "m.relates_to."):
            out["reply_is_fallback"] = True
    elif rel_type is not None:
        target = _req_id(relation, "event_id", "m.relates_to.")
        out["relation"] = {"rel_type": rel_type, "event_id": target}
    return out


def _attachment(content: JSONDict) -> Attachment:
    info = _opt_dict(content, "info") or {}
    size = info.get("size")
    return Attachment(
        status="pending",
        url=_media_url(content),
        media_type=_opt_str(info, "mimetype", "info."),
        filename=_opt_str(content, "filename") or _opt_str(content, "body"),
        size=size if _is_int(size) and size >= 0 else None,
    )


def _media_url(content: JSONDict) -> str:
    """The mxc URL: `url` for plain media, `file.url` for encrypted media (never both)."""
    url = _opt_str(content, "url")
    file = _opt_dict(content, "file")
    if url is not None and file is not None:
        raise _Malformed("media has both url and file")
    if file is not None:
        return _req_id(file, "url", "file.")
    if not url:
        raise _Malformed("media has neither url nor file")
    return url


def _sticker_parts(content: JSONDict) -> _Parts:
    out: JSONDict = {"sticker": True, "body": _req_str(content, "body")}
    out.update(_relation_fields(content))
    return _Parts(Kind.ATTACHMENT, out, attachments=(_attachment(content),))


def _reaction_parts(content: JSONDict) -> _Parts:
    relation = _req_dict(content, "m.relates_to")
    if relation.get("rel_type") != "m.annotation":
        raise _Malformed("m.reaction rel_type is not m.annotation")
    target = _req_id(relation, "event_id", "m.relates_to.")
    key = _req_str(relation, "key", "m.relates_to.")
    return _Parts(Kind.REACTION, {"key": key}, relates_to=target)


def _redaction_parts(event: JSONDict, content: JSONDict, redacted: bool) -> _Parts:
    """Top-level `redacts` (room v1-v10) or `content.redacts` (v11); both must agree."""
    top = _opt_str(event, "redacts")
    inner = _opt_str(content, "redacts", "content.")
    if top is not None and inner is not None and top != inner:
        raise _Malformed("redacts differs between top level and content")
    target = inner if inner is not None else top
    if target == "" or (target is None and not redacted):
        raise _Malformed("m.room.redaction without redacts")
    return _Parts(Kind.DELETION, {"reason": _opt_str(content, "reason")}, relates_to=target)


def _encrypted_parts(content: JSONDict) -> _Parts:
    out: JSONDict = {"algorithm": _req_str(content, "algorithm")}
    for key in ("sender_key", "session_id", "device_id"):
        if (value := _opt_str(content, key)) is not None:
            out[key] = value
    return _Parts(Kind.UNDECRYPTABLE, out)


def _member_parts(target: str, event: JSONDict, content: JSONDict) -> _Parts:
    if not target:
        raise _Malformed("m.room.member state_key is empty")
    prev = _prev_content(event)
    out: JSONDict = {
        "membership": _req_str(content, "membership"),
        "target": target,
        "displayname": _opt_str(content, "displayname"),
        "avatar_url": _opt_str(content, "avatar_url"),
        "reason": _opt_str(content, "reason"),
        "is_direct": _opt_bool(content, "is_direct"),
        "previous": None
        if prev is None
        else {
            "membership": _opt_str(prev, "membership", "prev_content."),
            "displayname": _opt_str(prev, "displayname", "prev_content."),
        },
    }
    return _Parts(Kind.MEMBERSHIP, out)


def _retention_parts(event: JSONDict, content: JSONDict) -> _Parts:
    prev = _prev_content(event)
    out: JSONDict = {
        "max_lifetime": _opt_int(content, "max_lifetime"),
        "min_lifetime": _opt_int(content, "min_lifetime"),
        "previous": None
        if prev is None
        else {
            "max_lifetime": _opt_int(prev, "max_lifetime", "prev_content."),
            "min_lifetime": _opt_int(prev, "min_lifetime", "prev_content."),
        },
    }
    return _Parts(Kind.RETENTION_CHANGE, out)


def _prev_content(event: JSONDict) -> JSONDict | None:
    unsigned = _opt_dict(event, "unsigned")
    return None if unsigned is None else _opt_dict(unsigned, "prev_content", "unsigned.")


# --- field accessors: a present field of the wrong type is malformed; null counts as absent --


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_str(d: JSONDict, key: str, where: str = "") -> str | None:
    value = d.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _Malformed(f"{where}{key} is not a string")


def _req_str(d: JSONDict, key: str, where: str = "") -> str:
    value = _opt_str(d, key, where)
    if value is None:
        raise _Malformed(f"{where}{key} is missing")
    return value


def _req_id(d: JSONDict, key: str, where: str = "") -> str:
    value = _req_str(d, key, where)
    if not value:
        raise _Malformed(f"{where}{key} is empty")
    return value


def _opt_dict(d: JSONDict, key: str, where: str = "") -> JSONDict | None:
    value = d.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _Malformed(f"{where}{key} is not an object")


def _req_dict(d: JSONDict, key: str, where: str = "") -> JSONDict:
    value = _opt_dict(d, key, where)
    if value is None:
        raise _Malformed(f"{where}{key} is missing")
    return value


def _opt_int(d: JSONDict, key: str, where: str = "") -> int | None:
    value = d.get(key)
    if value is None or _is_int(value):
        return value
    raise _Malformed(f"{where}{key} is not an integer")


def _opt_bool(d: JSONDict, key: str, where: str = "") -> bool | None:
    value = d.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _Malformed(f"{where}{key} is not a boolean")
