"""signal-cli envelopes that are not a plain data message: the linked phone's syncs, stories and calls.

Pure helpers for `envelopes`, returning `data_message.Classified`. What the linked phone sent (a
sentMessage, a sent edit or story) is filed in the chat it was sent to and marked
`sent_by_linked_phone`; the account's own contact/group/block syncs go under "sync:" + author; a
call is STATE in the 1:1 chat with its summary. `with_identities` records a 1:1 peer's ACI, PNI and
number as seen in the envelope.
"""

from __future__ import annotations

from bridge.events import JSONDict, Kind
from bridge.sources.decode import Malformed, opt_dict, opt_str
from bridge.sources.signal import parts
from bridge.sources.signal.data_message import Classified, data_event, edit_event, read_attachments
from bridge.sources.signal.parts import first_str as _first_str


def sync_event(sync: JSONDict, author: str, own_id: str) -> Classified:
    """What the linked phone sent (message, edit, story), or its contact/group/block list syncs."""
    sent = opt_dict(sync, "sentMessage", "syncMessage.")
    if sent is None:
        if (story := opt_dict(sync, "sentStoryMessage", "syncMessage.")) is not None:
            peer = _first_str(story, ("destinationUuid", "destinationNumber"))
            classified = story_event(story, author, own_id, peer)
            seen = parts.identities(opt_str(story, "destinationUuid"), opt_str(story, "destinationNumber"), None)
            return _linked_phone(with_identities(classified, seen))
        if (state := parts.sync_state(sync)) is not None:
            # The account's own devices talking to each other: filed under the account, not a chat.
            return (f"sync:{author}", own_id, Kind.STATE, state, None, (), None)
        raise Malformed("syncMessage without sentMessage is not normalised (kept raw)")
    peer = _first_str(sent, ("destinationUuid", "destinationNumber", "destination"))
    if (sent_edit := opt_dict(sent, "editMessage", "sentMessage.")) is not None:
        classified = edit_event(sent_edit, author, own_id, peer)
    else:
        skip = ("destination", "destinationNumber", "destinationUuid")
        classified = data_event(sent, author, None, peer, skip)
    seen = parts.identities(
        opt_str(sent, "destinationUuid"), opt_str(sent, "destinationNumber"), sent.get("destination")
    )
    return _linked_phone(with_identities(classified, seen))


def _linked_phone(classified: Classified) -> Classified:
    classified[3]["sent_by_linked_phone"] = True
    return classified


def with_identities(classified: Classified, seen: JSONDict) -> Classified:
    """A 1:1 event records the ACI, PNI and number seen for its peer, so a later mapping can join them."""
    if classified[0].startswith("direct:") and any(seen.values()):
        classified[3]["identities"] = seen
    return classified


def story_event(story: JSONDict, author: str, own_id: str, peer: str | None) -> Classified:
    """A story: in its group, else the 1:1 chat with its poster (or addressee); a story to all contacts
    sent from the linked phone has no chat and is filed under "stories:" + the author."""
    content: JSONDict = {"story": parts.story(story)}
    content["body"] = content["story"]["text"]
    group_id = content["story"]["group_id"]
    conversation = f"group:{group_id}" if group_id else f"direct:{peer}" if peer else f"stories:{author}"
    file_item = opt_dict(story, "fileAttachment", "storyMessage.")
    attachments = read_attachments({"attachments": [file_item]}) if file_item is not None else ()
    if file_item is not None and (caption := parts.captions([file_item])) is not None:
        content["captions"] = caption
    kind = Kind.ATTACHMENT if attachments else Kind.MESSAGE
    return (conversation, own_id, kind, content, None, attachments, None)


def call_event(call: JSONDict, author: str, own_id: str) -> Classified:
    """One call signalling message, in the 1:1 chat with its sender: STATE with a `call` summary."""
    summary = parts.call(call)
    call_content: JSONDict = {"type": "signal.call", "call": summary, "content": dict(summary)}
    return (f"direct:{author}", own_id, Kind.STATE, call_content, None, (), None)
