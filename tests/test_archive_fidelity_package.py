"""Issue 11's transcript features through a real package: what the lookahead pass renders (poll votes and
result, an edit attempt by another sender, lookalike names) is re-derived byte for byte by verify-package, and
a forged result is caught."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

import pytest

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import PackageIntegrityError, verify_package
from bridge.events import SIGNAL, ConversationId, Event, EventId, Kind, SenderId
from bridge.log import keys as keyfile
from bridge.log import store as store_module
from bridge.log.store import CheckpointPolicy, LogStore
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, ROOM_B, create_archive_log, dossier_dir, event, ms, seal_for
from tests.test_archive_forgery import rebag

MINISTER = "@minister:example.org"
OTHER = "@woordvoerder:example.org"


def _log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    log = create_archive_log(tmp_path)
    start = {"action": "start", "question": "Kamerbrief vandaag versturen?", "max_selections": 1,
             "disclosed": True, "answers": [{"id": "ja", "text": "Ja"}, {"id": "nee", "text": "Nee"}]}  # fmt: skip
    records = [
        event(1, kind=Kind.POLL, content={"poll": start, "body": "Kamerbrief vandaag versturen?"}),
        event(
            2, kind=Kind.POLL, relates_to="$e1", sender=OTHER, content={"poll": {"action": "vote", "answers": ["nee"]}}
        ),
        event(
            3, kind=Kind.POLL, relates_to="$e1", sender=OTHER, content={"poll": {"action": "vote", "answers": ["ja"]}}
        ),
        event(4, kind=Kind.POLL, relates_to="$e1", content={"poll": {"action": "vote", "answers": ["ja"]}}),
        event(5, kind=Kind.POLL, relates_to="$e1", content={"poll": {"action": "end", "text": "Gesloten"}}),
        event(6, body="Het concept staat klaar."),
        event(7, kind=Kind.EDIT, relates_to="$e6", sender=OTHER, body="Het concept is ingetrokken."),
        event(8, body="akkoord", sender="@m\u0456nister:example.org"),  # Cyrillic i: looks like the minister
        event(10, body="nog een keer", sender="@m\u0456nister:example.org"),
        event(11, kind=Kind.STATE, content={"type": "m.call.invite", "call": {"action": "invite", "call_id": "k1"}}),
        event(
            12,
            kind=Kind.STATE,
            sender=OTHER,
            content={"type": "m.call.answer", "call": {"action": "answer", "call_id": "k1"}},
        ),
        event(13, kind=Kind.STATE, content={"type": "m.call.hangup", "call": {"action": "hangup", "call_id": "k1"}}),
        event(
            14,
            kind=Kind.STATE,
            content={"type": "m.room.tombstone", "state_key": "", "replacement_room": ROOM_B, "content": {}},
        ),
        event(15, room=ROOM_B, body="verder hier"),
    ]

    async def go() -> None:
        monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 5))
        async with await LogStore.open(log.data_dir, log.keys, CheckpointPolicy(50, 10**9)) as store:
            await store.append_events(records)
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 2, 5))
            await store.append_events([event(9)])
            await store.checkpoint()

    asyncio.run(go())
    monkeypatch.undo()
    return log


def test_poll_edit_attempt_and_lookalike_survive_re_derivation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transcript shows the poll's result (the later vote of a sender replaces the earlier), the edit by
    another sender as a rejected attempt, and a lookalike warning; verify-package re-derives it exactly, and a
    transcript whose result was changed (manifests rebuilt) is caught."""
    log = _log(tmp_path, monkeypatch)
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    html = b"".join(t.read_bytes() for t in pkg.transcripts).decode()
    assert "Kamerbrief vandaag versturen?" in html
    assert "<bdi>Ja</bdi>: 2</li>" in html and "<bdi>Nee</bdi>: 0</li>" in html
    assert "afgewezen bewerkingspoging" in html
    assert "lijkt op" in html
    alpha = (dossier_dir(pkg.path, "alpha") / "transcript.html").read_text()
    beta = dossier_dir(pkg.path, "beta") / "transcript.html"
    assert alpha.count('<section class="lookalikes">') == 1 and alpha.count('class="warn lookalike"') == 2
    assert "begon een oproep" in alpha and "aangenomen door" in alpha and "beëindigde de oproep" in alpha
    link = f'<a class="conversation" href="../{urllib.parse.quote(beta.parent.name)}/transcript.html">'
    assert link in alpha and "gaat verder in" in alpha
    pub = keyfile.load_public(keyfile.public_path(log.key_file))
    verify_package(pkg.path, pub)
    transcript = pkg.transcripts[0]
    forged = transcript.read_text().replace("<bdi>Ja</bdi>: 2</li>", "<bdi>Ja</bdi>: 0</li>")
    transcript.write_text(forged.replace("<bdi>Nee</bdi>: 0</li>", "<bdi>Nee</bdi>: 2</li>"))
    rebag(pkg.path)
    with pytest.raises(PackageIntegrityError, match="transcript"):
        verify_package(pkg.path, pub)


def test_signal_group_dossier_is_titled_by_its_group_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Signal group dossier is titled by the group name its messages carry (not its base64 id), its senders
    by their profile names, and verify-package re-derives it."""
    log = create_archive_log(tmp_path)
    group = "group:U3RhbmRpbmdDb21taXR0ZWVCZWxlaWRzb3ZlcmxlZyE="
    sender = "5e2f9d10-8a3b-4c6d-b7e8-1f2a3b4c5d6e"

    def signal(n: int, name: str) -> Event:
        content = {"body": f"bericht {n}", "group_name": name, "sender_name": "Peer"}
        return Event(
            SIGNAL, ConversationId(group), EventId(f"{sender}:{n}"), Kind.MESSAGE, SenderId(sender), n, n, content
        )

    async def go() -> None:
        monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 5))
        async with await LogStore.open(log.data_dir, log.keys, CheckpointPolicy(50, 10**9)) as store:
            await store.append_events([signal(1, "Oud overleg"), signal(2, "Beleidsoverleg")])
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 2, 5))
            await store.append_events([signal(3, "later")])
            await store.checkpoint()

    asyncio.run(go())
    monkeypatch.undo()
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    (transcript,) = pkg.transcripts
    html = transcript.read_text()
    assert "<title>Beleidsoverleg (chat met " in html and ", januari 2024</title>" in html  # last name of the month
    assert f'<bdi class="who">Peer</bdi> <bdi class="id">{sender}</bdi>' in html
    verify_package(pkg.path, keyfile.load_public(keyfile.public_path(log.key_file)))
