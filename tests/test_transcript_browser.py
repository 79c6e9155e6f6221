"""The transcript in a real browser: headless Chromium renders the demo's two rooms (encrypted and plain),
takes screenshots, dumps the DOM it built and prints to PDF; the page must read like the chat, in Dutch,
and printing must lose nothing that is collapsed on screen.

The records are the demo's own (`tests/fixtures/transcript/demo-*.jsonl`: the `events.jsonl` lines of a
`chatarchief demo` package, Matrix rooms on a real Synapse), rendered the way the package writer does (the
first pass over the same lines, then the entries). Needs Debian's `chromium` and `pdftotext` (poppler-utils;
`.ci/run` installs both). `UPDATE_SCREENSHOT=1` also writes the encrypted room's screenshot to
`docs/img/transcript.png` (the README's picture).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import lxml.html
import pytest

from bridge.archive.lookahead import Lookahead
from bridge.archive.render import DossierLine
from bridge.archive.transcript import Provenance, TranscriptEntry, anchor, write_transcript

FIXTURES = Path(__file__).parent / "fixtures" / "transcript"
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img" / "transcript.png"
ROOMS = {"demo-encrypted": "Overleg Kamerbrief (versleuteld) (2026-12)", "demo-plain": "Persberichten (2026-12)"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: apt-get install -y chromium poppler-utils (.ci/run does)"
    return path


def _lines(name: str) -> list[DossierLine]:
    return [DossierLine.parse(raw) for raw in (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()]


def render_room(name: str, out_dir: Path) -> tuple[Path, list[DossierLine]]:
    """The room's transcript as the package writer makes it (first pass, media hrefs, provenance)."""
    lines = _lines(name)
    events = [line.event for line in lines if line.event is not None]
    media = {
        att.blob_id: f"media/{line.seq}-{att.filename}"
        for line in lines
        if line.event
        for att in line.event.attachments
        if att.blob_id
    }
    out = io.BytesIO()
    write_transcript(
        out,
        title=ROOMS[name],
        conversation=events[0].conversation,
        month="2026-12",
        entries=(TranscriptEntry(line.seq, line.event, line.withheld, media) for line in lines),
        lookahead=Lookahead.of(events),
        provenance=Provenance("demo", 0, 40, events[-1].received_at, "open month, interim"),
    )
    page = out_dir / name / "transcript.html"
    page.parent.mkdir(parents=True)
    page.write_bytes(out.getvalue())
    return page, lines


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _tool("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def png_size_and_colours(png: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct byte values of the decoded image (a blank page has ~2)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def dom(tmp: Path, page: Path) -> Any:
    """The document as Chromium built it (after parsing and CSP), as lxml."""
    return lxml.html.document_fromstring(chromium(tmp, "--dump-dom", page.as_uri()).stdout)


def words(el: Any) -> str:
    return " ".join(el.text_content().split())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[DossierLine]]]:
    out = tmp_path_factory.mktemp("transcripts")
    return {name: render_room(name, out) for name in ROOMS}


def seq_of(lines: list[DossierLine], kind: str, nth: int = 0) -> DossierLine:
    return [line for line in lines if line.event is not None and line.event.kind.value == kind][nth]


@pytest.mark.parametrize("name", list(ROOMS))
def test_screenshot_shows_the_conversation(name: str, rendered: dict[str, Any], tmp_path: Path) -> None:
    """Chromium renders the page to a non-blank screenshot of the requested size."""
    page, _ = rendered[name]
    shot = tmp_path / f"{name}.png"
    chromium(tmp_path, "--window-size=1000,1150", f"--screenshot={shot}", page.as_uri())
    width, height, colours = png_size_and_colours(shot.read_bytes())
    assert (width, height) == (1000, 1150) and colours > 50
    if name == "demo-encrypted" and os.environ.get("UPDATE_SCREENSHOT") == "1":
        DOCS_IMG.parent.mkdir(exist_ok=True)
        DOCS_IMG.write_bytes(shot.read_bytes())


@pytest.mark.parametrize("name", list(ROOMS))
def test_the_browser_page_reads_like_the_chat(name: str, rendered: dict[str, Any], tmp_path: Path) -> None:
    """In the DOM Chromium built: Dutch, the reply quotes its original with a link, the edit shows the latest
    text with the earlier version one click away, the reaction sits under its message with who reacted, the
    deleted message stays readable with who deleted it and when, set-up is one collapsed block, and the
    footer says how to verify."""
    page, lines = rendered[name]
    doc = dom(tmp_path, page)
    text = words(doc.xpath("//body")[0])
    assert doc.xpath("/html/@lang") == ["nl"] and doc.xpath("//title")[0].text == ROOMS[name]
    ask, reply = seq_of(lines, "message", 0).event, seq_of(lines, "message", 1).event
    ask_seq = seq_of(lines, "message", 0).seq
    gone = seq_of(lines, "message", 2).event
    assert ask is not None and reply is not None and gone is not None

    reply_li = doc.xpath(f'//li[@id="{anchor(reply.event_id)}"]')[0]
    quote = reply_li.xpath('.//blockquote[@class="reply"]/a[@class="quote"]')[0]
    assert quote.get("href") == f"#{anchor(ask.event_id)}"
    assert words(quote) == "minister: “Kun je de Kamerbrief voor morgen klaarzetten?”"
    assert words(reply_li.xpath('./div[contains(@class, "body")]')[0]) == "Ja, concept volgt om 15:00."  # latest
    versions = reply_li.xpath('.//details[@class="versions"]')[0]
    assert versions.get("open") is None and "1 eerdere versie" in words(versions.xpath("./summary")[0])
    assert "Ja, concept volgt vanmiddag." in words(versions)  # the original, one click away
    reactions = reply_li.xpath('.//ul[@class="reactions"]/li')
    assert [words(r) for r in reactions] == ["👍 (thumbs up sign) 1 minister"]
    assert reactions[0].xpath('.//span[@class="emoji named"]/@title') == ["thumbs up sign"]

    gone_li = doc.xpath(f'//li[@id="{anchor(gone.event_id)}"]')[0]
    assert "deleted" in gone_li.get("class").split()
    assert words(gone_li.xpath('./div[@class="body"]')[0]) == "Dit had ik niet moeten sturen."
    assert words(gone_li.xpath('./p[@class="deleted-note"]')[0]).startswith(
        "Verwijderd door minister @minister:localhost op woensdag 2 december 2026"
    )
    assert "(reden: verkeerde chat)" in words(gone_li)

    state = [line.seq for line in lines if line.event is not None and line.event.kind.value == "state"]
    members = [line.seq for line in lines if line.event is not None and line.event.kind.value == "membership"]
    assert len(state) == (7 if name == "demo-encrypted" else 6) and len(members) == 5
    settings = doc.xpath('//details[@id="instellingen"]')[0]
    assert settings.get("open") is None and len(settings.xpath("./ol/li")) == len(state)
    assert "wie mag deelnemen: alleen op uitnodiging" in words(settings)
    group = doc.xpath('//li[contains(@class, "group")]/details')[0]  # all set-up before the first message
    assert group.get("open") is None
    assert words(group.xpath("./summary")[0]) == (
        f"{len(state)} instellingen en 5 lidmaatschapswijzigingen #{min(state + members)}–#{max(state + members)}"
    )
    assert max(state + members) < ask_seq
    assert doc.xpath('//li[@class="day"]/h2')[0].text == "woensdag 2 december 2026"
    encrypted = doc.xpath('//span[@class="mark encrypted"]')
    assert (len(encrypted) > 0) == (name == "demo-encrypted")
    footer = words(doc.xpath("//footer")[0])
    first, last = lines[0].seq, lines[-1].seq
    assert f"recordnummers #{first} tot en met #{last}" in footer and "proof/checkpoint-end.txt" in footer
    assert "sha256sum -c manifest-sha256.txt" in footer and "chatarchief verify-package" in footer
    for english in ("edited", "deleted", "reacted", "in reply to", "joined", "records.", "Conversation"):
        assert english not in text, english


@pytest.mark.parametrize("name", list(ROOMS))
def test_print_to_pdf_keeps_collapsed_content_and_shows_links(
    name: str, rendered: dict[str, Any], tmp_path: Path
) -> None:
    """Printed (print stylesheet): every <details> is open, so earlier versions, the set-up block and the
    recorded JSON are in the PDF; links to files print their href; the footer is there."""
    page, lines = rendered[name]
    pdf = tmp_path / f"{name}.pdf"
    chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    text = " ".join(
        subprocess.run([_tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split()
    )
    for collapsed in (
        "Ja, concept volgt vanmiddag.",  # the reply's first version
        '"join_rule": "invite"',  # set-up JSON
        "recordnummer in het log",  # "Over dit verslag"
        "nodigde @woordvoerder:localhost uit",  # inside the group of set-up entries
    ):
        assert collapsed in text, collapsed
    assert f"(media/{seq_of(lines, 'attachment').seq}-concept-kamerbrief.pdf)" in text  # a link prints its href
    assert "Herkomst en controle" in text and "sha256sum -c manifest-sha256.txt" in text
