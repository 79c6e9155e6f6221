"""signal-cli data messages: text, quotes, mentions, media, reactions, deletions, polls, pins, timers, edits.

Pure helpers for `envelopes` (which owns the envelope, the author and the Event). `data_event` reads a
JsonDataMessage (or a sentMessage's inline fields) into a `Classified` tuple: conversation, event id,
kind, content, relates_to, attachments, problem. A field that breaks signal-cli's documented shape
raises `Malformed`; dataMessage fields not understood here are named in the problem (and kept in raw).
"""

from __future__ import annotations

from bridge.events import Attachment, JSONDict, Kind
from bridge.sources.decode import Malformed, is_int, json_copy, opt_bool, opt_dict, opt_int, opt_str, req_dict
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

#: conversation, event_id, kind, content, relates_to, attachments, problem.
Classified = tuple[str, str, Kind, JSONDict, str | None, tuple[Attachment, ...], str | None]


def edit_event(edit: JSONDict, author: str, own_id: str, peer: str | None) -> Classified:
    target = edit.get("targetSentTimestamp")
    if not is_int(target):
        raise Malformed("editMessage.targetSentTimestamp is not an integer")
    data = req_dict(edit, "dataMessage", "editMessage.")
    conversation, _, _, content, _, attachments, problem = data_event(data, author, own_id, peer)
    return (conversation, own_id, Kind.EDIT, content, f"{author}:{target}", attachments, problem)


def data_event(
    data: JSONDict, author: str, own_id: str | None, peer: str | None, skip: tuple[str, ...] = ()
) -> Classified:
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
    attachments = read_attachments(data)
    if attachments and (found := parts.captions(data["attachments"])) is not None:
        content["captions"] = found
    # A sticker's image is in its pack, not fetched like an attachment: the event is a MESSAGE.
    kind = Kind.ATTACHMENT if attachments else Kind.MESSAGE
    return (kind, content, None, attachments)


def read_attachments(data: JSONDict) -> tuple[Attachment, ...]:
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
