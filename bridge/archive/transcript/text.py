"""Safe text for the transcript: every piece of chat text, id, time and href as it may appear in HTML (pure).

All chat text is hostile. `clean_text` replaces control characters, surrogates and noncharacters
(U+FFFD) and normalises line ends; `esc` escapes the result for text or a double-quoted attribute;
`esc_id` also makes invisible and bidi-control characters visible (names and ids). `anchor` is an
event's fragment id (a hash: no chat text in attributes); `safe_href` accepts only plain relative paths.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

import orjson

from bridge.archive.lookalike import visible

TIMEZONE = ZoneInfo("Europe/Amsterdam")


CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


#: Media types shown inline as <img>; other media are linked. SVG stays linked (keep it simple).
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


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
    s = text if type(text) is str else str(text)
    # Most text has nothing to clean or escape (then both return it as it is): five scans for a character that
    # html.escape replaces cost a tenth of its five replacements and clean_text's call (a property test pins it).
    if not ("&" in s or "<" in s or ">" in s or '"' in s or "'" in s) and s.isprintable():
        return s
    return html.escape(clean_text(s), quote=True)


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


def ref(event_id: str | None) -> str:
    if not event_id:
        return '<span class="note">an unknown event</span>'
    return f'<a href="#{anchor(event_id)}"><bdi class="id">{esc_id(event_id)}</bdi></a>'


def text_of(content: Mapping[str, object], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) else None


def json_details(value: object) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode("utf-8")
    except TypeError:
        text = repr(value)
    return f"<details><summary>inhoud zoals vastgelegd</summary><pre>{esc(text)}</pre></details>"


def span(ms: int) -> str:
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- Dutch dates and times ----------------------------------------------------------------------------

_DAYS = ("maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag")
_MONTHS = (
    "januari", "februari", "maart", "april", "mei", "juni",
    "juli", "augustus", "september", "oktober", "november", "december",
)  # fmt: skip


def local_time(ms: int | None, tz: tzinfo = TIMEZONE) -> datetime | None:
    """Milliseconds since the epoch in `tz`; None for a missing or impossible time (hostile values never raise)."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms // 1000, tz)
    except (OverflowError, OSError, ValueError):
        return None


def dutch_date(t: datetime) -> str:
    """ "dinsdag 14 november 2023"."""
    return f"{_DAYS[t.weekday()]} {t.day} {_MONTHS[t.month - 1]} {t.year}"


def dutch_month(month: str) -> str:
    """ "2023-11" -> "november 2023"; anything else as given."""
    year, _, number = month.partition("-")
    if year.isdigit() and number.isdigit() and 1 <= int(number) <= 12:
        return f"{_MONTHS[int(number) - 1]} {year}"
    return month


_OFFSETS: dict[object, str] = {}


def _offset(t: datetime) -> str:
    off = t.utcoffset()
    shown = _OFFSETS.get(off)
    if shown is None:
        minutes = int(off.total_seconds() // 60) if off is not None else 0
        sign = "+" if minutes >= 0 else "-"
        shown = _OFFSETS[off] = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return shown


def _full(t: datetime) -> str:
    return f"{dutch_date(t)} {t.hour:02d}:{t.minute:02d}:{t.second:02d} ({_offset(t)})"


def dutch_time(ms: int | None, tz: tzinfo = TIMEZONE) -> str:
    """ "dinsdag 14 november 2023 23:13:20 (UTC+01:00)"; a missing or impossible time says so."""
    if ms is None:
        return "onbekende tijd"
    t = local_time(ms, tz)
    if t is None:
        return f"ongeldige tijd ({ms})"
    return _full(t)


def time_html(ms: int | None, tz: tzinfo = TIMEZONE, t: datetime | None = None) -> str:
    """A `<time>` with the clock time shown, the full Dutch date in `title` and the ISO time in `datetime`.
    `t`: `local_time(ms, tz)` when the caller has it already."""
    if t is None:
        t = local_time(ms, tz)
    if t is None:
        return f'<span class="time">{esc(dutch_time(ms, tz))}</span>'
    # `_full(t)` from the ISO text's pieces (years are always four digits there): the Dutch date per day and
    # the offset per ISO suffix are the functions' own results, kept (one entry per day costs two of them).
    iso = t.isoformat()
    day, off = _DAYS_SEEN.get(iso[:10]), _OFFSETS_SEEN.get(iso[19:])
    if day is None:
        if len(_DAYS_SEEN) > _SEEN_MAX:
            _DAYS_SEEN.clear()
        day = _DAYS_SEEN[iso[:10]] = dutch_date(t)
    if off is None:
        if len(_OFFSETS_SEEN) > _SEEN_MAX:
            _OFFSETS_SEEN.clear()
        off = _OFFSETS_SEEN[iso[19:]] = _offset(t)
    return f'<time class="time" datetime="{iso}" title="{day} {iso[11:19]} ({off})">{iso[11:16]}</time>'


_DAYS_SEEN: dict[str, str] = {}
_OFFSETS_SEEN: dict[str, str] = {}
_SEEN_MAX = 4096


# -- emoji ---------------------------------------------------------------------------------------------

#: One emoji as people see it: a flag (two regional indicators) or a pictograph with its variation selector,
#: skin tone and zero-width-joined parts. Only the ranges that need an emoji font; text symbols are left alone.
_PICTO = "\u231a\u231b\u23e9-\u23fa\u2600-\u27bf\u2b50\u2b55\U0001f000-\U0001f1e5\U0001f200-\U0001faff"
_EMOJI = re.compile(
    "[\U0001f1e6-\U0001f1ff]{2}"
    f"|[{_PICTO}][\ufe0f\U0001f3fb-\U0001f3ff]*(?:\u200d[{_PICTO}][\ufe0f\U0001f3fb-\U0001f3ff]*)*"
)


def emoji_name(emoji: str) -> str:
    """The Unicode name(s) of an emoji, lower case ("thumbs up sign"); a flag reads "vlag NL"."""
    if len(emoji) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in emoji):
        return "vlag " + "".join(chr(ord(c) - 0x1F1E6 + ord("A")) for c in emoji)
    names = [unicodedata.name(c, f"U+{ord(c):04X}").lower() for c in emoji if c not in "\u200d\ufe0f"]
    return " + ".join(names)


def emoji_html(escaped: str, named: bool = False) -> str:
    """Escaped text with each emoji in a span carrying its Unicode name (`title`, `aria-label`; the page's
    style shows it after the emoji, small), so a reader without an emoji font still learns what it was and
    the text content stays the chat's own; `named`: the name is in the text too, in brackets (reactions)."""
    if escaped.isascii():
        return escaped

    def wrap(m: re.Match[str]) -> str:
        name = emoji_name(m.group())
        if named:
            return (
                f'<span class="emoji named" role="img" aria-label="{name}" title="{name}">{m.group()}</span>'
                f'<span class="emoji-name"> ({name})</span>'
            )
        return f'<span class="emoji" role="img" aria-label="{name}" title="{name}">{m.group()}</span>'

    return _EMOJI.sub(wrap, escaped)
