"""Normalise one signal-cli receive notification into Events.

Contract (pure: no I/O, no clock, no randomness):

* `normalise_envelope(params, account=..., received_at=...)` never raises. It
  takes the `params` of a JSON-RPC `receive` notification (`{"envelope": ...,
  "account": ...}`), the subscription shape (`{"subscription": N, "result":
  {...}}`), the whole notification line (`{"jsonrpc": "2.0", "method":
  "receive", "params": ...}`), an SSE `data` object or a rest-api websocket
  frame, as a Mapping or as the bytes of one line. Bytes are best: integers
  beyond 64 bits are then kept exactly (as bytes) instead of rounded.
* It returns `[]` for what is counted, not stored (receipts, typing, read/viewed
  syncs: see `unstored_kind`), else exactly one Event. Input that breaks
  signal-cli's documented shapes becomes an UNKNOWN Event whose `problem` names
  the first thing wrong; nothing is guessed or dropped. `Event.raw` is the
  object as received (whichever of the shapes above); input canonical JSON cannot hold exactly is kept
  as `events.unparsed_raw(bytes)`.
* Ids: author = `sourceUuid`, else `sourceNumber`, else `source`; `event_id` =
  author + ":" + the message's timestamp (for edits the edit's own envelope
  timestamp, `relates_to` = author + ":" + `targetSentTimestamp`). A
  re-delivered envelope therefore has the same id and is stored once.
* Every event keeps `sender_name` (sourceName); 1:1 events keep `identities` {aci, pni, number} of the
  peer as seen in this envelope (see `parts.py`).
* Conversation: "group:" + groupId, else "direct:" + our account + ":" + the
  peer (the destination of what the linked phone sent, the source of what it
  received); "direct:" + the peer alone when the account is unknown.
* Kinds: message/attachment (body, reply_to/quote, mentions, text_styles, view_once, expires_in_seconds,
  group, group_name, captions, sticker, contacts, payment; stories in their group or 1:1 chat), edit,
  deletion (remoteDelete, adminDelete), reaction (key, removed), poll (see `events.Kind.POLL`),
  retention_change (disappearing-messages timer: `expires_in_seconds`, `max_lifetime` in ms or None when
  off), state (group update, pins, calls; the account's own contact/group/block syncs under "sync:" +
  author), undecryptable (an `exception` without content), unknown.
  Attachments are "pending" with signal-cli's attachment id in `url`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from bridge import events
from bridge.events import ConversationId, Event, EventId, JSONDict, Kind, SenderId
from bridge.sources.decode import Malformed, Undecodable, decode, is_int, opt_dict, opt_str, reencode
from bridge.sources.signal import parts
from bridge.sources.signal.data_message import Classified, data_event, edit_event
from bridge.sources.signal.other_content import call_event, story_event, sync_event, with_identities

#: Envelope content keys that are counted, not stored.
_UNSTORED = ("receiptMessage", "typingMessage")


#: syncMessage keys that are only read/viewed markers (receipts from the phone).
_SYNC_RECEIPTS = frozenset({"readMessages", "viewedMessages"})


_OTHER_CONTENT = ("storyMessage", "callMessage")


def normalise_envelope(params: Mapping[str, Any] | bytes, *, account: str | None, received_at: int) -> list[Event]:
    """The Events of one receive notification's params (see module docstring); never raises."""
    try:
        decoded = decode(params)
        if isinstance(decoded, Undecodable):
            return [_unparsed(decoded, received_at)]
        return _build(decoded, account, received_at)
    except Exception as exc:  # safety net: a bug here must not lose the envelope
        data = params if isinstance(params, bytes) else reencode(params)
        return [_unparsed(Undecodable(data, f"normaliser bug: {type(exc).__name__}"), received_at)]


def unstored_kind(params: Mapping[str, Any] | bytes) -> str | None:
    """Why `normalise_envelope` returned [] ("receiptMessage", "typingMessage", "syncReceipt"), else None."""
    try:
        decoded = decode(params)
        if isinstance(decoded, Undecodable):
            return None
        envelope = _unwrap(decoded).get("envelope")
        return _unstored(envelope) if isinstance(envelope, dict) else None
    except Exception:
        return None


def _unwrap(params: JSONDict) -> JSONDict:
    """The whole JSON-RPC notification, or the subscription shape, to the plain params."""
    if params.get("method") == "receive" and isinstance(params.get("params"), dict):
        params = params["params"]
    result = params.get("result")
    if "envelope" not in params and "subscription" in params and isinstance(result, dict):
        return result
    return params


def _unstored(envelope: JSONDict) -> str | None:
    content = [k for k in ("dataMessage", "editMessage", "syncMessage", *_OTHER_CONTENT) if envelope.get(k)]
    if not content:
        for key in _UNSTORED:
            if isinstance(envelope.get(key), dict):
                return key
        return None
    sync = envelope.get("syncMessage")
    if content == ["syncMessage"] and isinstance(sync, dict):
        present = {k for k, v in sync.items() if v is not None}
        if present and present <= _SYNC_RECEIPTS:
            return "syncReceipt"
    return None


# --- building ---------------------------------------------------------------------------------


def _build(params: JSONDict, account: str | None, received_at: int) -> list[Event]:
    inner = _unwrap(params)
    envelope = inner.get("envelope")
    if not isinstance(envelope, dict):
        return [_unknown(params, received_at, "params has no envelope object")]
    if _unstored(envelope) is not None:
        return []
    author = author_of(envelope)
    timestamp = envelope.get("timestamp")
    if author is None:
        return [_unknown(params, received_at, "envelope has no sourceUuid, sourceNumber or source")]
    if not is_int(timestamp) or not events.json_safe(timestamp):
        return [_unknown(params, received_at, "envelope timestamp is not an integer", author)]
    try:
        conversation, event_id, kind, content, relates_to, attachments, problem = _classify(envelope, inner, author)
    except Malformed as exc:
        return [_unknown(params, received_at, str(exc), author, timestamp)]
    own = inner.get("account") if isinstance(inner.get("account"), str) else account
    if own and "account" not in content:
        content = {**content, "account": own}
    if isinstance(name := envelope.get("sourceName"), str) and name:
        content = {**content, "sender_name": name}
    if own and conversation.startswith("direct:"):
        # A 1:1 chat belongs to the linked phone that had it: two archived phones talking
        # to the same person are two conversations, not one.
        conversation = f"direct:{own}:{conversation[len('direct:') :]}"
    return [
        Event(
            source=events.SIGNAL,
            conversation=ConversationId(conversation),
            event_id=EventId(event_id),
            kind=kind,
            sender=SenderId(author),
            sent_at=timestamp,
            received_at=received_at,
            content=content,
            relates_to=None if relates_to is None else EventId(relates_to),
            attachments=attachments,
            raw=params,
            problem=problem,
        )
    ]


def author_of(envelope: JSONDict) -> str | None:
    for key in ("sourceUuid", "sourceNumber", "source"):
        value = envelope.get(key)
        if isinstance(value, str) and value and events.json_safe(value):
            return value
    return None


def _classify(envelope: JSONDict, params: JSONDict, author: str) -> Classified:
    """conversation, event_id, kind, content, relates_to, attachments, problem."""
    own_id = f"{author}:{envelope['timestamp']}"
    seen = parts.identities(opt_str(envelope, "sourceUuid"), opt_str(envelope, "sourceNumber"), envelope.get("source"))
    if (data := opt_dict(envelope, "dataMessage")) is not None:
        return with_identities(data_event(data, author, own_id, peer=author), seen)
    if (edit := opt_dict(envelope, "editMessage")) is not None:
        return with_identities(edit_event(edit, author, own_id, peer=author), seen)
    if (sync := opt_dict(envelope, "syncMessage")) is not None:
        return sync_event(sync, author, own_id)
    if isinstance(params.get("exception"), dict):
        exc = params["exception"]
        content = {"error": opt_str(exc, "message", "exception."), "error_type": opt_str(exc, "type", "exception.")}
        return (f"direct:{author}", own_id, Kind.UNDECRYPTABLE, content, None, (), None)
    if (story := opt_dict(envelope, "storyMessage")) is not None:
        return with_identities(story_event(story, author, own_id, author), seen)
    if (call := opt_dict(envelope, "callMessage")) is not None:
        return with_identities(call_event(call, author, own_id), seen)
    raise Malformed("envelope carries no message")


# --- unknown ----------------------------------------------------------------------------------


def _unknown(
    params: JSONDict, received_at: int, problem: str, author: str | None = None, timestamp: int | None = None
) -> Event:
    """An UNKNOWN event keeping the parsed params; id from author+timestamp when known, else a hash."""
    event_id = f"{author}:{timestamp}" if author is not None and timestamp is not None else None
    envelope = _unwrap(params).get("envelope")
    if event_id is None and isinstance(envelope, dict):
        ts = envelope.get("timestamp")
        author = author or author_of(envelope)
        if author is not None and is_int(ts) and events.json_safe(ts):
            event_id, timestamp = f"{author}:{ts}", ts
    return Event(
        source=events.SIGNAL,
        conversation=ConversationId("unknown"),
        event_id=EventId(event_id or _hash_id(events.canonical_json(params))),
        kind=Kind.UNKNOWN,
        sender=None if author is None else SenderId(author),
        sent_at=timestamp,
        received_at=received_at,
        raw=params,
        problem=problem,
    )


def _unparsed(decoded: Undecodable, received_at: int) -> Event:
    return Event(
        source=events.SIGNAL,
        conversation=ConversationId("unknown"),
        event_id=EventId(_hash_id(decoded.data)),
        kind=Kind.UNKNOWN,
        sender=None,
        sent_at=None,
        received_at=received_at,
        raw=events.unparsed_raw(decoded.data),
        problem=decoded.problem,
    )


def _hash_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
