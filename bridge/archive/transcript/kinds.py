"""How the transcript shows each kind of event: one `Renderer` call per entry (pure).

`Renderer.entry` turns one `TranscriptEntry` into its `<li>`: the sender (full id always shown,
lookalike names and ids flagged), the time, the marks the first pass found (edited, deleted, rejected
edit attempts) and a body for every kind. It remembers only display names (one per sender).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from bridge.archive.lookahead import Lookahead
from bridge.archive.lookalike import Lookalike
from bridge.archive.transcript.message import message_body
from bridge.archive.transcript.polls import poll_html
from bridge.archive.transcript.state import state_html
from bridge.archive.transcript.text import (
    anchor,
    esc,
    esc_id,
    format_time,
    json_details,
    ref,
    text_of,
)
from bridge.events import SIGNAL, Event, Kind
from bridge.policy import Withheld


@dataclass(frozen=True)
class TranscriptEntry:
    """One log record of the conversation-month.

    `event` is None only for a record the writer could not or may not show
    (then `withheld` says why, or a bare note is written). `media` maps an
    attachment's blob id to its href relative to the transcript.
    """

    seq: int
    event: Event | None
    withheld: Withheld | None = None
    media: Mapping[str, str] = field(default_factory=dict)


_MEMBERSHIP = {"join": "joined", "invite": "was invited", "ban": "was banned", "knock": "asked to join"}


class Renderer:
    """Renders one entry at a time; remembers only display names (one per sender)."""

    def __init__(
        self,
        names: dict[str, str],
        edited: Collection[str],
        deleted: Collection[str],
        ahead: Lookahead,
        links: Mapping[str, str] | None = None,
        lookalikes: Iterable[Lookalike] = (),
    ) -> None:
        self._ahead = ahead
        self._marked: dict[str, list[str]] = {}  # later-appearing look-alike id -> its marker texts
        for found in lookalikes:
            self._marked.setdefault(found.subject, []).append(found.why)
        self._links: Mapping[str, str] = links or {}
        self._names = names
        self._edited = edited
        self._deleted = deleted
        self._who_html: dict[str | None, str] = {}  # `_who` per sender, valid while `_names` is unchanged

    def entry(self, entry: TranscriptEntry) -> str:
        ev = entry.event
        if ev is None:
            body = tombstone(entry.withheld) if entry.withheld else '<p class="note">record not shown</p>'
            return li(f"rec-{entry.seq}", "withheld" if entry.withheld else "note", entry.seq, "", body)
        if entry.withheld is not None:  # no content, no sender, no names learnt from it
            return li(anchor(ev.event_id), "withheld", entry.seq, "", tombstone(entry.withheld))
        if ev.kind == Kind.MEMBERSHIP:
            self._learn_name(ev)
        elif ev.source == SIGNAL and ev.sender is not None and (name := text_of(ev.content, "sender_name")):
            self._learn_signal_name(ev.sender, name)
        head = f'{self._who(ev.sender)} <span class="time">{esc(format_time(ev.sent_at or ev.received_at))}</span>'
        return li(anchor(ev.event_id), ev.kind.value, entry.seq, head + self._marks(ev), self._body(ev, entry.media))

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
            return '<span class="who note">(no sender)</span>'
        name = self._names.get(sender)
        if name and name != sender:
            shown = f'<bdi class="who">{esc_id(name)}</bdi> <bdi class="id">{esc_id(sender)}</bdi>'
        else:
            shown = f'<bdi class="who">{esc_id(sender)}</bdi>'
        marks = self._marked.get(sender, ())
        return shown + "".join(f' <span class="warn lookalike">⚠ <bdi>{esc_id(w)}</bdi></span>' for w in marks)

    def _marks(self, ev: Event) -> str:
        out = ""
        eid = ev.event_id
        if eid in self._edited:
            last = self._edited.get(eid) if isinstance(self._edited, Mapping) else None
            see = f", see {ref(last)}" if isinstance(last, str) and last else ", later versions below"
            out += f' <span class="mark edited">edited{see}</span>'
        if eid in self._deleted:
            deleter = self._deleted.get(eid) if isinstance(self._deleted, Mapping) else None
            who = " by sender" if deleter is not None and deleter == ev.sender else ""
            out += f' <span class="mark deleted">deleted{who}; original kept in the archive</span>'
        for attempt in self._ahead.attempts.get(eid, ()):
            out += f' <span class="mark rejected">edit attempt by another sender ignored, see {ref(attempt)}</span>'
        if ev.content.get("redacted_before_capture") is True:
            out += ' <span class="mark deleted">redacted before capture</span>'
        return out

    def _body(self, ev: Event, media: Mapping[str, str]) -> str:
        c = ev.content
        kind = ev.kind
        if kind in (Kind.MESSAGE, Kind.ATTACHMENT, Kind.EDIT):
            return self._edit_lead(ev) + message_body(ev, media, self._name_of)
        if kind == Kind.DELETION:
            reason = text_of(c, "reason")
            why = f" (reason: <bdi>{esc(reason)}</bdi>)" if reason else ""
            return f'<p class="note">deleted {ref(ev.relates_to)}{why}; the original stays in the archive</p>'
        if kind == Kind.REACTION:
            # "removed" is the stored flag; "remove" is how logs written before named it.
            verb = "removed reaction" if c.get("removed") is True or c.get("remove") is True else "reacted"
            return f'<p>{verb} <bdi class="reaction">{esc(text_of(c, "key") or "")}</bdi> to {ref(ev.relates_to)}</p>'
        if kind == Kind.POLL:
            return poll_html(ev, self._ahead, self._who)
        if kind == Kind.MEMBERSHIP:
            return self._membership(ev)
        if kind == Kind.RETENTION_CHANGE:
            return retention(c)
        if kind == Kind.STATE:
            return state_html(ev, self._ahead, self._who, self._links)
        if kind == Kind.UNDECRYPTABLE:
            alg = esc(text_of(c, "algorithm") or "unknown")
            return f'<p class="note">could not be decrypted (algorithm {alg}); the encrypted event is archived</p>'
        if kind == Kind.NOTICE:
            return f'<p class="note">archiver notice</p>{json_details(c)}'
        problem = f": {esc(ev.problem)}" if ev.problem else ""
        raw_type = ev.raw.get("type")
        typ = f" of type <bdi><code>{esc(raw_type)}</code></bdi>" if isinstance(raw_type, str) else ""
        raw_content = ev.raw.get("content", c) if c == {} else c
        return f'<p class="note">unrecognised event{typ}, archived as received{problem}</p>{json_details(raw_content)}'

    def _edit_lead(self, ev: Event) -> str:
        """What an edit says before its text: what it edits, or that it is a rejected attempt."""
        if ev.kind != Kind.EDIT:
            return ""
        lead = f'<p class="note">edit of {ref(ev.relates_to)}</p>'
        if (owner := self._ahead.rejected.get(ev.event_id)) is not None:
            lead = (
                f'<p class="warn">rejected edit attempt: {ref(ev.relates_to)} was sent by'
                f" <bdi>{esc_id(owner)}</bdi>, not by this sender; the original is unchanged"
                " (chat clients ignore edits by anyone but the original sender)</p>"
            )
        if ev.content.get("new_content_missing") is True:
            lead += '<p class="note">(the edit had no new content; its fallback text is shown)</p>'
        return lead

    def _membership(self, ev: Event) -> str:
        c = ev.content
        membership = text_of(c, "membership") or "?"
        target = text_of(c, "target") or ""
        if membership == "leave":
            verb = "left" if target == ev.sender else "was removed"
        else:
            verb = _MEMBERSHIP.get(membership, f"membership {esc(membership)}")
        out = f"<p>{self._who(target)} {verb}"
        if (name := text_of(c, "displayname")) is not None:
            out += f" (display name <bdi>{esc_id(name)}</bdi>)"
        if (reason := text_of(c, "reason")) is not None:
            out += f" (reason: <bdi>{esc(reason)}</bdi>)"
        return out + "</p>"


def retention(c: Mapping[str, object]) -> str:
    def days(value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value / 86_400_000:g} days"
        return "none"

    return (
        '<p class="warn">Compliance warning: a retention policy was set in this conversation'
        f" (max_lifetime {esc(days(c.get('max_lifetime')))}, min_lifetime {esc(days(c.get('min_lifetime')))})."
        " Chat clients may delete messages automatically; the archive keeps what it captured.</p>"
    )


def li(aid: str, kind: str, seq: int, head: str, body: str) -> str:
    seq_link = f'<a class="seq" href="#{aid}">#{seq}</a>'
    css = _KIND_CLASS.get(kind) or esc(kind)
    return f'<li id="{aid}" class="entry {css}"><div class="head">{head} {seq_link}</div>{body}</li>\n'


_KIND_CLASS = {k: esc(k) for k in (*(kind.value for kind in Kind), "withheld", "note")}


def tombstone(w: Withheld) -> str:
    return (
        f'<p class="note">withheld: <bdi>{esc(w.reason)}</bdi>, by <bdi>{esc(w.by)}</bdi>,'
        f" {esc(format_time(w.at_ms))} (decision record #{w.decision_seq}); the content is not in this package</p>"
    )
