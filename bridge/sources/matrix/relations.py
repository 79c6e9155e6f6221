"""Matrix relations: what a message points at, and the events that are only a relation.

Pure helpers for `normalise` (which owns the envelope and the Event): `relation_fields` reads a
message's `m.relates_to` (reply, thread, other relation) into content; the reaction, redaction and
still-encrypted handlers return the `Parts` of events whose meaning is their target. `Parts` is what
every kind handler returns. A field an event cannot do without raises `Malformed`; a bad optional one
is named in `problems`.
"""

from __future__ import annotations

from bridge.events import Attachment, JSONDict, Kind
from bridge.sources.decode import Malformed, opt_dict, opt_str, req_dict, req_id, req_str, soft

#: What a kind handler decides: the Event's kind, content, relates_to and attachments (a plain
#: tuple, not a class: this is built once per event on the import path).
Parts = tuple[Kind, JSONDict, str | None, tuple[Attachment, ...]]


def relation_fields(content: JSONDict, problems: list[str]) -> JSONDict:
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


def reaction_parts(_event: JSONDict, content: JSONDict, _redacted: bool, _problems: list[str]) -> Parts:
    relation = req_dict(content, "m.relates_to")
    if relation.get("rel_type") != "m.annotation":
        raise Malformed("m.reaction rel_type is not m.annotation")
    target = req_id(relation, "event_id", "m.relates_to.")
    key = req_str(relation, "key", "m.relates_to.")
    return (Kind.REACTION, {"key": key}, target, ())


def redaction_parts(event: JSONDict, content: JSONDict, redacted: bool, _problems: list[str]) -> Parts:
    """Top-level `redacts` (room v1-v10) or `content.redacts` (v11); both must agree."""
    top = opt_str(event, "redacts")
    inner = opt_str(content, "redacts", "content.")
    if top is not None and inner is not None and top != inner:
        raise Malformed("redacts differs between top level and content")
    target = inner if inner is not None else top
    if target == "" or (target is None and not redacted):
        raise Malformed("m.room.redaction without redacts")
    return (Kind.DELETION, {"reason": opt_str(content, "reason")}, target, ())


def encrypted_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> Parts:
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
