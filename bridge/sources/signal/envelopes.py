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
    reencode,
    req_dict,
)
from bridge.sources.signal import parts
from bridge.sources.signal.parts import Parts as _Parts
from bridge.sources.signal.parts import first_str as _first_str

#: dataMessage fields this normaliser understands; others are flagged (and kept in raw).
_KNOWN_DATA = frozenset(
    {
        "timestamp", "message", "expiresInSeconds", "isExpirationUpdate", "viewOnce", "reaction", "quote",
        "mentions", "previews", "attachments", "sticker", "remoteDelete", "contacts", "textStyles", "groupInfo",
        "storyContext", "payment", "pollCreate", "pollVote", "pollTerminate", "pinMessage", "unpinMessage",
        "adminDelete",
    }
)  # fmt: skip
#: The fields of a bare (pre-0.13.21) timer change; anything else set means it is not one.
_TIMER_ONLY = frozenset(
    {"timestamp", "message", "expiresInSeconds", "groupInfo", "destination", "destinationNumber", "destinationUuid"}
)
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
    author = _author(envelope)
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


def _author(envelope: JSONDict) -> str | None:
    for key in ("sourceUuid", "sourceNumber", "source"):
        value = envelope.get(key)
        if isinstance(value, str) and value and events.json_safe(value):
            return value
    return None


_Classified = tuple[str, str, Kind, JSONDict, str | None, tuple[Attachment, ...], str | None]


def _classify(envelope: JSONDict, params: JSONDict, author: str) -> _Classified:
    """conversation, event_id, kind, content, relates_to, attachments, problem."""
    own_id = f"{author}:{envelope['timestamp']}"
    seen = parts.identities(opt_str(envelope, "sourceUuid"), opt_str(envelope, "sourceNumber"), envelope.get("source"))
    if (data := opt_dict(envelope, "dataMessage")) is not None:
        return _with_identities(_data_event(data, author, own_id, peer=author), seen)
    if (edit := opt_dict(envelope, "editMessage")) is not None:
        return _with_identities(_edit_event(edit, author, own_id, peer=author), seen)
    if (sync := opt_dict(envelope, "syncMessage")) is not None:
        return _sync_event(sync, author, own_id)
    if isinstance(params.get("exception"), dict):
        exc = params["exception"]
        content = {"error": opt_str(exc, "message", "exception."), "error_type": opt_str(exc, "type", "exception.")}
        return (f"direct:{author}", own_id, Kind.UNDECRYPTABLE, content, None, (), None)
    if (story := opt_dict(envelope, "storyMessage")) is not None:
        return _with_identities(_story_event(story, author, own_id, author), seen)
    if (call := opt_dict(envelope, "callMessage")) is not None:
        summary = parts.call(call)
        call_content: JSONDict = {"type": "signal.call", "call": summary, "content": dict(summary)}
        return _with_identities((f"direct:{author}", own_id, Kind.STATE, call_content, None, (), None), seen)
    raise Malformed("envelope carries no message")


def _sync_event(sync: JSONDict, author: str, own_id: str) -> _Classified:
    """What the linked phone sent (message, edit, story), or its contact/group/block list syncs."""
    sent = opt_dict(sync, "sentMessage", "syncMessage.")
    if sent is None:
        if (story := opt_dict(sync, "sentStoryMessage", "syncMessage.")) is not None:
            peer = _first_str(story, ("destinationUuid", "destinationNumber"))
            classified = _story_event(story, author, own_id, peer)
            seen = parts.identities(opt_str(story, "destinationUuid"), opt_str(story, "destinationNumber"), None)
            return _linked_phone(_with_identities(classified, seen))
        if (state := parts.sync_state(sync)) is not None:
            # The account's own devices talking to each other: filed under the account, not a chat.
            return (f"sync:{author}", own_id, Kind.STATE, state, None, (), None)
        raise Malformed("syncMessage without sentMessage is not normalised (kept raw)")
    peer = _first_str(sent, ("destinationUuid", "destinationNumber", "destination"))
    if (sent_edit := opt_dict(sent, "editMessage", "sentMessage.")) is not None:
        classified = _edit_event(sent_edit, author, own_id, peer)
    else:
        skip = ("destination", "destinationNumber", "destinationUuid")
        classified = _data_event(sent, author, None, peer, skip)
    seen = parts.identities(
        opt_str(sent, "destinationUuid"), opt_str(sent, "destinationNumber"), sent.get("destination")
    )
    return _linked_phone(_with_identities(classified, seen))


def _linked_phone(classified: _Classified) -> _Classified:
    classified[3]["sent_by_linked_phone"] = True
    return classified


def _with_identities(classified: _Classified, seen: JSONDict) -> _Classified:
    """A 1:1 event records the ACI, PNI and number seen for its peer, so a later mapping can join them."""
    if classified[0].startswith("direct:") and any(seen.values()):
        classified[3]["identities"] = seen
    return classified


def _story_event(story: JSONDict, author: str, own_id: str, peer: str | None) -> _Classified:
    """A story: in its group, else the 1:1 chat with its poster (or addressee); a story to all contacts
    sent from the linked phone has no chat and is filed under "stories:" + the author."""
    content: JSONDict = {"story": parts.story(story)}
    content["body"] = content["story"]["text"]
    group_id = content["story"]["group_id"]
    conversation = f"group:{group_id}" if group_id else f"direct:{peer}" if peer else f"stories:{author}"
    file_item = opt_dict(story, "fileAttachment", "storyMessage.")
    attachments = _attachments({"attachments": [file_item]}) if file_item is not None else ()
    if file_item is not None and (caption := parts.captions([file_item])) is not None:
        content["captions"] = caption
    kind = Kind.ATTACHMENT if attachments else Kind.MESSAGE
    return (conversation, own_id, kind, content, None, attachments, None)


def _edit_event(edit: JSONDict, author: str, own_id: str, peer: str | None) -> _Classified:
    target = edit.get("targetSentTimestamp")
    if not is_int(target):
        raise Malformed("editMessage.targetSentTimestamp is not an integer")
    data = req_dict(edit, "dataMessage", "editMessage.")
    conversation, _, _, content, _, attachments, problem = _data_event(data, author, own_id, peer)
    return (conversation, own_id, Kind.EDIT, content, f"{author}:{target}", attachments, problem)


def _data_event(
    data: JSONDict, author: str, own_id: str | None, peer: str | None, skip: tuple[str, ...] = ()
) -> _Classified:
    """A dataMessage (or a sentMessage's inline fields); `own_id` None: from its own timestamp."""
    if own_id is None:
        ts = data.get("timestamp")
        if not is_int(ts):
            raise Malformed("sentMessage.timestamp is not an integer")
        own_id = f"{author}:{ts}"
    conversation, group = _conversation(data, peer)
    kind, content, relates_to, attachments = _data_parts(data, author)
    if group is not None:
        content["group"] = group
        if group["name"]:
            content["group_name"] = group["name"]
    unknown = sorted(k for k, v in data.items() if v is not None and k not in _KNOWN_DATA and k not in skip)
    problem = f"fields not normalised (kept in raw): {', '.join(k[:40] for k in unknown[:8])}" if unknown else None
    return (conversation, own_id, kind, content, relates_to, attachments, problem)


def _conversation(data: JSONDict, peer: str | None) -> tuple[str, JSONDict | None]:
    info = opt_dict(data, "groupInfo")
    if info is not None:
        group_id = opt_str(info, "groupId", "groupInfo.")
        if not group_id:
            raise Malformed("groupInfo.groupId is missing")
        group = {
            "id": group_id,
            "name": opt_str(info, "groupName", "groupInfo."),
            "revision": opt_int(info, "revision", "groupInfo."),
            "type": opt_str(info, "type", "groupInfo."),
        }
        return f"group:{group_id}", group
    if not peer:
        raise Malformed("direct message without a peer (no destination)")
    return f"direct:{peer}", None


def _data_parts(data: JSONDict, author: str) -> _Parts:
    if (delete := opt_dict(data, "remoteDelete")) is not None:
        target = delete.get("timestamp")
        if not is_int(target):
            raise Malformed("remoteDelete.timestamp is not an integer")
        return (Kind.DELETION, {}, f"{author}:{target}", ())
    for newer in (parts.admin_delete(data), parts.poll(data, author), parts.pin(data)):
        if newer is not None:
            return newer
    if (reaction := opt_dict(data, "reaction")) is not None:
        return _reaction(reaction)
    expires = opt_int(data, "expiresInSeconds")
    if _is_timer_change(data):
        seconds = expires or 0
        content: JSONDict = {"expires_in_seconds": seconds, "max_lifetime": seconds * 1000 if seconds else None}
        if data.get("isExpirationUpdate") is None:
            content["inferred"] = True  # signal-cli < 0.13.21 has no isExpirationUpdate
        return (Kind.RETENTION_CHANGE, content, None, ())
    group_info = opt_dict(data, "groupInfo")
    if group_info is not None and group_info.get("type") == "UPDATE" and data.get("message") is None:
        return (Kind.STATE, {"type": "signal.group_update"}, None, ())
    return _message(data, expires)


def _is_timer_change(data: JSONDict) -> bool:
    flag = opt_bool(data, "isExpirationUpdate")
    if flag is not None:
        return flag
    # signal-cli < 0.13.21: a timer change is a dataMessage with nothing in it but the timer.
    if data.get("message") is not None or not is_int(data.get("expiresInSeconds")):
        return False
    group_info = data.get("groupInfo")
    is_update = isinstance(group_info, dict) and group_info.get("type") == "UPDATE"
    return not is_update and not any(v for k, v in data.items() if k not in _TIMER_ONLY)


def _reaction(reaction: JSONDict) -> _Parts:
    target_author = _first_str(reaction, ("targetAuthorUuid", "targetAuthorNumber", "targetAuthor"))
    target_ts = reaction.get("targetSentTimestamp")
    if target_author is None or not is_int(target_ts):
        raise Malformed("reaction has no target author or targetSentTimestamp")
    emoji = opt_str(reaction, "emoji", "reaction.") or ""
    # `removed` (always a bool): True withdraws the emoji from the target. Events logged before this
    # field carry the same fact as `remove`.
    removed = bool(opt_bool(reaction, "isRemove", "reaction."))
    return (Kind.REACTION, {"key": emoji, "removed": removed}, f"{target_author}:{target_ts}", ())


def _message(data: JSONDict, expires: int | None) -> _Parts:
    content: JSONDict = {"body": opt_str(data, "message")}
    if (quote := opt_dict(data, "quote")) is not None:
        quoted_author = _first_str(quote, ("authorUuid", "authorNumber", "author"))
        quoted_id = quote.get("id")
        if quoted_author is not None and is_int(quoted_id):
            content["reply_to"] = f"{quoted_author}:{quoted_id}"
        content["quote"] = {"author": quoted_author, "id": quoted_id, "text": opt_str(quote, "text", "quote.")}
    for key, out in (("mentions", "mentions"), ("textStyles", "text_styles"), ("previews", "previews")):
        value = data.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise Malformed(f"{key} is not a list")
            content[out] = json_copy(value)
    if data.get("storyContext") is not None:
        content["story_context"] = json_copy(data["storyContext"])
    for key, value in (
        ("sticker", parts.sticker(data)),
        ("contacts", parts.shared_contacts(data)),
        ("payment", parts.payment(data)),
    ):
        if value is not None:
            content[key] = value
    if opt_bool(data, "viewOnce"):
        content["view_once"] = True
    if expires:
        content["expires_in_seconds"] = expires
    attachments = _attachments(data)
    if attachments and (found := parts.captions(data["attachments"])) is not None:
        content["captions"] = found
    # A sticker's image is in its pack, not fetched like an attachment: the event is a MESSAGE.
    kind = Kind.ATTACHMENT if attachments else Kind.MESSAGE
    return (kind, content, None, attachments)


def _attachments(data: JSONDict) -> tuple[Attachment, ...]:
    raw = data.get("attachments")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise Malformed("attachments is not a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise Malformed("an attachment is not an object")
        size = item.get("size")
        attachment_id = opt_str(item, "id", "attachment.")
        out.append(
            Attachment(
                status="pending" if attachment_id else "failed",
                media_type=opt_str(item, "contentType", "attachment."),
                filename=opt_str(item, "filename", "attachment."),
                size=size if is_int(size) and 0 <= size < 2**63 else None,
                url=attachment_id or None,
                error=None if attachment_id else "signal-cli gave no attachment id",
            )
        )
    return tuple(out)


# --- unknown ----------------------------------------------------------------------------------


def _unknown(
    params: JSONDict, received_at: int, problem: str, author: str | None = None, timestamp: int | None = None
) -> Event:
    """An UNKNOWN event keeping the parsed params; id from author+timestamp when known, else a hash."""
    event_id = f"{author}:{timestamp}" if author is not None and timestamp is not None else None
    envelope = _unwrap(params).get("envelope")
    if event_id is None and isinstance(envelope, dict):
        ts = envelope.get("timestamp")
        author = author or _author(envelope)
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
