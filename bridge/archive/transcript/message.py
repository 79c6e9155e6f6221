"""How the transcript shows a message, attachment or edit's content: text, marks, media, stickers,
payments and shared contacts (pure). An entry with none of these says it is empty, never shows blank.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping

from bridge.archive.formatted import sanitise, shows_formatted, strip_reply_fallback
from bridge.archive.lookalike import visible
from bridge.archive.transcript.text import (
    INLINE_IMAGES,
    clean_text,
    emoji_html,
    esc,
    esc_id,
    ref,
    safe_href,
    span,
    text_of,
)
from bridge.events import SIGNAL, Attachment, Event


def _ref_only(event_id: str | None) -> str:
    return ref(event_id)


def message_body(
    ev: Event,
    media: Mapping[str, str],
    name_of: Callable[[str], str] = str,
    quote: Callable[[str | None], str] = _ref_only,
) -> str:
    """Everything a message-like entry shows after the edit lead: relations, text, marks, extras, media.

    `name_of`: the display name for a user id, used for Signal mentions. `quote`: how a reply shows the
    message it answers (a snippet with a link to it; by default a link with its id)."""
    c = ev.content
    if not ev.attachments and c.keys() <= PLAIN_KEYS:  # the common case: what the general path gives, sooner
        body = c.get("body")
        if isinstance(body, str) and body:
            return f'<div class="body" dir="auto">{emoji_html(esc(body))}</div>'
        return EMPTY
    return general_body(ev, media, name_of, quote)


def general_body(
    ev: Event,
    media: Mapping[str, str],
    name_of: Callable[[str], str] = str,
    quote: Callable[[str | None], str] = _ref_only,
) -> str:
    """`message_body` without its fast path (a property test pins that the two agree)."""
    c = ev.content
    if ev.source == SIGNAL and isinstance(mentions := c.get("mentions"), list) and isinstance(c.get("body"), str):
        c = {**c, "body": with_mentions(c["body"], mentions, name_of)}
    lead = ""
    if (reply := text_of(c, "reply_to")) is not None:
        lead += f'<blockquote class="reply"><span class="note">antwoord op</span> {quote(reply)}</blockquote>'
    if (root := text_of(c, "thread_root")) is not None:
        lead += f'<p class="note">in draad {quote(root)}</p>'
    if (received := text_of(c, "conversation_as_received")) is not None:
        lead += f'<p class="note">binnengekomen als gesprek <bdi><code>{esc_id(received)}</code></bdi></p>'
    only_name = len(ev.attachments) == 1 and c.get("body") == ev.attachments[0].filename and "format" not in c
    said = "" if only_name else message_text(c)  # a file's body that is just its name is shown once, as the file
    text = (sticker_html(c) if c.get("sticker") is True else said) + message_marks(c) + extras_html(c)
    if (geo := text_of(c, "geo_uri")) is not None:
        text += f'<p class="meta">locatie <bdi>{esc(geo)}</bdi></p>'
    if ev.attachments:
        captions = c.get("captions")
        shown = captions if isinstance(captions, list) else []
        for i, att in enumerate(ev.attachments):
            caption = shown[i] if i < len(shown) and isinstance(shown[i], str) else None
            text += attachment_html(att, media, caption)
    return lead + (text or EMPTY)


#: A message whose content has only these keys and no attachments is its body alone (or `EMPTY`).
PLAIN_KEYS = frozenset(("msgtype", "body"))
EMPTY = '<p class="note">(leeg bericht: geen tekst, media of andere inhoud; gearchiveerd zoals ontvangen)</p>'


def with_mentions(body: str, mentions: list[object], name_of: Callable[[str], str]) -> str:
    """A Signal body with each mention's placeholder (U+FFFC at `start`, `length` UTF-16 units, as
    signal-cli's JsonMention gives them) replaced by "@" and the person's name, else their id. Mentions that
    overlap or lie outside the body are left as sent."""
    units = body.encode("utf-16-le", "surrogatepass")
    out: list[str] = []
    pos = 0
    spans: list[tuple[int, int, str]] = []
    for m in mentions:
        if not isinstance(m, Mapping):
            continue
        start, length = m.get("start"), m.get("length")
        who = next((v for k in ("uuid", "number", "name") if isinstance(v := m.get(k), str) and v), None)
        if isinstance(start, int) and isinstance(length, int) and not isinstance(start, bool) and who is not None:
            spans.append((start, length, who))
    for start, length, who in sorted(spans):
        if start < pos or length < 0 or isinstance(length, bool) or (start + length) * 2 > len(units):
            continue
        out.append(units[pos * 2 : start * 2].decode("utf-16-le", "replace"))
        out.append("@" + visible(clean_text(name_of(who))))
        pos = start + length
    out.append(units[pos * 2 :].decode("utf-16-le", "replace"))
    return "".join(out)


def sticker_html(c: Mapping[str, object]) -> str:
    """A Matrix sticker (`sticker: true`): its description; the image is its attachment."""
    return (
        f'<p class="meta marker">sticker: <bdi>{emoji_html(esc(text_of(c, "body") or "(geen omschrijving)"))}</bdi></p>'
    )


def extras_html(c: Mapping[str, object]) -> str:
    """Signal's message parts that have no text of their own: sticker, payment, shared contacts."""
    out = ""
    if isinstance(sticker := c.get("sticker"), Mapping):
        emoji = sticker.get("emoji")
        pack, number = sticker.get("pack_id"), sticker.get("sticker_id")
        out += (
            '<p class="meta marker">sticker'
            + (f" <bdi>{emoji_html(esc(emoji), named=True)}</bdi>" if isinstance(emoji, str) and emoji else "")
            + f" uit pakket <bdi><code>{esc_id(pack if isinstance(pack, str) else '?')}</code></bdi>,"
            + f" sticker #{esc(number if isinstance(number, int) else '?')}</p>"
        )
    if isinstance(payment := c.get("payment"), Mapping):
        note, amount = payment.get("note"), payment.get("amount")
        out += '<p class="meta marker">betaling (MobileCoin)'
        out += f": notitie “<bdi>{esc(note)}</bdi>”" if isinstance(note, str) and note else ", geen notitie"
        if isinstance(amount, (str, int)) and not isinstance(amount, bool):
            out += f"; bedrag <bdi>{esc(amount)}</bdi></p>"
        else:
            out += (
                "; bedrag niet vastgelegd (signal-cli geeft het niet: het zit in het versleutelde ontvangstbewijs)</p>"
            )
    contacts = c.get("contacts")
    for contact in contacts if isinstance(contacts, list) else []:
        if isinstance(contact, Mapping):
            out += _contact_html(contact)
    return out


def _contact_html(contact: Mapping[str, object]) -> str:
    name = contact.get("name")
    parts = [f"<bdi>{esc(name if isinstance(name, str) and name else '(geen naam)')}</bdi>"]
    for key, label in (("numbers", "nummer"), ("emails", "e-mail")):
        values = contact.get(key)
        for value in values if isinstance(values, list) else []:
            if isinstance(value, str):
                parts.append(f"{label} <bdi>{esc(value)}</bdi>")
    if isinstance(org := contact.get("organization"), str) and org:
        parts.append(f"organisatie <bdi>{esc(org)}</bdi>")
    return f'<p class="meta marker">gedeeld contact: {", ".join(parts)}</p>'


def attachment_html(att: Attachment, media: Mapping[str, str], caption: str | None = None) -> str:
    name = esc(att.filename or "(geen bestandsnaam)")
    mtype = att.media_type or ""
    href = safe_href(media.get(att.blob_id, "")) if att.blob_id else None
    size = esc(att.size if att.size is not None else "?")
    detail = f'<span class="meta">{esc(mtype or "onbekend type")}, {size} bytes</span>'
    said = f'<div class="body caption" dir="auto">{esc(caption)}</div>' if caption else ""
    if href is None:
        why = "niet in dit pakket" if att.status == "stored" else f"{_STATUS.get(att.status, att.status)}"
        if att.error:
            why += f": {att.error}"
        return (
            f'<div class="att missing"><bdi>{name}</bdi> {detail} <span class="note">({esc(why)})</span></div>' + said
        )
    link = html.escape(href, quote=True)
    if mtype in INLINE_IMAGES:
        img = f'<img src="{link}" alt="{name}" loading="lazy">'
        figcaption = f"<figcaption><bdi>{name}</bdi> {detail}</figcaption>"
        return f'<figure class="att"><a href="{link}">{img}</a>{figcaption}</figure>' + said
    return f'<div class="att"><a href="{link}"><bdi>{name}</bdi></a> {detail}</div>' + said


#: Attachment statuses in words (others as stored).
_STATUS = {
    "failed": "ophalen mislukt",
    "oversized": "groter dan de ingestelde grens, niet opgehaald",
    "pending": "nog niet opgehaald",
}


def message_text(c: Mapping[str, object]) -> str:
    """The body: formatted (sanitised) with the plain text one click away, or the plain text."""
    reply = isinstance(c.get("reply_to"), str)
    body = text_of(c, "body") or ""
    if reply:  # the quoted fallback repeats the message replied to, which has its own entry
        body = strip_reply_fallback(body)
    formatted = shows_formatted(dict(c))
    if formatted is None:
        return f'<div class="body" dir="auto">{emoji_html(esc(body))}</div>' if body else ""
    return (
        f'<div class="body formatted" dir="auto">{emoji_html(sanitise(formatted, reply))}</div>'
        f'<details><summary>platte tekst zoals verstuurd</summary><div class="body plain" dir="auto">'
        f"{emoji_html(esc(body))}</div></details>"
    )


def message_marks(c: Mapping[str, object]) -> str:
    marks = []
    if c.get("voice") not in (None, False):
        duration = duration_text(c)
        marks.append("spraakbericht" + (f", {duration}" if duration else ""))
    if c.get("view_once") is True:
        marks.append("eenmalig bekijken: de ontvanger kon het één keer openen")
    seconds = c.get("expires_in_seconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        marks.append(f"verdwijnend: chatprogramma's verwijderen het {span(seconds * 1000)} na lezen")
    return "".join(f'<p class="meta marker">{esc(m)}</p>' for m in marks)


def duration_text(c: Mapping[str, object]) -> str | None:
    """The duration of a voice message in ms: `duration_ms`, `voice.duration` or `info.duration`."""
    for holder, key in ((c, "duration_ms"), (c.get("voice"), "duration"), (c.get("info"), "duration")):
        value = holder.get(key) if isinstance(holder, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return span(value)
    return None
