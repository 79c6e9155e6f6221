"""A self-contained HTML transcript of one conversation-month (streaming, escaped).

Contract:

* `write_transcript` writes one HTML5 document to `out`, entry by entry, in the
  order given (log order); memory does not grow with the number of entries
  (only with the number of distinct senders, for display names).
* All chat text is hostile: bodies, display names, sender and event ids, file
  names, reasons. Every piece goes through `clean_text` (control characters,
  surrogates and noncharacters become U+FFFD, CR/CRLF become LF) and then
  `html.escape(..., quote=True)`; untrusted text sits inside `<bdi>` so a
  right-to-left override cannot reorder the text around it. Names and ids also
  go through `lookalike.visible` (invisible and bidi-control characters shown as
  `⟨U+XXXX⟩`); the full sender id is always shown next to a display name, and a
  name or id that looks like another participant's is flagged. A Matrix HTML
  body that differs from the plain one is shown through a strict allow-list
  sanitiser (`formatted.sanitise`, no attributes at all), the plain body one
  click away.
* The only URLs are `media` hrefs, which the package writer builds from safe
  names; they are still checked to be relative (no scheme, no leading slash or
  backslash), percent-encoded and escaped, else shown unlinked. The document
  has no scripts and a strict Content-Security-Policy.
* Deterministic: the same arguments give the same bytes. Times come from the
  events and are shown in Europe/Amsterdam.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO
from zoneinfo import ZoneInfo

import orjson

from bridge.archive.formatted import sanitise, shows_formatted, strip_reply_fallback
from bridge.archive.lookahead import Lookahead, Poll, answers_of
from bridge.archive.lookalike import visible
from bridge.events import Attachment, Event, Kind
from bridge.policy import Withheld

TIMEZONE = ZoneInfo("Europe/Amsterdam")
CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
#: Media types shown inline as <img>; other media are linked. SVG stays linked (keep it simple).
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


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


#: What `clean_text` replaces: C0/C1 controls but TAB and LF, surrogates, and the 66 noncharacters.
_UNSHOWN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
    + "]"
)


def clean_text(text: str) -> str:
    """The text as shown: CRLF/CR -> LF; other controls (but TAB, LF), surrogates, noncharacters -> U+FFFD."""
    # Fast paths: every character `_UNSHOWN` matches is in category Cc, Cs or Cn (noncharacters are never
    # assigned), and str.isprintable() is False for all of those, so printable text has nothing to replace.
    if text.isprintable():
        return text
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return _UNSHOWN.sub("\ufffd", text)


def esc(text: object) -> str:
    """Clean and escape any value for text or a double-quoted attribute."""
    return html.escape(clean_text(str(text)), quote=True)


def esc_id(text: object) -> str:
    """Like `esc`, for names and ids: invisible and bidi-control characters made visible first."""
    return html.escape(visible(clean_text(str(text))), quote=True)


def anchor(event_id: str) -> str:
    """A stable, safe fragment id for an event (its id hashed: no chat text in attributes)."""
    return "ev-" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def safe_href(href: str) -> str | None:
    """A relative href, percent-encoded; None if it is not a plain relative path."""
    if not href or href.startswith(("/", "\\")) or "\\" in href or any(_control(c) for c in href):
        return None
    first = href.split("/", 1)[0]
    if ":" in first:  # a scheme (javascript:, data:, https:) or a drive letter
        return None
    return urllib.parse.quote(href, safe="/")


def _control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs", "Cf", "Zl", "Zp")


def format_time(ms: int | None) -> str:
    """Milliseconds since the epoch as local Amsterdam time; hostile values never raise."""
    if ms is None:
        return "unknown time"
    try:
        t = datetime.fromtimestamp(ms // 1000, TIMEZONE)
    except (OverflowError, OSError, ValueError):
        return f"invalid time ({ms})"
    if t.year < 1000:  # strftime's %Y pads these or not depending on the C library: keep its output
        return t.strftime("%Y-%m-%d %H:%M:%S %Z")
    # The same string as strftime("%Y-%m-%d %H:%M:%S %Z"), without its cost (it dominated per-entry time).
    return f"{t.year}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.tzname()}"


def write_transcript(
    out: BinaryIO,
    *,
    title: str,
    conversation: str,
    month: str,
    entries: Iterable[TranscriptEntry],
    edited_ids: Collection[str] = frozenset(),
    deleted_ids: Collection[str] = frozenset(),
    names: Mapping[str, str] | None = None,
    lookahead: Lookahead | None = None,
) -> None:
    """Write the transcript (see the module docstring).

    `edited_ids`/`deleted_ids`: ids of events edited/deleted later (a pre-pass
    of the writer), so originals can be marked. If they are Mappings, the value
    is the id of the (last) edit, resp. the deleting sender, used for a link
    resp. to say "deleted by sender". `names`: display names known before the
    month (sender id -> name); membership events in the month update them.
    `lookahead`: the first pass over the same events (polls, edits checked
    against the original's sender, participants); without it polls show no
    votes and `edited_ids` is trusted as given.
    """
    ahead = lookahead or Lookahead()
    for sender, name in (names or {}).items():
        ahead.participants.add(sender, name)
    renderer = _Renderer(dict(names or {}), ahead.edited if ahead.checks_edits else edited_ids, deleted_ids, ahead)
    out.write(_head(title, conversation, month).encode("utf-8"))
    count = 0
    batch: list[str] = []
    for entry in entries:
        batch.append(renderer.entry(entry))
        count += 1
        if len(batch) == _BATCH:
            out.write("".join(batch).encode("utf-8"))
            batch.clear()
    batch.append(_foot(count))
    out.write("".join(batch).encode("utf-8"))


#: Entries rendered before one write: fewer, larger writes; memory stays bounded (~100 KB per batch).
_BATCH = 256


def _attachment_html(att: Attachment, media: Mapping[str, str]) -> str:
    name = esc(att.filename or "(no file name)")
    mtype = att.media_type or ""
    href = safe_href(media.get(att.blob_id, "")) if att.blob_id else None
    size = esc(att.size if att.size is not None else "?")
    detail = f'<span class="meta">{esc(mtype or "unknown type")}, {size} bytes</span>'
    if href is None:
        why = "not in this package" if att.status == "stored" else f"{att.status}"
        if att.error:
            why += f": {att.error}"
        return f'<div class="att missing"><bdi>{name}</bdi> {detail} <span class="note">({esc(why)})</span></div>'
    link = html.escape(href, quote=True)
    if mtype in INLINE_IMAGES:
        img = f'<img src="{link}" alt="{name}" loading="lazy">'
        caption = f"<figcaption><bdi>{name}</bdi> {detail}</figcaption>"
        return f'<figure class="att"><a href="{link}">{img}</a>{caption}</figure>'
    return f'<div class="att"><a href="{link}"><bdi>{name}</bdi></a> {detail}</div>'


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:52rem;padding:1rem;color:#1b1b1b;background:#fff}
header{border-bottom:2px solid #154273;margin-bottom:1rem}h1{font-size:1.4rem;margin:.2rem 0}
ol.log{list-style:none;padding:0;margin:0}li.entry{border-bottom:1px solid #e3e3e3;padding:.5rem 0}
.who{font-weight:600}.id,.meta,.seq{color:#555;font-size:.85em}.time{color:#555;font-size:.85em}
.body{white-space:pre-wrap;overflow-wrap:anywhere;margin:.2rem 0}.note{color:#555;font-style:italic}
.mark{display:inline-block;font-size:.8em;padding:0 .4em;border-radius:.3em;background:#eee;margin-left:.3em}
.edited .mark,.mark.edited{background:#fff3c4}.mark.deleted{background:#fde0dc}
li.deletion,li.deleted{background:#fff7f6}li.withheld{background:#f2f2f2;color:#333}
li.retention_change{background:#fff0e0;border-left:4px solid #d46b08;padding-left:.5rem}
.warn{font-weight:700;color:#8a3c00}.mark.rejected{background:#fde0dc}
.formatted{white-space:normal}figure.att{margin:.3rem 0}figure.att img{max-width:100%;max-height:24rem}
.att{margin:.2rem 0}pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em;background:#f7f7f7;padding:.3rem}
footer{margin-top:1rem;color:#555;font-size:.85em}
"""


def _head(title: str, conversation: str, month: str) -> str:
    t = esc(title)
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP, quote=True)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{t}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<header><h1><bdi>{t}</bdi></h1><p class="meta">Conversation <bdi><code>{esc(conversation)}</code></bdi>,'
        f" month <bdi>{esc(month)}</bdi>. Times are Europe/Amsterdam. Formatted messages are shown"
        " sanitised, their plain text one click away; edits and deletions keep the original; ⟨U+…⟩ marks an"
        ' invisible or direction-changing character in a name or id.</p></header>\n<ol class="log">\n'
    )


def _foot(count: int) -> str:
    return f"</ol>\n<footer><p>{count} records.</p></footer>\n</body>\n</html>\n"


_MEMBERSHIP = {"join": "joined", "invite": "was invited", "ban": "was banned", "knock": "asked to join"}


class _Renderer:
    """Renders one entry at a time; remembers only display names (one per sender)."""

    def __init__(
        self, names: dict[str, str], edited: Collection[str], deleted: Collection[str], ahead: Lookahead
    ) -> None:
        self._ahead = ahead
        self._names = names
        self._edited = edited
        self._deleted = deleted
        self._who_html: dict[str | None, str] = {}  # `_who` per sender, valid while `_names` is unchanged

    def entry(self, entry: TranscriptEntry) -> str:
        ev = entry.event
        if ev is None:
            body = _tombstone(entry.withheld) if entry.withheld else '<p class="note">record not shown</p>'
            return _li(f"rec-{entry.seq}", "withheld" if entry.withheld else "note", entry.seq, "", body)
        if entry.withheld is not None:  # no content, no sender, no names learnt from it
            return _li(anchor(ev.event_id), "withheld", entry.seq, "", _tombstone(entry.withheld))
        if ev.kind == Kind.MEMBERSHIP:
            self._learn_name(ev)
        head = f'{self._who(ev.sender)} <span class="time">{esc(format_time(ev.sent_at or ev.received_at))}</span>'
        return _li(anchor(ev.event_id), ev.kind.value, entry.seq, head + self._marks(ev), self._body(ev, entry.media))

    def _learn_name(self, ev: Event) -> None:
        target, name = _text(ev.content, "target"), _text(ev.content, "displayname")
        if target is None:
            return
        if name and _text(ev.content, "membership") == "join":
            self._names[target] = name
            self._who_html.pop(target, None)
        elif _text(ev.content, "membership") in ("leave", "ban"):
            self._names.pop(target, None)
            self._who_html.pop(target, None)

    def _who(self, sender: str | None) -> str:
        shown = self._who_html.get(sender)
        if shown is None:
            shown = self._who_html[sender] = self._who_uncached(sender)
        return shown

    def _who_uncached(self, sender: str | None) -> str:
        if sender is None:
            return '<span class="who note">(no sender)</span>'
        participants = self._ahead.participants
        name = self._names.get(sender)
        warnings = [w for w in (participants.id_warning(sender),) if w]
        if name and name != sender:
            shown = f'<bdi class="who">{esc_id(name)}</bdi> <bdi class="id">{esc_id(sender)}</bdi>'
            if (why := participants.name_warning(sender, name)) is not None:
                warnings.insert(0, why)
        else:
            shown = f'<bdi class="who">{esc_id(sender)}</bdi>'
        return shown + "".join(f' <span class="warn lookalike">⚠ <bdi>{esc_id(w)}</bdi></span>' for w in warnings)

    def _marks(self, ev: Event) -> str:
        out = ""
        eid = ev.event_id
        if eid in self._edited:
            last = self._edited.get(eid) if isinstance(self._edited, Mapping) else None
            see = f", see {_ref(last)}" if isinstance(last, str) and last else ", later versions below"
            out += f' <span class="mark edited">edited{see}</span>'
        if eid in self._deleted:
            deleter = self._deleted.get(eid) if isinstance(self._deleted, Mapping) else None
            who = " by sender" if deleter is not None and deleter == ev.sender else ""
            out += f' <span class="mark deleted">deleted{who}; original kept in the archive</span>'
        for attempt in self._ahead.attempts.get(eid, ()):
            out += f' <span class="mark rejected">edit attempt by another sender ignored, see {_ref(attempt)}</span>'
        if ev.content.get("redacted_before_capture") is True:
            out += ' <span class="mark deleted">redacted before capture</span>'
        return out

    def _body(self, ev: Event, media: Mapping[str, str]) -> str:
        c = ev.content
        kind = ev.kind
        if kind in (Kind.MESSAGE, Kind.ATTACHMENT, Kind.EDIT):
            lead = ""
            if kind == Kind.EDIT:
                lead = f'<p class="note">edit of {_ref(ev.relates_to)}</p>'
                if (owner := self._ahead.rejected.get(ev.event_id)) is not None:
                    lead = (
                        f'<p class="warn">rejected edit attempt: {_ref(ev.relates_to)} was sent by'
                        f" <bdi>{esc_id(owner)}</bdi>, not by this sender; the original is unchanged"
                        " (chat clients ignore edits by anyone but the original sender)</p>"
                    )
                if c.get("new_content_missing") is True:
                    lead += '<p class="note">(the edit had no new content; its fallback text is shown)</p>'
            if (reply := _text(c, "reply_to")) is not None:
                lead += f'<p class="note">in reply to {_ref(reply)}</p>'
            if (root := _text(c, "thread_root")) is not None:
                lead += f'<p class="note">in thread {_ref(root)}</p>'
            text = _message_text(c) + _message_marks(c)
            if (geo := _text(c, "geo_uri")) is not None:
                text += f'<p class="meta">location <bdi>{esc(geo)}</bdi></p>'
            if ev.attachments:
                text += "".join(_attachment_html(a, media) for a in ev.attachments)
            return lead + text
        if kind == Kind.DELETION:
            reason = _text(c, "reason")
            why = f" (reason: <bdi>{esc(reason)}</bdi>)" if reason else ""
            return f'<p class="note">deleted {_ref(ev.relates_to)}{why}; the original stays in the archive</p>'
        if kind == Kind.REACTION:
            # "removed" is the stored flag; "remove" is how logs written before named it.
            verb = "removed reaction" if c.get("removed") is True or c.get("remove") is True else "reacted"
            return f'<p>{verb} <bdi class="reaction">{esc(_text(c, "key") or "")}</bdi> to {_ref(ev.relates_to)}</p>'
        if kind == Kind.POLL:
            return self._poll(ev)
        if kind == Kind.MEMBERSHIP:
            return self._membership(ev)
        if kind == Kind.RETENTION_CHANGE:
            return _retention(c)
        if kind == Kind.STATE:
            what = f"<bdi><code>{esc(_text(c, 'type') or '?')}</code></bdi>"
            key = _text(c, "state_key")
            what += f" (state key <bdi><code>{esc(key)}</code></bdi>)" if key else ""
            return f"<p>changed conversation state {what}</p>{_json_details(c.get('content'))}"
        if kind == Kind.UNDECRYPTABLE:
            alg = esc(_text(c, "algorithm") or "unknown")
            return f'<p class="note">could not be decrypted (algorithm {alg}); the encrypted event is archived</p>'
        if kind == Kind.NOTICE:
            return f'<p class="note">archiver notice</p>{_json_details(c)}'
        problem = f": {esc(ev.problem)}" if ev.problem else ""
        raw_type = ev.raw.get("type")
        typ = f" of type <bdi><code>{esc(raw_type)}</code></bdi>" if isinstance(raw_type, str) else ""
        raw_content = ev.raw.get("content", c) if c == {} else c
        return f'<p class="note">unrecognised event{typ}, archived as received{problem}</p>{_json_details(raw_content)}'

    def _poll(self, ev: Event) -> str:
        poll = ev.content.get("poll")
        if not isinstance(poll, dict):
            return '<p class="note">poll event without poll content, archived as received</p>'
        action = poll.get("action")
        start = self._ahead.polls.get(ev.event_id if action == "start" else ev.relates_to or "")
        if action == "start":
            return _poll_start(poll, start, self._who)
        if action == "vote":
            return self._vote(ev, poll, start)
        if action == "end":
            result = self._ahead.results.get(ev.event_id)
            text = f' <bdi dir="auto">{esc(poll["text"])}</bdi>' if isinstance(poll.get("text"), str) else ""
            out = f"<p>ended poll {_ref(ev.relates_to)}{text}</p>"
            if result is None:
                return out + '<p class="note">(not the first end of a poll started this month: no result here)</p>'
            rows = "".join(f"<li><bdi>{esc(a.text)}</bdi>: {n}</li>" for a, n in result)
            return out + f'<p>Result (last vote of each sender before the end):</p><ul class="tally">{rows}</ul>'
        return f'<p class="note">poll event <bdi>{esc(action)}</bdi>, archived as received</p>'

    def _vote(self, ev: Event, poll: Mapping[str, object], start: Poll | None) -> str:
        chosen = poll.get("answers")
        ids = [a for a in chosen if isinstance(a, str)] if isinstance(chosen, list) else []
        shown = ", ".join(_answer(start, a) for a in ids) or "no answer (vote withdrawn)"
        out = f"<p>voted {shown} in poll {_ref(ev.relates_to)}</p>"
        note = self._ahead.votes.get(ev.event_id)
        if start is None:
            return out + '<p class="note">(the poll was not started this month: its answers are not shown)</p>'
        if note is not None and note.late:
            return out + '<p class="note">after the poll ended: not counted</p>'
        if note is not None and note.replaces is not None:
            out += f'<p class="note">replaces this sender\'s earlier vote {_ref(note.replaces)}</p>'
        return out

    def _membership(self, ev: Event) -> str:
        c = ev.content
        membership = _text(c, "membership") or "?"
        target = _text(c, "target") or ""
        if membership == "leave":
            verb = "left" if target == ev.sender else "was removed"
        else:
            verb = _MEMBERSHIP.get(membership, f"membership {esc(membership)}")
        out = f"<p>{self._who(target)} {verb}"
        if (name := _text(c, "displayname")) is not None:
            out += f" (display name <bdi>{esc_id(name)}</bdi>)"
        if (reason := _text(c, "reason")) is not None:
            out += f" (reason: <bdi>{esc(reason)}</bdi>)"
        return out + "</p>"


def _message_text(c: Mapping[str, object]) -> str:
    """The body: formatted (sanitised) with the plain text one click away, or the plain text."""
    reply = isinstance(c.get("reply_to"), str)
    body = _text(c, "body") or ""
    if reply:  # the quoted fallback repeats the message replied to, which has its own entry
        body = strip_reply_fallback(body)
    formatted = shows_formatted(dict(c))
    if formatted is None:
        return f'<div class="body" dir="auto">{esc(body)}</div>' if body else ""
    return (
        f'<div class="body formatted" dir="auto">{sanitise(formatted, reply)}</div>'
        f'<details><summary>plain text as sent</summary><div class="body plain" dir="auto">{esc(body)}</div>'
        "</details>"
    )


def _message_marks(c: Mapping[str, object]) -> str:
    marks = []
    if c.get("voice") not in (None, False):
        duration = _duration(c)
        marks.append("voice message" + (f", {duration}" if duration else ""))
    if c.get("view_once") is True:
        marks.append("view once: the recipient could open it once")
    seconds = c.get("expires_in_seconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        marks.append(f"disappearing: clients delete it {_span(seconds * 1000)} after reading")
    return "".join(f'<p class="meta marker">{esc(m)}</p>' for m in marks)


def _duration(c: Mapping[str, object]) -> str | None:
    """The duration of a voice message in ms: `duration_ms`, `voice.duration` or `info.duration`."""
    for holder, key in ((c, "duration_ms"), (c.get("voice"), "duration"), (c.get("info"), "duration")):
        value = holder.get(key) if isinstance(holder, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return _span(value)
    return None


def _span(ms: int) -> str:
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _answer(start: Poll | None, answer_id: str) -> str:
    text = start.answer_text(answer_id) if start is not None else None
    if text is None:
        return f"<bdi><code>{esc_id(answer_id)}</code></bdi>" + (" (not an answer of this poll)" if start else "")
    return f"“<bdi>{esc(text)}</bdi>”"


def _poll_start(poll: Mapping[str, object], start: Poll | None, who: Callable[[str | None], str]) -> str:
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
        f"<li>{who(sender)}: {', '.join(_answer(start, a) for a in chosen) or 'no answer'} ({_ref(vote)})</li>"
        for sender, (vote, chosen) in sorted(start.votes.items())
    )
    when = "at its end" if start.end_id else "at the end of this month (the poll was not ended)"
    return out + f'<p>Votes {when}, each voter\'s last vote:</p><ul class="votes">{rows}</ul>'


def _li(aid: str, kind: str, seq: int, head: str, body: str) -> str:
    seq_link = f'<a class="seq" href="#{aid}">#{seq}</a>'
    css = _KIND_CLASS.get(kind) or esc(kind)
    return f'<li id="{aid}" class="entry {css}"><div class="head">{head} {seq_link}</div>{body}</li>\n'


_KIND_CLASS = {k: esc(k) for k in (*(kind.value for kind in Kind), "withheld", "note")}


def _tombstone(w: Withheld) -> str:
    return (
        f'<p class="note">withheld: <bdi>{esc(w.reason)}</bdi>, by <bdi>{esc(w.by)}</bdi>,'
        f" {esc(format_time(w.at_ms))} (decision record #{w.decision_seq}); the content is not in this package</p>"
    )


def _ref(event_id: str | None) -> str:
    if not event_id:
        return '<span class="note">an unknown event</span>'
    return f'<a href="#{anchor(event_id)}"><bdi class="id">{esc_id(event_id)}</bdi></a>'


def _text(content: Mapping[str, object], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) else None


def _retention(c: Mapping[str, object]) -> str:
    def days(value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value / 86_400_000:g} days"
        return "none"

    return (
        '<p class="warn">Compliance warning: a retention policy was set in this conversation'
        f" (max_lifetime {esc(days(c.get('max_lifetime')))}, min_lifetime {esc(days(c.get('min_lifetime')))})."
        " Chat clients may delete messages automatically; the archive keeps what it captured.</p>"
    )


def _json_details(value: object) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode("utf-8")
    except TypeError:
        text = repr(value)
    return f"<details><summary>content</summary><pre>{esc(text)}</pre></details>"
