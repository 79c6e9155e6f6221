"""Matrix message content: text, formatting, edits, media, voice, stickers and poll starts.

Pure helpers for `normalise`: each `*_parts` handler takes (event, content, redacted before capture,
problems) and returns `relations.Parts`. msgtype and body make a message; a bad optional field is left
out and named in `problems`; media without one clear URL are recorded as "failed" with the reason.
"""

from __future__ import annotations

from bridge.events import Attachment, JSONDict, Kind
from bridge.sources.decode import Malformed, is_int, json_copy, opt_dict, opt_str, req_dict, req_id, req_str, soft
from bridge.sources.matrix.polls import poll_content, text_of
from bridge.sources.matrix.relations import Parts, relation_fields

_ATTACHMENT_MSGTYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})


def message_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> Parts:
    relation = content.get("m.relates_to")  # a bad one is named once, by relation_fields
    if isinstance(relation, dict) and relation.get("rel_type") == "m.replace":
        return _edit_parts(content, relation, problems)
    body, attachments = _message_content(content, problems)
    return (Kind.ATTACHMENT if attachments else Kind.MESSAGE, body, None, attachments)


def _edit_parts(content: JSONDict, relation: JSONDict, problems: list[str]) -> Parts:
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
        out.update(relation_fields(content, problems))
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


def sticker_parts(_event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> Parts:
    out: JSONDict = {"sticker": True, "body": req_str(content, "body")}
    out.update(relation_fields(content, problems))
    info = soft(problems, opt_dict, content, "info") or {}
    return (Kind.ATTACHMENT, out, None, (_attachment(content, info, problems),))


def poll_parts(event: JSONDict, content: JSONDict, _redacted: bool, problems: list[str]) -> Parts:
    """A poll start, vote or end (`Kind.POLL`); a start also keeps its text fallback and relations."""
    poll, target = poll_content(event["type"], content, problems)
    out: JSONDict = {"poll": poll}
    if poll["action"] == "start":
        if (fallback := text_of(content)) is not None:
            out["body"] = fallback
        if content.get("m.relates_to") is not None:
            out.update(relation_fields(content, problems))
        if isinstance(mentions := content.get("m.mentions"), dict):
            out["mentions"] = json_copy(mentions)
    return (Kind.POLL, out, target, ())
