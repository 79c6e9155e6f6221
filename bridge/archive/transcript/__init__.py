"""A self-contained HTML transcript of one conversation-month (streaming, escaped).

Modules: `page` (the document, the look-alike notice), `kinds` (one entry per
event kind), `message` (text, media, stickers, payments, contacts, mentions),
`state` (calls, upgrades, pins, identity mappings, other state), `polls`,
`text` (escaping, ids, times, hrefs).

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
  `⟨U+XXXX⟩`); the full sender id is always shown next to a display name. Names
  and ids that look alike are listed once per pair in a notice at the top, and
  the later-appearing id of each pair carries a marker. A Matrix HTML
  body that differs from the plain one is shown through a strict allow-list
  sanitiser (`formatted.sanitise`, no attributes at all), the plain body one
  click away.
* The only URLs are `media` hrefs and `links` to other dossiers' transcripts
  (room upgrades, Signal identity mappings), which the package writer builds
  from safe names; they are still checked to be relative (no scheme, no leading slash or
  backslash), percent-encoded and escaped, else shown unlinked. The document
  has no scripts and a strict Content-Security-Policy.
* No entry is blank: every kind has a body that says something
  (tests/test_archive_kinds_render.py).
* Deterministic: the same arguments give the same bytes. Times come from the
  events and are shown in `tz` (the package's `archive.timezone`; default Europe/Amsterdam).
* Reads like the chat, in Dutch (`lang="nl"`): replies quote their original, reactions are
  gathered under their message, an edited message shows its latest text with every earlier
  version in a `<details>`, deletions stay readable in place, state changes are summarised
  once at the top, emoji carry their Unicode name, the footer gives provenance and how to
  verify, and a print stylesheet opens every `<details>` (docs/transcript.md). Every record
  still has its own entry in log order.
"""

from __future__ import annotations

from bridge.archive.transcript.kinds import TranscriptEntry
from bridge.archive.transcript.page import Provenance, write_transcript
from bridge.archive.transcript.text import CSP, INLINE_IMAGES, TIMEZONE, anchor, clean_text, format_time, safe_href

__all__ = [
    "CSP",
    "INLINE_IMAGES",
    "TIMEZONE",
    "Provenance",
    "TranscriptEntry",
    "anchor",
    "clean_text",
    "format_time",
    "safe_href",
    "write_transcript",
]
