"""How the transcript shows conversation state: calls as a summary, room upgrades as links, pins, other state
(pure).

A call is a series of signalling events (start, candidates, answer, end); each is one line saying what it
did, and the start carries the summary the first pass found (who answered, who ended it, how long it
lasted), so a reader never has to add up raw call events. A room upgrade names the conversation it
continues in (tombstone) or continues from (create with a predecessor), linked when this package holds it
(`links`: conversation id -> href of its transcript, built by the package writer from the dossiers).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping

from bridge.archive.lookahead import CALL_ANSWERS, CALL_STARTS, Call, Lookahead
from bridge.archive.transcript.text import esc, esc_id, json_details, ref, safe_href, span, text_of
from bridge.events import Event

#: Renders a sender (name, id, warnings) as HTML.
Who = Callable[[str | None], str]

#: What a signalling-only call event is, in words.
_SIGNALLING = {
    "candidates": "netwerkkandidaten",
    "ice_update": "netwerkkandidaten",
    "select_answer": "antwoord gekozen",
    "negotiate": "heronderhandeling",
}
_ENDS = {"hangup": "beëindigde de oproep", "reject": "weigerde de oproep", "busy": "was in gesprek: geweigerd"}


def state_html(ev: Event, ahead: Lookahead, who: Who, links: Mapping[str, str]) -> str:
    """One STATE entry: a call line, an upgrade, a pin, or the generic state change with its content."""
    c = ev.content
    if isinstance(call := c.get("call"), Mapping):
        return _call(ev, call, ahead, who)
    if (successor := text_of(c, "replacement_room")) is not None:
        body = c.get("content")
        said = body.get("body") if isinstance(body, Mapping) else None
        out = f"<p>zette het gesprek over: het gaat verder in {conversation_link(successor, links)}</p>"
        if isinstance(said, str) and said:
            out += f'<div class="body" dir="auto">{esc(said)}</div>'
        return out + json_details(body)
    if isinstance(predecessor := c.get("predecessor"), Mapping) and isinstance(room := predecessor.get("room_id"), str):
        return (
            f"<p>maakte dit gesprek aan als vervolg van {conversation_link(room, links)}: het zet dat gesprek"
            f" voort</p>{json_details(c.get('content'))}"
        )
    if text_of(c, "type") == "signal.identity_mapping" and isinstance(ids := c.get("identities"), Mapping):
        return _identity_mapping(ev, ids, links)
    if isinstance(pin := c.get("pin"), Mapping):
        action = "zette vast:" if pin.get("action") == "pin" else "maakte los:"
        seconds = pin.get("duration_seconds")
        until = f" voor {span(seconds * 1000)}" if isinstance(seconds, int) and seconds > 0 else ""
        return f"<p>{action} {ref(text_of(pin, 'target') or ev.relates_to)}{until}</p>"
    what = f"<bdi><code>{esc(text_of(c, 'type') or '?')}</code></bdi>"
    key = text_of(c, "state_key")
    what += f" (state key <bdi><code>{esc(key)}</code></bdi>)" if key else ""
    return f"<p>wijzigde de gespreksstatus {what}</p>{json_details(c.get('content'))}"


def _identity_mapping(ev: Event, ids: Mapping[str, object], links: Mapping[str, str]) -> str:
    """Which ids signal-cli says are one person, and the conversations this package holds under the others."""
    named = [
        f"{label} <bdi><code>{esc_id(value)}</code></bdi>"
        for label, value in (("ACI", ids.get("aci")), ("nummer", ids.get("number")), ("PNI", ids.get("pni")))
        if isinstance(value, str)
    ]
    source = esc(text_of(ev.content, "learnt_from") or "?")
    out = f"<p>volgens signal-cli is dit één persoon: {', '.join(named)} (bron: {source})</p>"
    # the mapping is filed under the person's conversation ("direct:" [account ":"] peer); earlier messages
    # keyed by the person's other ids are in sibling conversations with the same prefix
    peer = next((v for v in (ids.get("aci"), ids.get("number"), ids.get("pni")) if isinstance(v, str) and v), "")
    if not peer or not ev.conversation.endswith(peer):
        return out
    prefix = ev.conversation[: len(ev.conversation) - len(peer)]
    others = [prefix + v for v in (ids.get("aci"), ids.get("number"), ids.get("pni")) if isinstance(v, str) and v]
    held = [conversation_link(o, links) for o in others if o != ev.conversation and o in links]
    if held:
        out += f'<p class="note">eerdere berichten onder de andere ids: {", ".join(held)}</p>'
    return out


def conversation_link(conversation: str, links: Mapping[str, str]) -> str:
    """The conversation id, shown in full, linked to its transcript when the package holds it."""
    shown = f"<bdi><code>{esc_id(conversation)}</code></bdi>"
    href = safe_href(links.get(conversation, ""))
    if href is None:
        return shown + ' <span class="note">(niet in dit pakket)</span>'
    return f'<a class="conversation" href="{html.escape(href, quote=True)}">{shown}</a>'


def _call(ev: Event, call: Mapping[str, object], ahead: Lookahead, who: Who) -> str:
    action = call.get("action")
    call_id = call.get("call_id")
    info = ahead.calls.get(call_id) if isinstance(call_id, str) else None
    if action in CALL_STARTS:
        kind = call.get("type")
        what = f" (<bdi>{esc(kind.lower().replace('_', ' '))}</bdi>)" if isinstance(kind, str) else ""
        out = f"<p>begon een oproep{what}</p>"
        if info is not None and info.start_id == ev.event_id:
            out += f'<p class="meta">{_summary(info, who)}</p>'
        return out
    start = f", begonnen met {ref(info.start_id)}" if info is not None and info.start_id else ""
    if action in CALL_ANSWERS:
        return f"<p>nam de oproep aan{start}</p>"
    if isinstance(action, str) and action in _ENDS:
        out = f"<p>{_ENDS[action]}{start}"
        if isinstance(reason := call.get("reason"), str) and reason:
            out += f" (reden: <bdi>{esc(reason)}</bdi>)"
        if info is not None and info.end_id == ev.event_id:
            duration = info.duration_ms
            out += f"; duur {span(duration)}" if duration is not None else "; de oproep is niet aangenomen"
        return out + "</p>"
    what = _SIGNALLING.get(action, action) if isinstance(action, str) else "onbekend"
    return f'<p class="note">oproepsignalering (<bdi>{esc(what)}</bdi>){start}</p>'


def _summary(info: Call, who: Who) -> str:
    """The start's summary: answered by whom, ended by whom, how long."""
    out = "niet aangenomen" if info.answered_by is None else f"aangenomen door {who(info.answered_by)}"
    if info.end_id is None:
        return out + "; het einde van de oproep valt niet in deze maand"
    out += f"; beëindigd door {who(info.ended_by)} ({ref(info.end_id)})"
    if info.end_reason:
        out += f", reden: <bdi>{esc(info.end_reason)}</bdi>"
    if (duration := info.duration_ms) is not None:
        out += f"; duur {span(duration)}"
    return out


#: Matrix state types in words, for the settings summary.
_SETTING_NAMES = {
    "m.room.create": "gesprek aangemaakt",
    "m.room.name": "naam",
    "m.room.topic": "onderwerp",
    "m.room.avatar": "afbeelding van het gesprek",
    "m.room.encryption": "end-to-end versleuteling aangezet",
    "m.room.join_rules": "wie mag deelnemen",
    "m.room.history_visibility": "wie de geschiedenis mag lezen",
    "m.room.guest_access": "gasttoegang",
    "m.room.power_levels": "rechten van deelnemers",
    "m.room.canonical_alias": "adres van het gesprek",
    "m.room.pinned_events": "vastgezette berichten",
    "m.room.server_acl": "toegestane servers",
}
_SETTING_VALUES = {
    ("m.room.join_rules", "join_rule"): {
        "invite": "alleen op uitnodiging",
        "public": "iedereen",
        "knock": "op verzoek",
    },
    ("m.room.history_visibility", "history_visibility"): {
        "shared": "alle leden, ook van vóór hun komst",
        "invited": "leden vanaf hun uitnodiging",
        "joined": "leden vanaf hun komst",
        "world_readable": "iedereen",
    },
    ("m.room.guest_access", "guest_access"): {"can_join": "toegestaan", "forbidden": "niet toegestaan"},
    ("m.room.name", "name"): {},
    ("m.room.topic", "topic"): {},
    ("m.room.encryption", "algorithm"): {},
}


def setting_label(c: Mapping[str, object]) -> str:
    """A generic state change in a few words (HTML): "naam: “Overleg”", with its type code."""
    typ = text_of(c, "type") or "?"
    label = _SETTING_NAMES.get(typ, "instelling")
    content = c.get("content")
    for (t, field), words in _SETTING_VALUES.items():
        if t == typ and isinstance(content, Mapping) and isinstance(value := content.get(field), str):
            said = words.get(value)
            label += f": {esc(said)}" if said else f": “<bdi>{esc(value)}</bdi>”"
    key = text_of(c, "state_key")
    extra = f", state key <bdi><code>{esc(key)}</code></bdi>" if key else ""
    return f'{label} <span class="meta">(<bdi><code>{esc(typ)}</code></bdi>{extra})</span>'
