"""How the transcript shows polls: a start with its answers and final votes, a vote, an end with the result (pure).

The counting itself is `lookahead`'s (a first pass over the month); this only renders what it found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bridge.archive.lookahead import Lookahead, Poll, answers_of
from bridge.archive.transcript.text import emoji_html, esc, esc_id, ref
from bridge.events import Event

#: Renders a sender (name, id, warnings) as HTML.
Who = Callable[[str | None], str]


def poll_html(ev: Event, ahead: Lookahead, who: Who) -> str:
    poll = ev.content.get("poll")
    if not isinstance(poll, dict):
        return '<p class="note">peilingsgebeurtenis zonder inhoud, gearchiveerd zoals ontvangen</p>'
    action = poll.get("action")
    start = ahead.polls.get(ev.event_id if action == "start" else ev.relates_to or "")
    if action == "start":
        return poll_start(poll, start, who)
    if action == "vote":
        return _vote(ev, poll, start, ahead)
    if action == "end":
        result = ahead.results.get(ev.event_id)
        text = f' <bdi dir="auto">{emoji_html(esc(poll["text"]))}</bdi>' if isinstance(poll.get("text"), str) else ""
        out = f"<p>sloot peiling {ref(ev.relates_to)}{text}</p>"
        if result is None:
            return (
                out
                + '<p class="note">(niet de eerste afsluiting van een peiling uit deze maand: geen uitslag hier)</p>'
            )
        rows = "".join(f"<li><bdi>{emoji_html(esc(a.text))}</bdi>: {n}</li>" for a, n in result)
        return (
            out + f'<p>Uitslag (laatste stem van elke deelnemer vóór de afsluiting):</p><ul class="tally">{rows}</ul>'
        )
    return f'<p class="note">peilingsgebeurtenis <bdi>{esc(action)}</bdi>, gearchiveerd zoals ontvangen</p>'


def _vote(ev: Event, poll: Mapping[str, object], start: Poll | None, ahead: Lookahead) -> str:
    chosen = poll.get("answers")
    ids = [a for a in chosen if isinstance(a, str)] if isinstance(chosen, list) else []
    shown = ", ".join(answer(start, a) for a in ids) or "geen antwoord (stem ingetrokken)"
    out = f"<p>stemde {shown} in peiling {ref(ev.relates_to)}</p>"
    note = ahead.votes.get(ev.event_id)
    if start is None:
        return out + '<p class="note">(de peiling begon niet in deze maand: haar antwoorden staan hier niet)</p>'
    if note is not None and note.late:
        return out + '<p class="note">na de afsluiting van de peiling: niet geteld</p>'
    if note is not None and note.replaces is not None:
        out += f'<p class="note">vervangt de eerdere stem van deze afzender {ref(note.replaces)}</p>'
    return out


def answer(start: Poll | None, answer_id: str) -> str:
    text = start.answer_text(answer_id) if start is not None else None
    if text is None:
        return f"<bdi><code>{esc_id(answer_id)}</code></bdi>" + (" (geen antwoord van deze peiling)" if start else "")
    return f"“<bdi>{emoji_html(esc(text))}</bdi>”"


def poll_start(poll: Mapping[str, object], start: Poll | None, who: Callable[[str | None], str]) -> str:
    question = emoji_html(esc(poll.get("question") if isinstance(poll.get("question"), str) else ""))
    out = f'<p>begon een peiling: <bdi dir="auto" class="question">{question}</bdi></p>'
    answers = start.answers if start is not None else answers_of(poll.get("answers"))
    out += '<ol class="answers">' + "".join(f"<li><bdi>{emoji_html(esc(a.text))}</bdi></li>" for a in answers) + "</ol>"
    if start is None:
        return out
    limit = f"hoogstens {start.max_selections} antwoorden" if start.max_selections > 1 else "één antwoord"
    out += f'<p class="meta">{limit} per deelnemer</p>'
    if not start.votes:
        return out + '<p class="note">geen getelde stemmen deze maand</p>'
    rows = "".join(
        f"<li>{who(sender)}: {', '.join(answer(start, a) for a in chosen) or 'geen antwoord'} ({ref(vote)})</li>"
        for sender, (vote, chosen) in sorted(start.votes.items())
    )
    when = "bij de afsluiting" if start.end_id else "aan het eind van deze maand (de peiling is niet afgesloten)"
    return out + f'<p>Stemmen {when}, de laatste stem van elke deelnemer:</p><ul class="votes">{rows}</ul>'
