"""Matrix state events and VoIP calls: membership, retention, room upgrades, other state, call signalling.

Pure helpers for `normalise`: state events (those with a `state_key`) are read by `state_parts`;
call events by `call_parts` (recorded as conversation state). Each returns `relations.Parts`.
"""

from __future__ import annotations

from bridge.events import JSONDict, Kind
from bridge.sources.decode import Malformed, json_copy, opt_bool, opt_dict, opt_int, opt_str, req_id, req_str, soft
from bridge.sources.matrix.relations import Parts

#: VoIP signalling (spec "Voice over IP"), kept as state with `content["call"]`.
CALL_TYPES = frozenset(
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


def state_parts(etype: str, event: JSONDict, content: JSONDict) -> Parts:
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


def _member_parts(target: str, event: JSONDict, content: JSONDict) -> Parts:
    if not target:
        raise Malformed("m.room.member state_key is empty")
    prev = _prev_content(event)
    out: JSONDict = {"membership": req_str(content, "membership"), "target": target}
    out.update((key, opt_str(content, key)) for key in ("displayname", "avatar_url", "reason"))
    out["is_direct"] = opt_bool(content, "is_direct")
    kept = ("membership", "displayname")
    out["previous"] = None if prev is None else {key: opt_str(prev, key, "prev_content.") for key in kept}
    return (Kind.MEMBERSHIP, out, None, ())


def _retention_parts(event: JSONDict, content: JSONDict) -> Parts:
    prev = _prev_content(event)
    lifetimes = ("max_lifetime", "min_lifetime")
    out: JSONDict = {key: opt_int(content, key) for key in lifetimes}
    out["previous"] = None if prev is None else {key: opt_int(prev, key, "prev_content.") for key in lifetimes}
    return (Kind.RETENTION_CHANGE, out, None, ())


def _prev_content(event: JSONDict) -> JSONDict | None:
    unsigned = opt_dict(event, "unsigned")
    return None if unsigned is None else opt_dict(unsigned, "prev_content", "unsigned.")


def call_parts(event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> Parts:
    """A VoIP call event (spec "Voice over IP"): recorded as conversation state, not as a message.

    Calls are signalling, not something a participant wrote, so Kind.STATE (what the transcript
    already shows as "changed conversation state") with `content["call"]`; SDP and candidates stay in raw.
    """
    call: JSONDict = {"action": event["type"].removeprefix("m.call."), "call_id": req_id(content, "call_id")}
    call["reason"] = soft(problems, opt_str, content, "reason")
    return (Kind.STATE, {"type": event["type"], "call": call}, None, ())
