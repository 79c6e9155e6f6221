"""Build logs spanning several months through the public API, for the archive tests.

Append times are controlled by patching `bridge.log.store.now_ms` (the writer's
clock); everything else goes through `LogStore.append_events`, `BlobStore.put`
and `policy.withhold`, exactly as capture does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.archive.mdto import Organisation
from bridge.archive.package import ArchiveOptions
from bridge.blobs import BlobStore
from bridge.clock import now_ms
from bridge.events import MATRIX, Attachment, ConversationId, Event, EventId, Kind, SenderId
from bridge.log import checkpoint, merkle
from bridge.log import schema as schema_module
from bridge.log import store as store_module
from bridge.log.schema import db_path
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.withhold import withhold
from tests.conftest import LogDir, create_log

AMS = ZoneInfo("Europe/Amsterdam")
OPTIONS = ArchiveOptions(Organisation("Ministerie van Tests", "https://organisaties.overheid.nl/1/Test"))
ROOM_A = "!alpha:example.org"
ROOM_B = "!beta:example.org"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def ms(year: int, month: int, day: int, hour: int = 12) -> int:
    return int(datetime(year, month, day, hour, tzinfo=AMS).timestamp()) * 1000


def event(
    n: int,
    room: str = ROOM_A,
    kind: Kind = Kind.MESSAGE,
    body: str | None = None,
    relates_to: str | None = None,
    sender: str = "@minister:example.org",
    attachments: tuple[Attachment, ...] = (),
    content: dict[str, object] | None = None,
) -> Event:
    c: dict[str, object] = content if content is not None else {"msgtype": "m.text", "body": body or f"bericht {n}"}
    return Event(
        source=MATRIX,
        conversation=ConversationId(room),
        event_id=EventId(f"$e{n}"),
        kind=kind,
        sender=SenderId(sender),
        sent_at=1_700_000_000_000 + n,
        received_at=1_700_000_000_500 + n,
        content=c,
        relates_to=None if relates_to is None else EventId(relates_to),
        attachments=attachments,
        raw={"type": "m.room.message", "event_id": f"$e{n}"},
    )


def append(
    log: LogDir, monkeypatch: pytest.MonkeyPatch, batches: list[tuple[int, list[Event]]], seal: bool = True
) -> None:
    """Append each batch with the writer's clock at its time; seal with a checkpoint at the end."""

    async def go() -> None:
        policy = CheckpointPolicy(every_records=7, every_seconds=10**9)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            for at, events in batches:
                monkeypatch.setattr(store_module, "now_ms", lambda at=at: at)
                await store.append_events(events)
            if seal:
                await store.checkpoint()

    asyncio.run(go())


def january_february(log: LogDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two months of chat: January (two rooms, edit, deletion, reaction, image, a withheld message), February."""

    async def go() -> None:
        monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 5))
        policy = CheckpointPolicy(every_records=7, every_seconds=10**9)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            blobs = BlobStore(log.data_dir / "blobs", store.media_keys())
            blob_id, sha = await blobs.put(PNG, "image/png")
            img = Attachment("stored", "image/png", "foto <script>.png", len(PNG), sha, blob_id)
            name = {"type": "m.room.name", "state_key": "", "content": {"name": "Crisisoverleg"}}
            await store.append_events(
                [
                    event(0, kind=Kind.STATE, content=name),
                    event(1, body="Goedemorgen <script>alert(1)</script>"),
                    event(2, room=ROOM_B, body="privé: verjaardag"),
                    event(3, body="concept kamerbrief"),
                    event(4, kind=Kind.EDIT, relates_to="$e3", body="concept kamerbrief v2"),
                    event(5, kind=Kind.ATTACHMENT, attachments=(img,), content={"body": "foto"}),
                ]
            )
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 20))
            await store.append_events(
                [
                    event(6, kind=Kind.DELETION, relates_to="$e1", content={}),
                    event(7, kind=Kind.REACTION, relates_to="$e3", content={"key": "👍"}),
                    event(8, room=ROOM_B, body="ok", sender="@woordvoerder:example.org"),
                ]
            )
            await withhold(store, "$e2", "privé", "I. Specialist", data_dir=log.data_dir, clock=lambda: ms(2024, 1, 21))
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 2, 3))
            await store.append_events([event(n, room=ROOM_A if n % 2 else ROOM_B) for n in range(9, 19)])
            await store.checkpoint()

    asyncio.run(go())


def create_archive_log(tmp_path: Path) -> LogDir:
    """`create_log` with the log created on 1 January 2024, 01:00 (its KEY records at seq 0 and 1 carry that
    append time), so the months the archive tests write (2024) follow the log's creation as they would."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema_module, "now_ms", lambda: ms(2024, 1, 1, 1))
        return create_log(tmp_path)


def seal_for(log: LogDir) -> Callable[[int], str]:
    """The `seal` the archive is given: the log writer's `LogStore.seal_prefix` once it exists, else a stand-in.

    The stand-in does what the writer's call promises (the stored note at that size, else one signed now
    over the stored leaves and stored), with the test's direct database access; the archive checks the
    note it gets against the root it computed, so a wrong stand-in could not make a test pass.
    """
    if hasattr(LogStore, "seal_prefix"):

        def by_store(size: int) -> str:
            async def go() -> str:
                async with await LogStore.open(log.data_dir, log.keys) as store:
                    return await store.seal_prefix(size)

            return asyncio.run(go())

        return by_store
    return lambda size: _seal_here(log, size)


def _seal_here(log: LogDir, size: int) -> str:
    conn = sqlite3.connect(db_path(log.data_dir), timeout=30, isolation_level=None)
    try:
        row = conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is not None:
            return str(row[0])
        leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf FROM records WHERE seq < ? ORDER BY seq", (size,))]
        assert len(leaves) == size, "sealing beyond the stored records"
        name = log.keys.key_name
        cp = checkpoint.Checkpoint(origin=name, size=size, root=merkle.root(leaves), timestamp_ms=now_ms())
        note = checkpoint.sign_checkpoint(cp, name, log.keys.signing_key)
        conn.execute("INSERT INTO checkpoints (size, created_ms, note) VALUES (?, ?, ?)", (size, cp.timestamp_ms, note))
        return note
    finally:
        conn.close()


def dossier_dir(package: Path, room: str) -> Path:
    """The dossier folder of the conversation whose id contains `room` (folders are named after the room's
    name and a hash, never the raw id: the conversation is read from the first record line)."""
    import orjson

    for events in sorted((package / "data").rglob("events.jsonl")):
        with events.open("rb") as fh:
            lines = (orjson.loads(line) for line in fh)
            conversation = next((d["event"]["conversation"] for d in lines if "event" in d), "")
        if room in conversation:
            return events.parent
    raise LookupError(f"no dossier of a conversation like {room!r} in {package}")


def archive_log_two_months(tmp_path: Path) -> LogDir:
    """`create_archive_log` with `january_february`'s events in it (the clock patched only meanwhile)."""
    log = create_archive_log(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        january_february(log, mp)
    return log
