"""Read MSC3381 poll events (start, response, end) into `content["poll"]` as `events.Kind.POLL` defines it.

Contract (pure; used by `normalise` only): each reader takes the event's content and a list it appends
problems to; a field the poll cannot do without (the question, the selections, the relation of a vote
or end) raises `Malformed`, a bad optional part (one answer, max_selections) is dropped or defaulted and
named in `problems`.

Two generations are read (MSC3381, "Unstable prefix"): the stable `m.poll.*` events with MSC1767's
current extensible text (`m.text: [{"body": ..., "mimetype"?: ...}]`, answers keyed `m.id`, selections
in `m.selections`), and Element's `org.matrix.msc3381.poll.*` events with the earlier single-string
`org.matrix.msc1767.text`, answers keyed `id` and selections in `...poll.response.answers`. Element also
puts a legacy `body` in the question; it is the last fallback for any text.
"""

from __future__ import annotations

from bridge.events import JSONDict
from bridge.sources.decode import Malformed, is_int, req_dict, req_id

#: poll type -> (action, the content block it needs).
POLL_TYPES: dict[str, tuple[str, str]] = {
    "m.poll.start": ("start", "m.poll"),
    "m.poll.response": ("vote", "m.selections"),
    "m.poll.end": ("end", "m.text"),
    "org.matrix.msc3381.poll.start": ("start", "org.matrix.msc3381.poll.start"),
    "org.matrix.msc3381.poll.response": ("vote", "org.matrix.msc3381.poll.response"),
    "org.matrix.msc3381.poll.end": ("end", "org.matrix.msc3381.poll.end"),
}
_DISCLOSED = frozenset({"m.disclosed", "org.matrix.msc3381.poll.disclosed", "m.poll.disclosed"})
_TEXT_KEYS = ("m.text", "org.matrix.msc1767.text", "body")


def poll_content(etype: str, content: JSONDict, problems: list[str]) -> tuple[JSONDict, str | None]:
    """`content["poll"]` and the start event a vote or end relates to (None for a start)."""
    action, block = POLL_TYPES[etype]
    if action == "start":
        return _start(content, block, problems), None
    target = _reference(content, problems)
    if action == "vote":
        return {"action": "vote", "answers": _selections(content, block, problems)}, target
    return {"action": "end", "text": text_of(content)}, target


def text_of(block: JSONDict) -> str | None:
    """The plain text of an extensible-text block: `m.text` (list of representations, or a string in
    earlier drafts), `org.matrix.msc1767.text`, or a legacy `body`; None if none is usable."""
    for key in _TEXT_KEYS:
        value = block.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            plain = [
                r.get("body") for r in value if isinstance(r, dict) and r.get("mimetype", "text/plain") == "text/plain"
            ]
            texts = [body for body in plain if isinstance(body, str)]
            if texts:
                return texts[0]
    return None


def _start(content: JSONDict, block: str, problems: list[str]) -> JSONDict:
    # an earlier stable draft named the block like the event type
    poll = req_dict(content, block if block in content or "m.poll.start" not in content else "m.poll.start")
    question = text_of(req_dict(poll, "question", "poll."))
    if question is None:
        raise Malformed("poll.question has no text")
    raw_answers = poll.get("answers")
    if not isinstance(raw_answers, list):
        raise Malformed("poll.answers is missing" if raw_answers is None else "poll.answers is not a list")
    answers: list[JSONDict] = []
    for i, answer in enumerate(raw_answers):
        answer_id = answer.get("m.id", answer.get("id")) if isinstance(answer, dict) else None
        if not isinstance(answer_id, str) or not answer_id:
            problems.append(f"poll.answers[{i}] has no id")
            continue
        text = text_of(answer)
        if text is None:
            problems.append(f"poll.answers[{i}] has no text")
        answers.append({"id": answer_id, "text": text or ""})
    max_selections = poll.get("max_selections", 1)
    if not is_int(max_selections) or max_selections < 1:
        problems.append("poll.max_selections is not a positive integer")
        max_selections = 1
    kind = poll.get("kind")
    return {
        "action": "start",
        "question": question,
        "answers": answers,
        "max_selections": max_selections,
        # MSC3381: an unknown or missing kind is read as undisclosed
        "disclosed": kind in _DISCLOSED,
    }


def _reference(content: JSONDict, problems: list[str]) -> str:
    relation = req_dict(content, "m.relates_to")
    if relation.get("rel_type") != "m.reference":
        problems.append("m.relates_to.rel_type is not m.reference")
    return req_id(relation, "event_id", "m.relates_to.")


def _selections(content: JSONDict, block: str, problems: list[str]) -> list[str]:
    value = content.get(block)
    if block != "m.selections":
        value = req_dict(content, block).get("answers")
    if not isinstance(value, list):
        raise Malformed(f"{block} selections are missing" if value is None else f"{block} selections are not a list")
    chosen = [item for item in value if isinstance(item, str)]
    if len(chosen) != len(value):
        problems.append(f"{block}: {len(value) - len(chosen)} selection(s) not a string")
    return chosen
