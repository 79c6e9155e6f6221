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
* `content` is a small dict whose shape depends on the kind (see the `_*_parts`
  handlers). Events redacted before capture keep their kind and carry
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
from bridge.sources.decode import (
    Malformed,
    Undecodable,
    decode,
    is_int,
    json_copy,
    opt_bool,
    opt_dict,
    opt_int,
    opt_str,
    plain_copy,
    reencode,
    req_dict,
    req_id,
    req_str,
    soft,
)
from bridge.sources.matrix.polls import POLL_TYPES, poll_content, text_of

_ATTACHMENT_MSGTYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})
#: Timeline types whose content is empty only once redacted, with the kind they keep.
_BARE_KIND = {
    "m.room.message": Kind.MESSAGE,
    "m.sticker": Kind.ATTACHMENT,
    "m.reaction": Kind.REACTION,
    "m.room.encrypted": Kind.UNDECRYPTABLE,
    **dict.fromkeys(POLL_TYPES, Kind.POLL),
}
#: VoIP signalling (spec "Voice over IP"), kept as state with `content["call"]`.
_CALL_TYPES = frozenset(
    {
        "m.call.invite",
        "m.call.answer",
        "m.call.hangup",
        "m.call.reject",
        "m.call.candidates",
        "m.call.select_answer",
        "m.call.negotiate",
    }
)
_ENVELOPE_IDS = ("room_id", "event_id", "sender")


#: What a kind handler decides: the Event's kind, content, relates_to and attachments (a plain
#: tuple, not a class: this is built once per event on the import path).
_Parts = tuple[Kind, JSONDict, str | None, tuple[Attachment, ...]]


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


def _classify(event: JSONDict, problems: list[str]) -> _Parts:
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
        kind, out, relates_to, attachments = _state_parts(etype, event, content)
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


def _state_parts(etype: str, event: JSONDict, content: JSONDict) -> _Parts:
    state_key = event["state_key"]
    if not isinstance(state_key, str):
        raise Malformed("state_key is not a string")
    if etype == "m.room.member":
        return _member_parts(state_key, event, content)
    if etype == "m.room.retention" and state_key == "":
        return _retention_parts(event, content)
    out: JSONDict = {"type": etype, "state_key": state_key, "content": json_copy(content)}
    # room upgrades: the link to the next (tombstone) and the previous (create) room, read without the dump
    if etype == "m.room.tombstone" and isinstance(room := content.get("replacement_room"), str) and room:
        out["replacement_room"] = room
    elif etype == "m.room.create" and isinstance(content.get("predecessor"), dict):
        out["predecessor"] = json_copy(content["predecessor"])
    return (Kind.STATE, out, None, ())


def _message_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> _Parts:
    relation = content.get("m.relates_to")  # a bad one is named once, by _relation_fields
    if isinstance(relation, dict) and relation.get("rel_type") == "m.replace":
        return _edit_parts(content, relation, problems)
    body, attachments = _message_content(content, problems)
    return (Kind.ATTACHMENT if attachments else Kind.MESSAGE, body, None, attachments)


def _edit_parts(content: JSONDict, relation: JSONDict, problems: list[str]) -> _Parts:
    """An edit: content is the new content; without a usable m.new_content, the outer one (marked).

    The spec ignores an edit whose sender is not the original's; only the transcript knows both
    senders, so the edit is kept as sent and the transcript decides.
    """
    target = req_id(relation, "event_id", "m.relates_to.")
    new_content = soft(problems, opt_dict, content, "m.new_content")
    if new_content is not None:
        try:
            body, attachments = _message_content(new_content, problems)
            return (Kind.EDIT, body, target, attachments)
        except Malformed as exc:
            problems.append(f"m.new_content: {exc}")
    outer = {key: value for key, value in content.items() if key not in ("m.relates_to", "m.new_content")}
    body, attachments = _message_content(outer, problems)
    body["new_content_missing"] = True
    return (Kind.EDIT, body, target, attachments)


def _message_content(content: JSONDict, problems: list[str]) -> tuple[JSONDict, tuple[Attachment, ...]]:
    """The stable message dict (msgtype, body, optional format/relations/mentions/voice) and media.

    msgtype and body make a message; a bad optional field is left out and named in `problems`.
    """
    msgtype = req_str(content, "msgtype")
    out: JSONDict = {"msgtype": msgtype, "body": req_str(content, "body")}
    for key in ("format", "formatted_body"):
        if content.get(key) is not None and (value := soft(problems, req_str, content, key)) is not None:
            out[key] = value
    if msgtype == "m.location" and (geo_uri := soft(problems, req_str, content, "geo_uri")) is not None:
        out["geo_uri"] = geo_uri
    if content.get("m.relates_to") is not None:
        out.update(_relation_fields(content, problems))
    if content.get("m.mentions") is not None and (mentions := soft(problems, req_dict, content, "m.mentions")):
        out["mentions"] = json_copy(mentions)
    if msgtype not in _ATTACHMENT_MSGTYPES:
        return out, ()
    info = soft(problems, opt_dict, content, "info") or {}
    if msgtype in ("m.audio", "m.video"):
        out.update(_duration(content, info, problems))
    return out, (_attachment(content, info, problems),)


def _duration(content: JSONDict, info: JSONDict, problems: list[str]) -> JSONDict:
    """`duration` (ms) of audio or video, and `voice: true` for a voice message (MSC3245)."""
    out: JSONDict = {}
    if content.get("org.matrix.msc3245.voice") is not None:
        out["voice"] = True
    duration = info.get("duration")
    if duration is None and isinstance(audio := content.get("org.matrix.msc1767.audio"), dict):
        duration = audio.get("duration")
    if is_int(duration) and duration >= 0:
        out["duration"] = duration
    elif duration is not None:
        problems.append("info.duration is not a non-negative integer")
    return out


def _relation_fields(content: JSONDict, problems: list[str]) -> JSONDict:
    """reply_to, thread_root (+ reply_is_fallback) or another relation of a message."""
    relation = soft(problems, opt_dict, content, "m.relates_to")
    if relation is None:
        return {}
    out: JSONDict = {}
    reply = soft(problems, opt_dict, relation, "m.in_reply_to", "m.relates_to.")
    if reply is not None and (reply_to := soft(problems, req_id, reply, "event_id", "m.in_reply_to.")) is not None:
        out["reply_to"] = reply_to
    rel_type = soft(problems, opt_str, relation, "rel_type", "m.relates_to.")
    if rel_type is None:
        return out
    target = soft(problems, req_id, relation, "event_id", "m.relates_to.")
    if target is None:
        return out
    if rel_type == "m.thread":
        out["thread_root"] = target
        if relation.get("is_falling_back") is True:
            out["reply_is_fallback"] = True
    else:
        out["relation"] = {"rel_type": rel_type, "event_id": target}
    return out


def _attachment(content: JSONDict, info: JSONDict, problems: list[str]) -> Attachment:
    """The media reference; without one clear URL it is recorded as "failed" with the reason (nothing guessed)."""
    size = info.get("size")
    filename = soft(problems, opt_str, content, "filename")
    try:
        url: str | None = _media_url(content, problems)
        status, error = "pending", None
    except Malformed as exc:
        problems.append(str(exc))
        url, status, error = None, "failed", f"no usable media url: {exc}"
    return Attachment(
        status=status,
        url=url,
        media_type=soft(problems, opt_str, info, "mimetype", "info."),
        filename=filename or opt_str(content, "body"),
        size=size if is_int(size) and size >= 0 else None,
        error=error,
    )


def _media_url(content: JSONDict, problems: list[str]) -> str:
    """The mxc URL: `url` for plain media, `file.url` for encrypted media (never both)."""
    url = opt_str(content, "url")
    file = content.get("file")
    if file is not None and not isinstance(file, dict):
        if url:  # a usable url beside a broken `file`: the url is the media, the broken field is named
            problems.append("file is not an object")
            return url
        raise Malformed("file is not an object")
    if url is not None and file is not None:
        raise Malformed("media has both url and file")
    if file is not None:
        return req_id(file, "url", "file.")
    if not url:
        raise Malformed("media has neither url nor file")
    return url


def _sticker_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> _Parts:
    out: JSONDict = {"sticker": True, "body": req_str(content, "body")}
    out.update(_relation_fields(content, problems))
    info = soft(problems, opt_dict, content, "info") or {}
    return (Kind.ATTACHMENT, out, None, (_attachment(content, info, problems),))


def _reaction_parts(_event: JSONDict, content: JSONDict, _redacted: bool, _problems: list[str]) -> _Parts:
    relation = req_dict(content, "m.relates_to")
    if relation.get("rel_type") != "m.annotation":
        raise Malformed("m.reaction rel_type is not m.annotation")
    target = req_id(relation, "event_id", "m.relates_to.")
    key = req_str(relation, "key", "m.relates_to.")
    return (Kind.REACTION, {"key": key}, target, ())


def _redaction_parts(event: JSONDict, content: JSONDict, redacted: bool, _problems: list[str]) -> _Parts:
    """Top-level `redacts` (room v1-v10) or `content.redacts` (v11); both must agree."""
    top = opt_str(event, "redacts")
    inner = opt_str(content, "redacts", "content.")
    if top is not None and inner is not None and top != inner:
        raise Malformed("redacts differs between top level and content")
    target = inner if inner is not None else top
    if target == "" or (target is None and not redacted):
        raise Malformed("m.room.redaction without redacts")
    return (Kind.DELETION, {"reason": opt_str(content, "reason")}, target, ())


def _encrypted_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> _Parts:
    """Still encrypted: the session evidence, and the relation the spec keeps in the clear.

    An encrypted edit, thread reply or reply carries `m.relates_to` outside the ciphertext, so an
    event that never decrypts still points at its original: relates_to is its target, `rel_type`
    (and `reply_to`, `reply_is_fallback`) are in content.
    """
    out: JSONDict = {"algorithm": req_str(content, "algorithm")}
    for key in ("sender_key", "session_id", "device_id"):
        if content.get(key) is not None and (value := soft(problems, req_str, content, key)) is not None:
            out[key] = value
    relation = soft(problems, opt_dict, content, "m.relates_to")
    if relation is None:
        return (Kind.UNDECRYPTABLE, out, None, ())
    target = None
    if (rel_type := soft(problems, opt_str, relation, "rel_type", "m.relates_to.")) is not None:
        out["rel_type"] = rel_type
        target = soft(problems, req_id, relation, "event_id", "m.relates_to.")
    reply = soft(problems, opt_dict, relation, "m.in_reply_to", "m.relates_to.")
    if reply is not None and (reply_to := soft(problems, req_id, reply, "event_id", "m.in_reply_to.")) is not None:
        out["reply_to"] = reply_to
    if relation.get("is_falling_back") is True:
        out["reply_is_fallback"] = True
    return (Kind.UNDECRYPTABLE, out, target, ())


def _poll_parts(event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> _Parts:
    """A poll start, vote or end (`Kind.POLL`); a start also keeps its text fallback and relations."""
    poll, target = poll_content(event["type"], content, problems)
    out: JSONDict = {"poll": poll}
    if poll["action"] == "start":
        if (fallback := text_of(content)) is not None:
            out["body"] = fallback
        if content.get("m.relates_to") is not None:
            out.update(_relation_fields(content, problems))
        if isinstance(mentions := content.get("m.mentions"), dict):
            out["mentions"] = json_copy(mentions)
    return (Kind.POLL, out, target, ())


def _call_parts(event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> _Parts:
    """A VoIP call event (spec "Voice over IP"): recorded as conversation state, not as a message.

    Calls are signalling, not something a participant wrote, so Kind.STATE (what the transcript
    already shows as "changed conversation state") with `content["call"]`; SDP and candidates stay in raw.
    """
    call: JSONDict = {"action": event["type"].removeprefix("m.call."), "call_id": req_id(content, "call_id")}
    call["reason"] = soft(problems, opt_str, content, "reason")
    return (Kind.STATE, {"type": event["type"], "call": call}, None, ())


#: Timeline (non-state) handlers by type; each gets (event, content, redacted before capture, problems).
_TIMELINE: dict[str, Callable[[JSONDict, JSONDict, bool, list[str]], _Parts]] = {
    "m.room.message": _message_parts,
    "m.sticker": _sticker_parts,
    "m.reaction": _reaction_parts,
    "m.room.redaction": _redaction_parts,
    "m.room.encrypted": _encrypted_parts,
    **dict.fromkeys(POLL_TYPES, _poll_parts),
    **dict.fromkeys(_CALL_TYPES, _call_parts),
}


def _member_parts(target: str, event: JSONDict, content: JSONDict) -> _Parts:
    if not target:
        raise Malformed("m.room.member state_key is empty")
    prev = _prev_content(event)
    out: JSONDict = {"membership": req_str(content, "membership"), "target": target}
    out.update((key, opt_str(content, key)) for key in ("displayname", "avatar_url", "reason"))
    out["is_direct"] = opt_bool(content, "is_direct")
    kept = ("membership", "displayname")
    out["previous"] = None if prev is None else {key: opt_str(prev, key, "prev_content.") for key in kept}
    return (Kind.MEMBERSHIP, out, None, ())


def _retention_parts(event: JSONDict, content: JSONDict) -> _Parts:
    prev = _prev_content(event)
    lifetimes = ("max_lifetime", "min_lifetime")
    out: JSONDict = {key: opt_int(content, key) for key in lifetimes}
    out["previous"] = None if prev is None else {key: opt_int(prev, key, "prev_content.") for key in lifetimes}
    return (Kind.RETENTION_CHANGE, out, None, ())


def _prev_content(event: JSONDict) -> JSONDict | None:
    unsigned = opt_dict(event, "unsigned")
    return None if unsigned is None else opt_dict(unsigned, "prev_content", "unsigned.")
