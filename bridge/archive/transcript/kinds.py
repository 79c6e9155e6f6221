"""How the transcript shows each kind of event: one `Renderer` call per entry (pure).

`Renderer.entry` turns one `TranscriptEntry` into its `<li>` (in Dutch): the sender (full id always shown,
lookalike names and ids flagged), the time (clock time; the full date in a day heading and in `title`), the
marks the first pass found and a body for every kind. What the first pass (`Lookahead`) knows about later
events is shown where a chat client shows it: an edited message shows its latest text with every earlier
version in a `<details>`, a deleted one says by whom and when (its text stays), reactions are gathered
under their message, a reply quotes a snippet of its original with a link to it. The later events keep
their own entries in log order (nothing is hidden), written compactly. Runs of consecutive state and
membership entries are grouped in one `<details>` so set-up does not fill the first screen.

It remembers display names (one per sender), a snippet per event that something quotes
(`Lookahead.quoted`) and the current run of grouped entries (at most `_RUN_MAX`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, tzinfo
from types import MappingProxyType
from typing import NamedTuple

from bridge.archive.formatted import strip_reply_fallback
from bridge.archive.lookahead import Lookahead
from bridge.archive.lookalike import Lookalike
from bridge.archive.transcript.message import EMPTY, PLAIN_KEYS, message_body
from bridge.archive.transcript.polls import poll_html
from bridge.archive.transcript.state import setting_label, state_html
from bridge.archive.transcript.text import (
    TIMEZONE,
    anchor,
    dutch_date,
    dutch_time,
    emoji_html,
    esc,
    esc_id,
    json_details,
    local_time,
    ref,
    text_of,
    time_html,
)
from bridge.events import SIGNAL, SPOOL_UNCONFIRMED, Event, Kind
from bridge.policy import Withheld


class TranscriptEntry(NamedTuple):
    """One log record of the conversation-month (a named tuple: one is built per entry).

    `event` is None only for a record the writer could not or may not show
    (then `withheld` says why, or a bare note is written). `media` maps an
    attachment's blob id to its href relative to the transcript.
    """

    seq: int
    event: Event | None
    withheld: Withheld | None = None
    media: Mapping[str, str] = MappingProxyType({})


#: Kinds marked deleted in place, and kinds written compactly (they concern another entry).
_SHOWN_DELETED = frozenset({Kind.MESSAGE, Kind.ATTACHMENT, Kind.POLL})
_COMPACT = frozenset({Kind.EDIT, Kind.REACTION, Kind.DELETION})
#: Entries grouped in one run at most (memory stays bounded whatever the run).
_RUN_MAX = 256
#: Characters of a quoted snippet.
_SNIPPET = 90
#: Whether `Renderer.entry` takes its lean path for plain text messages (`Renderer.plain`); off only in tests
#: that compare the lean path's bytes with the general code's.
LEAN = True


class Renderer:
    """Renders one entry at a time (see the module docstring); `finish` closes the last group."""

    def __init__(
        self,
        names: dict[str, str],
        edited: Collection[str],
        deleted: Collection[str],
        ahead: Lookahead,
        links: Mapping[str, str] | None = None,
        lookalikes: Iterable[Lookalike] = (),
        tz: tzinfo = TIMEZONE,
    ) -> None:
        self._ahead = ahead
        self._tz = tz
        self._marked: dict[str, list[str]] = {}  # later-appearing look-alike id -> its marker texts
        for found in lookalikes:
            self._marked.setdefault(found.subject, []).append(found.why)
        self._links: Mapping[str, str] = links or {}
        self._names = names
        self._edited = edited
        self._deleted = deleted
        self._who_html: dict[str | None, str] = {}  # `_who` per sender, valid while `_names` is unchanged
        self._settings = {ev.event_id for ev in ahead.settings}
        self._snippets: dict[str, tuple[str, str]] = {}  # quoted event id -> (who, “text”) as HTML
        self._date: tuple[int, int, int] | None = None  # the day of the last day heading
        self._run: list[tuple[int, str, bool]] = []  # grouped entries: (seq, html, is a setting)
        # Every id something later in the month (or the writer's pre-pass) says something about: a message
        # with one of these ids takes the general path (marks, versions, reactions, deletion note, snippet).
        self._touched = frozenset(
            (
                *ahead.quoted, *self._settings, *ahead.versions, *ahead.attempts, *ahead.reactions,
                *ahead.deletions, *ahead.unconfirmed, *edited, *deleted,
            )
        )  # fmt: skip
        self._lean = LEAN

    # -- the stream -----------------------------------------------------------------------------------

    def entry(self, entry: TranscriptEntry) -> str:
        """The HTML for one entry: its `<li>`, maybe after a day heading; "" while it waits in a group."""
        ev = entry.event
        out = ""
        t = None
        if ev is not None and entry.withheld is None:
            t = local_time(ev.sent_at if ev.sent_at is not None else ev.received_at, self._tz)
            if t is not None and (t.year, t.month, t.day) != self._date:
                self._date = (t.year, t.month, t.day)
                out += self.finish() + f'<li class="day"><h2>{esc(dutch_date(t))}</h2></li>\n'
            if self._lean and (lean := self.plain(entry.seq, ev, t)) is not None:
                return out + self.finish() + lean if self._run else out + lean
        shown = self._entry(entry, t)
        if ev is not None and entry.withheld is None and (ev.kind == Kind.MEMBERSHIP or ev.event_id in self._settings):
            self._run.append((entry.seq, shown, ev.kind != Kind.MEMBERSHIP))
            return out + (self.finish() if len(self._run) >= _RUN_MAX else "")
        return out + self.finish() + shown

    def finish(self) -> str:
        """The current group of state and membership entries as one collapsible entry (a lone one as it is)."""
        run, self._run = self._run, []
        if len(run) <= 1:
            return "".join(shown for _, shown, _ in run)
        settings = sum(1 for _, _, setting in run if setting)
        parts = []
        if settings:
            parts.append(f"{settings} {'instelling' if settings == 1 else 'instellingen'}")
        if members := len(run) - settings:
            parts.append(f"{members} {'lidmaatschapswijziging' if members == 1 else 'lidmaatschapswijzigingen'}")
        inner = "".join(shown for _, shown, _ in run)
        return (
            f'<li class="entry group"><details><summary>{" en ".join(parts)}'
            f' <span class="seq">#{run[0][0]}–#{run[-1][0]}</span></summary>'
            f'<ol class="log">\n{inner}</ol></details></li>\n'
        )

    def plain(self, seq: int, ev: Event, t: datetime | None) -> str | None:
        """The `<li>` of a plain text message (the common case), as `_entry` writes it, with a fraction of its
        calls; None for anything else (a property test pins both). Plain: a message with no attachments, only a
        `msgtype` and a `body`, that nothing in the month edits, deletes, reacts to, quotes or marks (its id
        not in `_touched`), shown outside a withheld entry. Its head has no marks and its body is the text alone.
        `t`: `local_time` of its time, as `entry` has it."""
        if ev.kind is not Kind.MESSAGE or ev.attachments or not ev.content.keys() <= PLAIN_KEYS:
            return None
        eid = ev.event_id
        if eid in self._touched:
            return None
        body = ev.content.get("body")
        text = EMPTY
        if isinstance(body, str) and body:
            text = f'<div class="body" dir="auto">{emoji_html(esc(body))}</div>'
        aid = anchor(eid)
        when = time_html(ev.sent_at if ev.sent_at is not None else ev.received_at, self._tz, t)
        return (
            f'<li id="{aid}" class="entry message"><div class="head">{self._who(ev.sender)} {when}'
            f' <a class="seq" href="#{aid}">#{seq}</a></div>{text}</li>\n'
        )

    def _entry(self, entry: TranscriptEntry, t: datetime | None) -> str:
        ev = entry.event
        if ev is None:
            body = tombstone(entry.withheld, self._tz) if entry.withheld else '<p class="note">record niet getoond</p>'
            return li(f"rec-{entry.seq}", "withheld" if entry.withheld else "note", entry.seq, "", body)
        if entry.withheld is not None:  # no content, no sender, no names learnt from it
            return li(anchor(ev.event_id), "withheld", entry.seq, "", tombstone(entry.withheld, self._tz))
        if ev.kind == Kind.MEMBERSHIP:
            self._learn_name(ev)
        elif ev.source == SIGNAL and ev.sender is not None and (name := text_of(ev.content, "sender_name")):
            self._learn_signal_name(ev.sender, name)
        when = time_html(ev.sent_at if ev.sent_at is not None else ev.received_at, self._tz, t)
        head = f"{self._who(ev.sender)} {when}"
        body = self._body(ev, entry.media)
        css = ev.kind.value
        if ev.kind in _SHOWN_DELETED and self._is_deleted(ev.event_id):
            css += " deleted"
        if ev.kind in _COMPACT or ev.event_id in self._settings:
            css += " compact"
        return li(anchor(ev.event_id), css, entry.seq, head + self._marks(ev), body)

    # -- names ----------------------------------------------------------------------------------------

    def _learn_name(self, ev: Event) -> None:
        target, name = text_of(ev.content, "target"), text_of(ev.content, "displayname")
        if target is None:
            return
        if name and text_of(ev.content, "membership") == "join":
            self._names[target] = name
            self._who_html.pop(target, None)
        elif text_of(ev.content, "membership") in ("leave", "ban"):
            self._names.pop(target, None)
            self._who_html.pop(target, None)

    def _learn_signal_name(self, sender: str, name: str) -> None:
        """Signal has no membership events: every envelope carries the sender's profile name (`sourceName`)."""
        if self._names.get(sender) != name:
            self._names[sender] = name
            self._who_html.pop(sender, None)

    def _name_of(self, user_id: str) -> str:
        """The display name known for `user_id` (for a mention), else the id itself."""
        return self._names.get(user_id) or user_id

    def _who(self, sender: str | None) -> str:
        shown = self._who_html.get(sender)
        if shown is None:
            shown = self._who_html[sender] = self._who_uncached(sender)
        return shown

    def _who_uncached(self, sender: str | None) -> str:
        if sender is None:
            return '<span class="who note">(geen afzender)</span>'
        name = self._names.get(sender)
        if name and name != sender:
            shown = f'<bdi class="who">{esc_id(name)}</bdi> <bdi class="id">{esc_id(sender)}</bdi>'
        else:
            shown = f'<bdi class="who">{esc_id(sender)}</bdi>'
        marks = self._marked.get(sender, ())
        return shown + "".join(f' <span class="warn lookalike">⚠ <bdi>{esc_id(w)}</bdi></span>' for w in marks)

    def _short_who(self, sender: str | None) -> str:
        """The display name alone (else the id): for quotes and reaction lists, where the full id is a link away."""
        if sender is None:
            return "(geen afzender)"
        return f"<bdi>{esc_id(self._names.get(sender) or sender)}</bdi>"

    # -- what later events did to this one -----------------------------------------------------------

    def _is_deleted(self, event_id: str) -> bool:
        return event_id in self._ahead.deletions or event_id in self._deleted

    def _marks(self, ev: Event) -> str:
        out = ""
        eid = ev.event_id
        if eid in self._edited:
            last = self._edited.get(eid) if isinstance(self._edited, Mapping) else None
            see = f", laatste versie: {ref(last)}" if isinstance(last, str) and last else ", latere versies hieronder"
            if eid in self._ahead.versions:
                see = ""
            out += f' <span class="mark edited">bewerkt{see}</span>'
        if self._is_deleted(eid):
            out += ' <span class="mark deleted">verwijderd</span>'
        for attempt in self._ahead.attempts.get(eid, ()):
            out += f' <span class="mark rejected">bewerkingspoging door een ander genegeerd, zie {ref(attempt)}</span>'
        if ev.content.get("redacted_before_capture") is True:
            out += ' <span class="mark deleted">verwijderd vóór het vastleggen</span>'
        if (question := self._ahead.unconfirmed.get(eid)) is not None:
            out += f' <span class="mark rejected">niet bevestigd door de homeserver, zie {ref(question)}</span>'
        if isinstance(enc := ev.content.get("encryption"), Mapping):
            out += f' <span class="mark encrypted" title="{esc(_encryption_title(enc))}">versleuteld</span>'
        return out

    def _deletion_note(self, ev: Event) -> str:
        deletion = self._ahead.deletions.get(ev.event_id)
        if deletion is not None:
            reason = text_of(deletion.content, "reason")
            why = f" (reden: <bdi>{esc(reason)}</bdi>)" if reason else ""
            when = dutch_time(deletion.sent_at if deletion.sent_at is not None else deletion.received_at, self._tz)
            return (
                f'<p class="deleted-note">Verwijderd door {self._who(deletion.sender)} op {esc(when)}{why}'
                f' (<a href="#{anchor(deletion.event_id)}">naar de verwijdering</a>). Chatprogramma'
                "'s tonen dit bericht niet meer; het archief bewaart"
                " het zoals het was.</p>"
            )
        if ev.event_id in self._deleted:
            deleter = self._deleted.get(ev.event_id) if isinstance(self._deleted, Mapping) else None
            who = " door de afzender" if deleter is not None and deleter == ev.sender else ""
            return f'<p class="deleted-note">Verwijderd{who}; het archief bewaart het zoals het was.</p>'
        return ""

    def _versions(self, ev: Event, media: Mapping[str, str]) -> str:
        """Every earlier version of an edited message, one click away (the latest is the entry's text)."""
        edits = self._ahead.versions.get(ev.event_id)
        if not edits:
            return ""
        original = message_body(ev, media, self._name_of, self._quote)
        rows = [f"<li>oorspronkelijk, {esc(self._when(ev))}:{original}</li>"]
        for edit in edits[:-1]:
            link = f'<a href="#{anchor(edit.event_id)}">bewerking</a>'
            rows.append(f"<li>{link}, {esc(self._when(edit))}:{self._text(edit)}</li>")
        last = edits[-1]
        n = len(edits)
        return (
            f'<details class="versions"><summary>bewerkt, laatst op {esc(self._when(last))}'
            f' (<a href="#{anchor(last.event_id)}">naar de bewerking</a>); {n} eerdere'
            f" {'versie' if n == 1 else 'versies'}</summary>"
            f"<ol>{''.join(rows)}</ol></details>"
        )

    def _reactions(self, ev: Event) -> str:
        """The reactions to this event, per emoji: who reacted (withdrawn ones struck through)."""
        reactions = self._ahead.reactions.get(ev.event_id)
        if not reactions:
            return ""
        by_key: dict[str, dict[str | None, tuple[str, bool]]] = {}
        for r in reactions:
            removed = r.content.get("removed") is True or r.content.get("remove") is True
            by_key.setdefault(text_of(r.content, "key") or "", {})[r.sender] = (r.event_id, removed)
        rows = []
        for key, senders in by_key.items():
            people = []
            for sender, (rid, removed) in senders.items():
                who = f'<a href="#{anchor(rid)}">{self._short_who(sender)}</a>'
                people.append(f'<s class="withdrawn">{who}</s> (ingetrokken)' if removed else who)
            active = sum(1 for _, removed in senders.values() if not removed)
            rows.append(
                f'<li><span class="reaction">{emoji_html(esc(key), named=True)}</span>'
                f' <span class="count">{active}</span> {", ".join(people)}</li>'
            )
        return f'<ul class="reactions" aria-label="reacties">{"".join(rows)}</ul>'

    def _when(self, ev: Event) -> str:
        return dutch_time(ev.sent_at if ev.sent_at is not None else ev.received_at, self._tz)

    def _text(self, ev: Event) -> str:
        return message_body(ev, {}, self._name_of, self._quote)

    def _remember(self, ev: Event, content: Mapping[str, object]) -> None:
        """Keep a snippet of an event that something later quotes (replies, edits, reactions, deletions)."""
        if ev.event_id not in self._ahead.quoted:
            return
        body = text_of(content, "body")
        if isinstance(content.get("reply_to"), str) and body:
            body = strip_reply_fallback(body)
        if isinstance(poll := content.get("poll"), Mapping) and isinstance(q := poll.get("question"), str):
            body = "peiling: " + q
        if not body and ev.attachments:
            body = "bijlage " + (ev.attachments[0].filename or "")
        text = " ".join((body or "").split())
        if len(text) > _SNIPPET:
            text = text[: _SNIPPET - 1].rstrip() + "…"
        said = f"“<bdi>{emoji_html(esc(text))}</bdi>”" if text else f"({esc(ev.kind.value)})"
        self._snippets[ev.event_id] = (self._short_who(ev.sender), said)

    def _quote(self, event_id: str | None, text: bool = True) -> str:
        """A link to an earlier event showing who wrote what (`text` False: only whose message it is), else its id
        (not shown above in this transcript)."""
        if event_id is not None and (snippet := self._snippets.get(event_id)) is not None:
            who, said = snippet
            shown = f"{who}: {said}" if text else f"het bericht van {who}"
            return f'<a class="quote" href="#{anchor(event_id)}">{shown}</a>'
        return f'{ref(event_id)} <span class="note">(niet eerder in dit overzicht)</span>'

    # -- bodies ---------------------------------------------------------------------------------------

    def _body(self, ev: Event, media: Mapping[str, str]) -> str:
        c = ev.content
        kind = ev.kind
        if kind in (Kind.MESSAGE, Kind.ATTACHMENT):
            versions = self._ahead.versions.get(ev.event_id)
            shown = ev
            if versions:  # the latest text, with the original's relations and attachments
                latest = {k: v for k, v in versions[-1].content.items() if k in ("body", "format", "formatted_body")}
                kept = {k: v for k, v in c.items() if k not in ("body", "format", "formatted_body")}
                shown = dataclasses.replace(ev, content={**kept, **latest})
            self._remember(ev, shown.content)
            return (
                message_body(shown, media, self._name_of, self._quote)
                + self._versions(ev, media)
                + self._deletion_note(ev)
                + self._reactions(ev)
            )
        if kind == Kind.EDIT:
            self._remember(ev, c)
            return self._edit_lead(ev) + message_body(ev, media, self._name_of, self._quote) + self._reactions(ev)
        if kind == Kind.DELETION:
            reason = text_of(c, "reason")
            why = f" (reden: <bdi>{esc(reason)}</bdi>)" if reason else ""
            what = self._quote(ev.relates_to)
            return f'<p class="note">verwijderde {what}{why}; het origineel blijft in het archief</p>'
        if kind == Kind.REACTION:
            # "removed" is the stored flag; "remove" is how logs written before named it.
            removed = c.get("removed") is True or c.get("remove") is True
            verb = "trok de reactie" if removed else "reageerde met"
            key = f'<bdi class="reaction">{emoji_html(esc(text_of(c, "key") or ""), named=True)}</bdi>'
            after = " in" if removed else ""
            return f"<p>{verb} {key}{after} op {self._quote(ev.relates_to)}</p>"
        if kind == Kind.POLL:
            self._remember(ev, c)
            return poll_html(ev, self._ahead, self._who) + self._deletion_note(ev) + self._reactions(ev)
        if kind == Kind.MEMBERSHIP:
            return self._membership(ev)
        if kind == Kind.RETENTION_CHANGE:
            return retention(c)
        if kind == Kind.STATE:
            if ev.event_id in self._settings:
                label = setting_label(c)
                return (
                    f'<p class="note">wijzigde een instelling: {label} (<a href="#inst-{anchor(ev.event_id)}">'
                    "zie Instellingen bovenaan</a>)</p>"
                )
            return state_html(ev, self._ahead, self._who, self._links)
        if kind == Kind.UNDECRYPTABLE:
            alg = esc(text_of(c, "algorithm") or "onbekend")
            return (
                f'<p class="note">kon niet worden ontsleuteld (algoritme {alg}); het versleutelde bericht is'
                " gearchiveerd</p>"
            )
        if kind == Kind.NOTICE:
            if c.get("notice") == SPOOL_UNCONFIRMED:
                return (
                    f'<p class="warn">niet bevestigd: {ref(text_of(c, "event_id"))} kwam alleen binnen via de spool'
                    " van de Synapse-module; de homeserver heeft het de archiveerder bij het synchroniseren nooit"
                    " gegeven. Het kan zijn dat het niet via de homeserver is verstuurd (een vervalst spoolbericht)."
                    f" Het bericht is bewaard zoals het binnenkwam.</p>{json_details(c)}"
                )
            return f'<p class="note">melding van de archiveerder</p>{json_details(c)}'
        problem = f": {esc(ev.problem)}" if ev.problem else ""
        raw_type = ev.raw.get("type")
        typ = f" van type <bdi><code>{esc(raw_type)}</code></bdi>" if isinstance(raw_type, str) else ""
        raw_content = ev.raw.get("content", c) if c == {} else c
        return f'<p class="note">onbekende gebeurtenis{typ}, gearchiveerd zoals ontvangen{problem}</p>' + json_details(
            raw_content
        )

    def _edit_lead(self, ev: Event) -> str:
        """What an edit says before its text: what it edits, or that it is a rejected attempt."""
        # the original shows its latest text and every version: here only whose message this edits
        lead = f'<p class="note">bewerking van {self._quote(ev.relates_to, text=False)}; nieuwe tekst:</p>'
        if (owner := self._ahead.rejected.get(ev.event_id)) is not None:
            lead = (
                f'<p class="warn">afgewezen bewerkingspoging: {ref(ev.relates_to)} is verstuurd door'
                f" <bdi>{esc_id(owner)}</bdi>, niet door deze afzender; het origineel is ongewijzigd"
                " (chatprogramma's negeren bewerkingen door een ander dan de oorspronkelijke afzender)</p>"
            )
        if ev.content.get("new_content_missing") is True:
            lead += '<p class="note">(de bewerking had geen nieuwe inhoud; haar vervangende tekst wordt getoond)</p>'
        return lead

    def _membership(self, ev: Event) -> str:
        """Said from the sender's side, as a chat client does: "kwam erbij", "nodigde X uit"."""
        c = ev.content
        membership = text_of(c, "membership") or "?"
        target = text_of(c, "target") or ""
        previous = c.get("previous")
        before = previous.get("membership") if isinstance(previous, Mapping) else None
        old_name = previous.get("displayname") if isinstance(previous, Mapping) else None
        own = target == ev.sender
        name = text_of(c, "displayname")
        named = f" (weergavenaam <bdi>{esc_id(name)}</bdi>)" if name is not None else ""
        if membership == "join" and before == "join" and own and name is not None and old_name != name:
            old = f"<bdi>{esc_id(old_name)}</bdi>" if isinstance(old_name, str) else "(geen)"
            out = f"<p>veranderde de weergavenaam van {old} in <bdi>{esc_id(name)}</bdi>"
        elif own:
            verb = _OWN.get(membership, f"lidmaatschap: {esc(membership)}")
            out = f"<p>{verb}{named}"
        else:
            verb = _OTHER.get(membership, "wijzigde het lidmaatschap ({}) van")
            if "{}" in verb:
                verb = verb.format(esc(membership))
            out = f"<p>{verb} {self._who(target)}{' uit' if membership == 'invite' else ''}{named}"
        if (reason := text_of(c, "reason")) is not None:
            out += f" (reden: <bdi>{esc(reason)}</bdi>)"
        return out + "</p>"


#: Membership from the sender's side: their own change, and what they did to someone else.
_OWN = {"join": "kwam erbij", "leave": "verliet het gesprek", "knock": "vroeg om toegang", "invite": "werd uitgenodigd"}
_OTHER = {
    "invite": "nodigde",
    "leave": "verwijderde uit het gesprek:",
    "ban": "verbande",
    "join": "liet toe:",
    "knock": "vroeg om toegang voor",
}


def _encryption_title(enc: Mapping[str, object]) -> str:
    """The decryption evidence in words (a tooltip; the record line has it in full)."""

    def yes(key: str) -> str:
        value = enc.get(key)
        return "ja" if value is True else "nee" if value is False else "onbekend"

    alg = enc.get("algorithm")
    device = enc.get("device_id")
    return (
        f"end-to-end versleuteld ({alg if isinstance(alg, str) else '?'}), apparaat"
        f" {device if isinstance(device, str) else '?'}; apparaatsleutel klopt: {yes('device_key_matches')};"
        f" geverifieerd: {yes('verified')}; doorgestuurde sleutel: {yes('forwarded')}"
    )


def retention(c: Mapping[str, object]) -> str:
    def days(value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value / 86_400_000:g} dagen"
        return "geen"

    return (
        '<p class="warn">Waarschuwing (archiefwet): in dit gesprek is een bewaarbeleid ingesteld'
        f" (max_lifetime {esc(days(c.get('max_lifetime')))}, min_lifetime {esc(days(c.get('min_lifetime')))})."
        " Chatprogramma's kunnen berichten automatisch verwijderen; het archief bewaart wat het vastlegde.</p>"
    )


def li(aid: str, kind: str, seq: int, head: str, body: str) -> str:
    seq_link = f'<a class="seq" href="#{aid}">#{seq}</a>'
    css = _KIND_CLASS.get(kind) or " ".join(_KIND_CLASS.get(k) or esc(k) for k in kind.split(" "))
    return f'<li id="{aid}" class="entry {css}"><div class="head">{head} {seq_link}</div>{body}</li>\n'


_KIND_CLASS = {k: esc(k) for k in (*(kind.value for kind in Kind), "withheld", "note", "deleted", "compact")}


def tombstone(w: Withheld, tz: tzinfo = TIMEZONE) -> str:
    return (
        f'<p class="note">achtergehouden: <bdi>{esc(w.reason)}</bdi>, door <bdi>{esc(w.by)}</bdi>,'
        f" {esc(dutch_time(w.at_ms, tz))} (besluitrecord #{w.decision_seq}); de inhoud staat niet in dit pakket</p>"
    )
