"""How the transcript shows polls: a start with its answers and final votes, a vote, an end with the result (pure).

The counting itself is `lookahead`'s (a first pass over the month); this only renders what it found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bridge.archive.lookahead import Lookahead, Poll, answers_of
from bridge.archive.transcript.text import esc, esc_id, ref
from bridge.events import Event

#: Renders a sender (name, id, warnings) as HTML.
Who = Callable[[str | None], str]


def poll_html(ev: Event, ahead: Lookahead, who: Who) -> str:
    poll = ev.content.get("poll")
    if not isinstance(poll, dict):
        return '<p class="note">poll event without poll content, archived as received</p>'
    action = poll.get("action")
    start = ahead.polls.get(ev.event_id if action == "start" else ev.relates_to or "")
    if action == "start":
        return poll_start(poll, start, who)
    if action == "vote":
        return _vote(ev, poll, start, ahead)
    if action == "end":
        result = ahead.results.get(ev.event_id)
        text = f' <bdi dir="auto">{esc(poll["text"])}</bdi>' if isinstance(poll.get("text"), str) else ""
        out = f"<p>ended poll {ref(ev.relates_to)}{text}</p>"
        if result is None:
            return out + '<p class="note">(not the first end of a poll started this month: no result here)</p>'
        rows = "".join(f"<li><bdi>{esc(a.text)}</bdi>: {n}</li>" for a, n in result)
        return out + f'<p>Result (last vote of each sender before the end):</p><ul class="tally">{rows}</ul>'
    return f'<p class="note">poll event <bdi>{esc(action)}</bdi>, archived as received</p>'


def _vote(ev: Event, poll: Mapping[str, object], start: Poll | None, ahead: Lookahead) -> str:
    chosen = poll.get("answers")
    ids = [a for a in chosen if isinstance(a, str)] if isinstance(chosen, list) else []
    shown = ", ".join(answer(start, a) for a in ids) or "no answer (vote withdrawn)"
    out = f"<p>voted {shown} in poll {ref(ev.relates_to)}</p>"
    note = ahead.votes.get(ev.event_id)
    if start is None:
        return out + '<p class="note">(the poll was not started this month: its answers are not shown)</p>'
    if note is not None and note.late:
        return out + '<p class="note">after the poll ended: not counted</p>'
    if note is not None and note.replaces is not None:
        out += f'<p class="note">replaces this sender\'s earlier vote {ref(note.replaces)}</p>'
    return out


def answer(start: Poll | None, answer_id: str) -> str:
    text = start.answer_text(answer_id) if start is not None else None
    if text is None:
        return f"<bdi><code>{esc_id(answer_id)}</code></bdi>" + (" (not an answer of this poll)" if start else "")
    return f"“<bdi>{esc(text)}</bdi>”"


def poll_start(poll: Mapping[str, object], start: Poll | None, who: Callable[[str | None], str]) -> str:
    question = esc(poll.get("question") if isinstance(poll.get("question"), str) else "")
    out = f'<p>started a poll: <bdi dir="auto" class="question">{question}</bdi></p>'
    answers = start.answers if start is not None else answers_of(poll.get("answers"))
    out += '<ol class="answers">' + "".join(f"<li><bdi>{esc(a.text)}</bdi></li>" for a in answers) + "</ol>"
    if start is None:
        return out
    limit = f"up to {start.max_selections} answers" if start.max_selections > 1 else "one answer"
    out += f'<p class="meta">{limit} per voter</p>'
    if not start.votes:
        return out + '<p class="note">no counted votes this month</p>'
    rows = "".join(
        f"<li>{who(sender)}: {', '.join(answer(start, a) for a in chosen) or 'no answer'} ({ref(vote)})</li>"
        for sender, (vote, chosen) in sorted(start.votes.items())
    )
    when = "at its end" if start.end_id else "at the end of this month (the poll was not ended)"
    return out + f'<p>Votes {when}, each voter\'s last vote:</p><ul class="votes">{rows}</ul>'
