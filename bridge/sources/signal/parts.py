"""Readers for signal-cli's newer message parts: polls, admin deletes, pins, payments, stickers, shared
contacts, captions, stories, calls, non-message syncs and a 1:1 peer's identities.

Pure helpers for `envelopes.py` (which owns ids, conversations and the Event); each takes the decoded
JSON object signal-cli wrote (field names as in its `org.asamk.signal.json` records) and returns content
values, or raises `Malformed` naming the first field that breaks the documented shape. Target ids follow
the normaliser's rule: author (uuid, else number, else legacy identifier) + ":" + sent timestamp.
"""

from __future__ import annotations

from bridge.events import Attachment, JSONDict, Kind
from bridge.sources.decode import Malformed, is_int, json_copy, opt_bool, opt_dict, opt_int, opt_str

Parts = tuple[Kind, JSONDict, str | None, tuple[Attachment, ...]]

#: The target-author triple of JsonReaction, JsonAdminDelete, JsonPinMessage, JsonUnpinMessage.
TARGET_AUTHOR = ("targetAuthorUuid", "targetAuthorNumber", "targetAuthor")


def first_str(d: JSONDict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = d.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def target_id(d: JSONDict, where: str, authors: tuple[str, ...] = TARGET_AUTHOR, default: str | None = None) -> str:
    """author:targetSentTimestamp of the message `d` points at; `default` when `d` names no author."""
    author = first_str(d, authors) or default
    ts = d.get("targetSentTimestamp")
    if author is None or not is_int(ts):
        raise Malformed(f"{where} has no target author or targetSentTimestamp")
    return f"{author}:{ts}"


# --- polls (JsonPollCreate, JsonPollVote, JsonPollTerminate) -----------------------------------


def poll(data: JSONDict, author: str) -> Parts | None:
    """Kind.POLL per the convention in `bridge.events` (answer ids are the option indices), else None."""
    if (create := opt_dict(data, "pollCreate")) is not None:
        options = create.get("options")
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise Malformed("pollCreate.options is not a list of strings")
        multiple = bool(opt_bool(create, "allowMultiple", "pollCreate."))
        start: JSONDict = {
            "action": "start",
            "question": opt_str(create, "question", "pollCreate.") or "",
            "answers": [{"id": str(i), "text": text} for i, text in enumerate(options)],
            "max_selections": max(len(options), 1) if multiple else 1,
            # Signal shows every participant the running tally and who voted what.
            "disclosed": True,
        }
        return (Kind.POLL, {"poll": start}, None, ())
    if (vote := opt_dict(data, "pollVote")) is not None:
        indexes = vote.get("optionIndexes")
        if indexes is None:
            indexes = []  # an empty vote (all choices withdrawn): signal-cli serialises the empty list as null
        if not isinstance(indexes, list) or not all(is_int(i) for i in indexes):
            raise Malformed("pollVote.optionIndexes is not a list of integers")
        target = target_id(vote, "pollVote", ("authorUuid", "authorNumber", "author"))
        content: JSONDict = {"poll": {"action": "vote", "answers": [str(i) for i in indexes]}}
        # Signal's per-voter counter: a later vote (higher count) replaces the voter's earlier one.
        content["vote_count"] = opt_int(vote, "voteCount", "pollVote.")
        return (Kind.POLL, content, target, ())
    if (end := opt_dict(data, "pollTerminate")) is not None:
        # Only a poll's author can end it, so JsonPollTerminate names no author: it is the sender.
        return (Kind.POLL, {"poll": {"action": "end", "text": None}}, target_id(end, "pollTerminate", (), author), ())
    return None


# --- admin delete, pins -------------------------------------------------------------------------


def admin_delete(data: JSONDict) -> Parts | None:
    """A group admin deleting someone else's message: a DELETION of its target, marked as such."""
    if (delete := opt_dict(data, "adminDelete")) is None:
        return None
    return (Kind.DELETION, {"admin_delete": True}, target_id(delete, "adminDelete"), ())


def pin(data: JSONDict) -> Parts | None:
    """Pinning or unpinning a message: STATE (as Matrix's m.room.pinned_events is), relates_to the message."""
    for key, action in (("pinMessage", "pin"), ("unpinMessage", "unpin")):
        if (found := opt_dict(data, key)) is not None:
            target = target_id(found, key)
            detail: JSONDict = {"action": action, "target": target}
            if action == "pin":
                detail["duration_seconds"] = opt_int(found, "pinDurationSeconds", f"{key}.")
            return (Kind.STATE, {"type": f"signal.{action}", "pin": detail, "content": dict(detail)}, target, ())
    return None


# --- message extras -----------------------------------------------------------------------------


def payment(data: JSONDict) -> JSONDict | None:
    """JsonPayment: the note and the receipt (base64). signal-cli exposes no amount: it is inside the
    encrypted MobileCoin receipt."""
    if (found := opt_dict(data, "payment")) is None:
        return None
    return {"note": opt_str(found, "note", "payment."), "receipt": opt_str(found, "receipt", "payment.")}


def sticker(data: JSONDict) -> JSONDict | None:
    """JsonSticker: pack id (hex) and sticker id. The emoji and the image live in the sticker pack, not in
    the envelope (signal-cli stores packs apart from attachments), so `emoji` is None."""
    if (found := opt_dict(data, "sticker")) is None:
        return None
    return {"pack_id": opt_str(found, "packId", "sticker."), "sticker_id": opt_int(found, "stickerId", "sticker.")}


def shared_contacts(data: JSONDict) -> list[JSONDict] | None:
    """JsonSharedContact list: a display name, the name parts, numbers, e-mail addresses, organisation."""
    found = data.get("contacts")
    if found is None:
        return None
    if not isinstance(found, list) or not all(isinstance(c, dict) for c in found):
        raise Malformed("contacts is not a list of objects")
    return [_contact(c) for c in found]


def _contact(contact: JSONDict) -> JSONDict:
    name = opt_dict(contact, "name", "contact.") or {}
    parts = [opt_str(name, k, "contact.name.") for k in ("prefix", "given", "middle", "family", "suffix")]
    display = " ".join(p for p in parts if p) or opt_str(name, "nickname", "contact.name.")
    return {
        "name": display,
        "name_parts": json_copy(name),
        "numbers": _values(contact, "phone"),
        "emails": _values(contact, "email"),
        "organization": opt_str(contact, "organization", "contact."),
    }


def _values(contact: JSONDict, key: str) -> list[str]:
    items = contact.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise Malformed(f"contact.{key} is not a list of objects")
    return [v for i in items if isinstance(v := i.get("value"), str)]


def captions(items: list[JSONDict]) -> list[str | None] | None:
    """Each attachment's caption, aligned with `Event.attachments`; None when no attachment has one."""
    found = [opt_str(item, "caption", "attachment.") for item in items]
    return found if any(found) else None


# --- stories, calls, syncs ----------------------------------------------------------------------


def story(story_message: JSONDict) -> JSONDict:
    """JsonStoryMessage (or the unwrapped story of a JsonSyncStoryMessage): text, replies allowed, group."""
    text = opt_dict(story_message, "textAttachment", "storyMessage.")
    return {
        "allows_replies": opt_bool(story_message, "allowsReplies", "storyMessage."),
        "group_id": opt_str(story_message, "groupId", "storyMessage."),
        "text": None if text is None else opt_str(text, "text", "storyMessage.textAttachment."),
        "text_attachment": None if text is None else json_copy(text),
    }


#: JsonCallMessage parts, in the order a call goes.
_CALL_PARTS = (
    ("offerMessage", "offer"),
    ("answerMessage", "answer"),
    ("busyMessage", "busy"),
    ("hangupMessage", "hangup"),
)


def call(call_message: JSONDict) -> JSONDict:
    """A summary of one call signalling message: action, call id (a string: it is an unsigned 64-bit
    number), offer or hangup type, device; the opaque WebRTC blobs stay in raw only."""
    for key, action in _CALL_PARTS:
        if (part := opt_dict(call_message, key, "callMessage.")) is not None:
            summary: JSONDict = {"action": action, "call_id": _call_id(part.get("id"))}
            if (kind := opt_str(part, "type", f"callMessage.{key}.")) is not None:
                summary["type"] = kind
            if (device := opt_int(part, "deviceId", f"callMessage.{key}.")) is not None:
                summary["device_id"] = device
            return summary
    ice = call_message.get("iceUpdateMessages")
    if isinstance(ice, list) and ice and isinstance(ice[0], dict):
        return {"action": "ice_update", "call_id": _call_id(ice[0].get("id")), "count": len(ice)}
    raise Malformed("callMessage has no offer, answer, busy, hangup or ICE update")


def _call_id(value: object) -> str | None:
    return str(value) if is_int(value) else None


def sync_state(sync: JSONDict) -> JSONDict | None:
    """A syncMessage that is not a sent message or read marker: contact/group list sync, block list."""
    kind = opt_str(sync, "type", "syncMessage.")
    numbers, groups = sync.get("blockedNumbers"), sync.get("blockedGroupIds")
    if numbers is not None or groups is not None:
        return {"type": "signal.blocked", "content": {"blocked_numbers": json_copy(numbers or []),
                                                      "blocked_group_ids": json_copy(groups or [])}}  # fmt: skip
    if kind is not None:
        return {"type": f"signal.{kind.lower()}", "content": {"sync_type": kind}}
    return None


# --- identities ---------------------------------------------------------------------------------


def identities(uuid: str | None, number: str | None, legacy: str | None) -> JSONDict:
    """The ACI, PNI and phone number seen for one peer in this envelope (any may be None).

    signal-cli's legacy field (`source`, `destination`) is the number if known, else the ACI, else
    "PNI:<uuid>" (RecipientAddress.getLegacyIdentifier); a first message to a new contact names the peer
    only that way (signal-cli issue 1834).
    """
    pni = legacy if isinstance(legacy, str) and legacy.startswith("PNI:") else None
    if number is None and isinstance(legacy, str) and legacy.startswith("+"):
        number = legacy
    return {"aci": uuid or None, "pni": pni, "number": number or None}
