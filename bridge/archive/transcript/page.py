"""The transcript page: head (explanation, look-alike notice, settings), entries in log order, foot (streaming).

`write_transcript` is the one entry point (see the package docstring for the contract); each entry is
rendered by `kinds.Renderer`. The page is Dutch (`lang="nl"`); chat content stays as written.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import BinaryIO

from bridge.archive.lookahead import Lookahead
from bridge.archive.lookalike import Lookalike
from bridge.archive.transcript.kinds import Renderer, TranscriptEntry
from bridge.archive.transcript.state import setting_label
from bridge.archive.transcript.text import (
    CSP,
    TIMEZONE,
    anchor,
    dutch_month,
    dutch_time,
    esc,
    esc_id,
    json_details,
    time_html,
)


@dataclass(frozen=True)
class Provenance:
    """Where the transcript comes from, for its footer: the package's record range [start, end) of the log
    `key_name`, and its end checkpoint (signed at `sealed_ms`). All of it is proven or declared in proof/."""

    key_name: str
    start: int
    end: int
    sealed_ms: int
    status: str


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
    links: Mapping[str, str] | None = None,
    tz: tzinfo = TIMEZONE,
    provenance: Provenance | None = None,
) -> None:
    """Write the transcript (see the module docstring).

    `edited_ids`/`deleted_ids`: ids of events edited/deleted later (a pre-pass
    of the writer), so originals can be marked. If they are Mappings, the value
    is the id of the (last) edit, resp. the deleting sender, used for a link
    resp. to say "deleted by sender". `names`: display names known before the
    month (sender id -> name); membership events in the month update them.
    `lookahead`: the first pass over the same events (polls, edits checked
    against the original's sender, versions, reactions, deletions, settings, participants); without it polls
    show no votes, `edited_ids` is trusted as given and nothing is gathered. `links`: conversation id -> href
    (relative to this transcript) of another conversation's transcript in the same package, for room upgrades.
    `tz`: the archive's timezone (times and day headings). `provenance`: the package, for the footer.
    """
    ahead = lookahead or Lookahead()
    for sender, name in (names or {}).items():
        ahead.participants.add(sender, name)
    found = ahead.participants.lookalikes()
    edited = ahead.edited if ahead.checks_edits else edited_ids
    renderer = Renderer(dict(names or {}), edited, deleted_ids, ahead, links, found, tz)
    top = _head(title, conversation, month, tz) + lookalike_notice(found) + settings_block(ahead, renderer, tz)
    out.write((top + '<main>\n<ol class="log">\n').encode("utf-8"))
    count = 0
    first: int | None = None
    last: int | None = None
    batch: list[str] = []
    for entry in entries:
        batch.append(renderer.entry(entry))
        count += 1
        first = entry.seq if first is None else first
        last = entry.seq
        if len(batch) == _BATCH:
            out.write("".join(batch).encode("utf-8"))
            batch.clear()
    batch.append(renderer.finish())
    batch.append(_foot(count, first, last, provenance, tz))
    out.write("".join(batch).encode("utf-8"))


#: Entries rendered before one write: fewer, larger writes; memory stays bounded (~100 KB per batch).
_BATCH = 256

_EMOJI_FONTS = '"Noto Color Emoji","Apple Color Emoji","Segoe UI Emoji","Segoe UI Symbol"'

_STYLE = f"""
body{{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:50rem;padding:1rem;color:#1b1b1b;background:#fff}}
header{{border-bottom:2px solid #154273;margin-bottom:.8rem}}h1{{font-size:1.4rem;margin:.2rem 0}}
h2{{font-size:1rem;margin:0}}code{{font-size:.9em}}
ol.log{{list-style:none;padding:0;margin:0}}li.entry{{padding:.45rem .6rem;margin:.35rem 0;border-radius:.5rem;
background:#f4f6f9;border:1px solid #e3e7ee}}
li.day{{text-align:center;margin:1rem 0 .5rem;color:#154273}}li.day h2{{display:inline-block;font-size:.85rem;
background:#e8eef6;border-radius:1rem;padding:.1rem .8rem;font-weight:600}}
li.compact,li.membership,li.group,li.state{{background:none;border:none;padding:.1rem .6rem;margin:.1rem 0;
font-size:.88em;color:#444}}
li.compact .head,li.membership .head,li.state .head{{display:inline}}
li.compact p,li.membership p,li.state p{{display:inline;margin:0 0 0 .4rem}}
li.group summary{{cursor:pointer;color:#444}}li.group ol.log{{margin-left:1rem}}
.head{{margin-bottom:.15rem}}.who{{font-weight:600;color:#154273}}.id,.meta,.seq,.time{{color:#5a5a5a;font-size:.82em}}
a.seq{{float:right;text-decoration:none;margin-left:.5rem}}
.body{{white-space:pre-wrap;overflow-wrap:anywhere;margin:.2rem 0}}.note{{color:#555;font-style:italic}}
.mark{{display:inline-block;font-size:.78em;padding:0 .4em;border-radius:.3em;background:#e6e6e6;margin-left:.3em}}
.mark.edited{{background:#fff3c4}}.mark.deleted,.mark.rejected{{background:#fde0dc}}.mark.encrypted{{background:#dff3e4}}
li.deleted{{background:#fff4f2;border-color:#f3c1b9}}li.deleted > .body{{text-decoration:line-through;
text-decoration-color:#c0392b80}}.deleted-note{{color:#8a1f11;font-size:.88em;margin:.2rem 0}}
li.withheld{{background:#eee;color:#333}}
li.retention_change{{background:#fff0e0;border-left:4px solid #d46b08}}
blockquote.reply{{margin:.1rem 0 .3rem;padding:.1rem .5rem;border-left:3px solid #8fa9c9;background:#fff;
font-size:.88em;border-radius:.2rem}}a.quote{{color:#1b1b1b;text-decoration:none}}a.quote:hover{{text-decoration:underline}}
ul.reactions{{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.3rem}}
ul.reactions li{{background:#fff;border:1px solid #d5dbe5;border-radius:1rem;padding:0 .55rem;font-size:.85em}}
.count{{font-weight:600}}s.withdrawn{{color:#777}}.emoji{{font-family:{_EMOJI_FONTS},sans-serif}}
.emoji:not(.named)::after{{content:" (" attr(title) ")";font:.72em system-ui,sans-serif;color:#666}}
.emoji-name{{color:#5a5a5a;font-size:.8em}}details.versions{{font-size:.88em;margin:.2rem 0}}
details.versions ol{{margin:.2rem 0;padding-left:1.2rem}}summary{{cursor:pointer}}
.warn{{font-weight:700;color:#8a3c00}}
.formatted{{white-space:normal}}figure.att{{margin:.3rem 0}}figure.att img{{max-width:100%;max-height:24rem}}
.att{{margin:.2rem 0}}
pre{{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em;background:#f7f7f7;padding:.3rem}}
section.lookalikes{{border:2px solid #d46b08;background:#fff7ec;padding:.3rem .6rem;margin-bottom:1rem}}
details.settings,details.about{{border:1px solid #d5dbe5;border-radius:.4rem;padding:.3rem .6rem;margin:.5rem 0;
background:#fafbfc}}details.settings ol{{padding-left:1.2rem;font-size:.9em}}
footer{{margin-top:1.5rem;border-top:2px solid #154273;color:#333;font-size:.85em}}footer code{{overflow-wrap:anywhere}}
@media print{{
body{{max-width:none;padding:0;font-size:10.5pt;color:#000}}
details::details-content{{content-visibility:visible;display:contents}}
details>summary{{list-style:none;font-weight:600}}details>summary::-webkit-details-marker{{display:none}}
li.entry{{break-inside:avoid;background:none;border:none;border-bottom:1px solid #ccc;border-radius:0}}
li.group,li.group li.entry{{break-inside:auto}}li.day{{break-after:avoid}}li.day h2{{background:none}}
a{{color:#000;text-decoration:none}}
a[href]:not([href^="#"])::after{{content:" (" attr(href) ")";font-size:.8em;color:#333}}
a.seq{{float:none}}header,section.lookalikes,details.settings{{break-after:avoid}}
}}
"""


def _head(title: str, conversation: str, month: str, tz: tzinfo) -> str:
    t = esc(title)
    zone = esc(str(tz))
    return (
        '<!DOCTYPE html>\n<html lang="nl">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP, quote=True)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{t}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<header><h1><bdi>{t}</bdi></h1><p class="meta">Gespreksverslag van <bdi>{esc(dutch_month(month))}</bdi>'
        f" · gesprek <bdi><code>{esc(conversation)}</code></bdi> · tijden in {zone}</p>\n"
        '<details class="about"><summary>Over dit verslag</summary><ul>'
        "<li>Berichten staan in de volgorde waarin het archief ze vastlegde. Het nummer rechts (bijvoorbeeld #12)"
        " is het recordnummer in het log van Chatarchief; nummers slaan over waar records van andere gesprekken"
        " ertussen liggen.</li>"
        "<li>Niets is weggelaten: een bewerkt bericht toont zijn laatste tekst, met elke eerdere versie onder"
        " „bewerkt”; een verwijderd bericht blijft leesbaar, gemarkeerd als verwijderd, met wie het verwijderde en"
        " wanneer; reacties staan onder hun bericht. Bewerkingen, reacties en verwijderingen staan daarnaast als"
        " eigen regel op hun plaats in het log.</li>"
        "<li>Opgemaakte berichten worden veilig getoond (alleen opmaak), de platte tekst staat één klik verder."
        " ⟨U+…⟩ in een naam of id is een onzichtbaar of richting-veranderend teken. Een emoji heeft zijn Unicode-naam"
        " als tooltip.</li>"
        "<li>Dit verslag is afgeleid uit de records in <code>events.jsonl</code> naast dit bestand; hoe u het"
        " controleert staat onderaan.</li></ul></details></header>\n"
    )


def settings_block(ahead: Lookahead, renderer: Renderer, tz: tzinfo) -> str:
    """The conversation's state changes (set-up, name, rules...) summarised in one collapsible block."""
    if not ahead.settings:
        return ""
    rows = "".join(
        f'<li id="inst-{anchor(ev.event_id)}">{time_html(ev.sent_at if ev.sent_at is not None else ev.received_at, tz)}'
        f' {setting_label(ev.content)} — <bdi class="id">{esc_id(ev.sender or "(geen afzender)")}</bdi>'
        f' (<a href="#{anchor(ev.event_id)}">in het log</a>){json_details(ev.content.get("content"))}</li>'
        for ev in ahead.settings
    )
    first = ahead.settings[0]
    n = len(ahead.settings)
    since = esc(dutch_time(first.sent_at if first.sent_at is not None else first.received_at, tz))
    return (
        f'<details class="settings" id="instellingen"><summary>Instellingen van het gesprek: {n}'
        f" {'wijziging' if n == 1 else 'wijzigingen'} (vanaf {since})</summary><ol>{rows}</ol></details>\n"
    )


def lookalike_notice(found: Iterable[Lookalike]) -> str:
    """The one notice at the top listing each look-alike pair once (empty when there is none)."""
    rows = "".join(
        f'<li><bdi class="id">{esc_id(f.subject)}</bdi>'
        + (f' en <bdi class="id">{esc_id(f.other)}</bdi>' if f.other is not None else "")
        + f": <bdi>{esc_id(f.detail)}</bdi></li>"
        for f in found
    )
    if not rows:
        return ""
    return (
        '<section class="lookalikes"><p class="warn">⚠ Deelnemers die op elkaar lijken: deze ids of weergavenamen'
        " zijn met elkaar te verwarren (vergeleken zonder onzichtbare tekens, hoofdletters, breedte of Cyrillische"
        " en Griekse letters die op Latijnse lijken). Of een van beide een bedrieger is, is uit het gesprek niet"
        f" op te maken; berichten van de eerstgenoemde, later verschenen id dragen een ⚠.</p><ul>{rows}</ul>"
        "</section>\n"
    )


#: The package status (`derive.STATUS_*`, English in proof/range.json) in words.
_STATUS = {
    "closed month": "maand afgesloten",
    "open month, interim": "lopende maand, tussentijds pakket",
}


def _foot(count: int, first: int | None, last: int | None, provenance: Provenance | None, tz: tzinfo) -> str:
    if first is None or last is None:
        shown = "<p>Dit verslag bevat geen records.</p>"
    else:
        records = "record" if count == 1 else "records"
        shown = f"<p>Dit verslag toont {count} {records}: recordnummers #{first} tot en met #{last}.</p>"
    pkg = ""
    if provenance is not None:
        p = provenance
        span = f"records {p.start} tot en met {p.end - 1}" if p.end > p.start else "geen records"
        status = esc(_STATUS.get(p.status, p.status))
        pkg = (
            f"<p>Pakket: {span} van het log <bdi><code>{esc(p.key_name)}</code></bdi> ({status})."
            f" Controlepunt: de ondertekende boomwortel van het log na {p.end} records,"
            f" {esc(dutch_time(p.sealed_ms, tz))}, in <code>proof/checkpoint-end.txt</code>; elk record staat als"
            " blad in <code>proof/leaves.txt</code>.</p>"
        )
    return (
        "</ol>\n</main>\n<footer><h2>Herkomst en controle</h2>"
        + shown
        + pkg
        + "<p>Controleren zonder deze software: in de hoofdmap van het pakket controleert"
        " <code>sha256sum -c manifest-sha256.txt</code> elk bestand (ook dit verslag) en"
        " <code>sha256sum -c tagmanifest-sha256.txt</code> de beschrijvende bestanden (BagIt). Met Chatarchief:"
        " <code>chatarchief verify-package &lt;pakketmap&gt; --public-key &lt;sleutel&gt;.pub</code> controleert"
        " de handtekening en de records en leidt dit verslag opnieuw af uit de bewezen records, byte voor byte.</p>"
        "</footer>\n</body>\n</html>\n"
    )
