"""The transcript page: head, entries in log order, foot (streaming).

`write_transcript` is the one entry point (see the package docstring for the contract); each entry is
rendered by `kinds.Renderer`.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Mapping
from typing import BinaryIO

from bridge.archive.lookahead import Lookahead
from bridge.archive.lookalike import Lookalike
from bridge.archive.transcript.kinds import Renderer, TranscriptEntry
from bridge.archive.transcript.text import CSP, esc, esc_id


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
) -> None:
    """Write the transcript (see the module docstring).

    `edited_ids`/`deleted_ids`: ids of events edited/deleted later (a pre-pass
    of the writer), so originals can be marked. If they are Mappings, the value
    is the id of the (last) edit, resp. the deleting sender, used for a link
    resp. to say "deleted by sender". `names`: display names known before the
    month (sender id -> name); membership events in the month update them.
    `lookahead`: the first pass over the same events (polls, edits checked
    against the original's sender, participants); without it polls show no
    votes and `edited_ids` is trusted as given. `links`: conversation id -> href (relative to this
    transcript) of another conversation's transcript in the same package, for room upgrades.
    """
    ahead = lookahead or Lookahead()
    for sender, name in (names or {}).items():
        ahead.participants.add(sender, name)
    found = ahead.participants.lookalikes()
    edited = ahead.edited if ahead.checks_edits else edited_ids
    renderer = Renderer(dict(names or {}), edited, deleted_ids, ahead, links, found)
    out.write((_head(title, conversation, month) + lookalike_notice(found) + '<ol class="log">\n').encode("utf-8"))
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
section.lookalikes{border:2px solid #d46b08;background:#fff7ec;padding:.3rem .6rem;margin-bottom:1rem}
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
        " invisible or direction-changing character in a name or id.</p></header>\n"
    )


def lookalike_notice(found: Iterable[Lookalike]) -> str:
    """The one notice at the top listing each look-alike pair once (empty when there is none)."""
    rows = "".join(
        f'<li><bdi class="id">{esc_id(f.subject)}</bdi>'
        + (f' and <bdi class="id">{esc_id(f.other)}</bdi>' if f.other is not None else "")
        + f": <bdi>{esc_id(f.detail)}</bdi></li>"
        for f in found
    )
    if not rows:
        return ""
    return (
        '<section class="lookalikes"><p class="warn">⚠ Look-alike participants: these ids or display names can be'
        " mistaken for one another (compared without invisible characters, case, width or Cyrillic/Greek"
        " look-alike letters). Which one, if any, is an impostor cannot be told from the chat; entries of the"
        f" first-named, later-appearing id carry a ⚠ marker.</p><ul>{rows}</ul></section>\n"
    )


def _foot(count: int) -> str:
    return f"</ol>\n<footer><p>{count} records.</p></footer>\n</body>\n</html>\n"
