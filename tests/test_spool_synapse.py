"""The sealed spool inside a real Synapse: plain-room events durable through the module, once each in the log.

Attack first: each test fails without the spool (module config, bot reader or both): held sync loop -> nothing
durable; bot down -> the spool holds nothing; and so on. The officials are real nio clients; the archiver is
brought into their rooms by the module, as in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.events import Kind
from bridge.sources.matrix import MatrixSource
from tests.support.archiver_module import ARCHIVER, OUTSIDERS, login
from tests.support.officials import Official, ok, poll_until
from tests.support.spool import SpoolBot, SpoolServer, append_frame, frame_events, minister, spool_synapse

__all__ = ["minister", "spool_synapse"]  # fixtures used by name

pytestmark = pytest.mark.synapse


@pytest.fixture
async def bot(spool_synapse: SpoolServer, tmp_path: Path) -> AsyncIterator[SpoolBot]:
    made = SpoolBot(spool_synapse, tmp_path)
    try:
        yield made
    finally:
        await made.stop()


async def joined_plain_room(person: Official, spool: SpoolServer) -> str:
    """A plain room of an official; returns once the module has the archiver joined (its join is spooled)."""
    room_id = await person.create_room(encrypted=False)
    await poll_until(lambda: any(e.get("room_id") == room_id for e in frame_events(spool.frames())), timeout=20)
    return room_id


async def test_plain_room_messages_are_durable_through_the_spool_while_the_sync_loop_is_held(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer
) -> None:
    """With the sync loop's commits held, plain-room messages still reach the log (through the spool), in clear
    and in their room; released, the sync loop brings the same events and the log keeps one record each."""
    await bot.start(hold_sync=True)
    room_id = await joined_plain_room(minister, spool_synapse)
    sent = [await minister.send_text(room_id, f"besluit {i}") for i in range(3)]

    await bot.wait_stored(sent)  # the sync loop's commits are all still waiting at the gate
    records = {e.event_id: e for e in bot.records()}
    for i, event_id in enumerate(sent):
        assert records[event_id].kind is Kind.MESSAGE
        assert records[event_id].content["body"] == f"besluit {i}"
        assert records[event_id].conversation == room_id
    await came_through_the_spool(bot, sent)

    bot.gate.set()  # the sync loop brings the same events: the log keeps one copy each
    await poll_until(lambda: set(sent) <= set(bot.seen.by_label.get("matrix", [])), timeout=30)
    assert [bot.count(i) for i in sent] == [1, 1, 1]
    assert_no_conflicting_versions(bot, room_id)


async def came_through_the_spool(bot: SpoolBot, event_ids: list[str]) -> None:
    """The spool's writer offered these to the log (its observer is told just after the commit that made them
    readable, so this waits a moment rather than racing it)."""
    await poll_until(lambda: set(event_ids) <= set(bot.seen.by_label.get("matrix-spool", [])), timeout=5)


def assert_no_conflicting_versions(bot: SpoolBot, room_id: str) -> None:
    """The spool's and the sync loop's copies of every event of the room (the archiver's own join included)
    were the same record: the log kept no `#version-` beside any of them. (Only this test's room: a new bot
    reads the whole spool of the module's Synapse, and its first sync brings earlier tests' rooms as they are
    now, where an event redacted since was kept whole from the spool and stripped from the sync loop: a true
    version.)"""
    versions = [(e.event_id, e.kind) for e in bot.records() if "#version-" in e.event_id and e.conversation == room_id]
    assert versions == []


async def test_bot_down_the_spool_holds_them_sealed_then_each_is_stored_once(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer
) -> None:
    """Messages sent while the bot is down wait sealed in the spool (no body, room or user id readable); the
    restarted bot resumes from its committed position and stores each once."""
    await bot.start()
    room_id = await joined_plain_room(minister, spool_synapse)
    await bot.wait_stored([e["event_id"] for e in frame_events(spool_synapse.frames()) if e["room_id"] == room_id])
    await bot.stop()
    before = set(bot.seen.by_label.get("matrix-spool", []))
    assert before
    bot.seen.by_label.clear()

    bodies = [f"vertrouwelijk-{i}-{room_id}" for i in range(3)]
    sent = [await minister.send_text(room_id, body) for body in bodies]
    await poll_until(lambda: set(sent) <= {e["event_id"] for e in frame_events(spool_synapse.frames())}, timeout=20)
    on_disk = spool_synapse.spool_bytes()
    for body in bodies:
        assert body.encode() not in on_disk  # sealed: no message body readable in the spool dir
    assert room_id.encode() not in on_disk and minister.user_id.encode() not in on_disk

    await bot.start(hold_sync=True)  # the spool alone catches up
    await bot.wait_stored(sent)
    assert not before & set(bot.seen.by_label["matrix-spool"])  # resumed from the committed spool position
    bot.gate.set()
    await poll_until(lambda: set(sent) <= set(bot.seen.by_label.get("matrix", [])), timeout=30)
    assert [bot.count(i) for i in sent] == [1, 1, 1]
    assert [e.content["body"] for e in bot.records() if e.event_id in sent] == bodies


async def test_rooms_without_the_archiver_are_never_spooled_and_encrypted_ones_only_as_ciphertext(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer, tmp_path: Path
) -> None:
    """A room without the archiver never reaches the spool; an encrypted room does, but only as Synapse holds it:
    the opened frames carry `m.room.encrypted` events with no body in them; the log holds the message decrypted."""
    await bot.start()
    encrypted = await minister.create_room(encrypted=True)
    secret = await minister.send_text(encrypted, "versleuteld besluit")
    outsider = await login(spool_synapse.server, OUTSIDERS[0], tmp_path / "outsider")
    try:
        private = await outsider.create_room(encrypted=False)
        await outsider.send_text(private, "privé")
    finally:
        await outsider.client.close()
    marker_room = await joined_plain_room(minister, spool_synapse)  # a later spooled event: the others are past
    marker = await minister.send_text(marker_room, "na de andere")
    await poll_until(lambda: marker in {e["event_id"] for e in frame_events(spool_synapse.frames())}, timeout=20)

    events = frame_events(spool_synapse.frames())
    rooms = {e["room_id"] for e in events}
    assert encrypted in rooms and private not in rooms and marker_room in rooms
    (frame,) = [e for e in events if e["event_id"] == secret]
    assert frame["type"] == "m.room.encrypted" and "ciphertext" in frame["content"]
    assert b"versleuteld besluit" not in orjson.dumps(frame)
    await bot.wait_stored([secret])
    assert next(e for e in bot.records() if e.event_id == secret).content["body"] == "versleuteld besluit"


async def _encrypted_room_with_a_shared_key(bot: SpoolBot, minister: Official) -> tuple[str, str]:
    """An encrypted room whose current Megolm session the bot holds: a first message sent and stored (by
    whichever path came first; its room key reaches the bot only through the sync loop's to-device events).
    Returns the room and that first message."""
    room_id = await minister.create_room(encrypted=True)
    first = await minister.send_text(room_id, "sleutel gedeeld")
    await bot.wait_stored([first])
    return room_id, first


async def test_encrypted_room_messages_are_durable_through_the_spool_while_the_sync_loop_is_held(
    bot: SpoolBot, minister: Official
) -> None:
    """Once the bot holds a room's Megolm session, the spool alone makes the room's next messages durable,
    decrypted by the bot with that session, while the sync loop's commits wait; released, the sync loop brings
    the same events and the log keeps one record each, with the decryption evidence."""
    await bot.start()
    room_id, _ = await _encrypted_room_with_a_shared_key(bot, minister)
    bot.gate.clear()  # from here the sync loop's commits wait
    sent = [await minister.send_text(room_id, f"vertrouwelijk besluit {i}") for i in range(3)]

    await bot.wait_stored(sent)
    records = {e.event_id: e for e in bot.records()}
    for i, event_id in enumerate(sent):
        assert records[event_id].kind is Kind.MESSAGE
        assert records[event_id].content["body"] == f"vertrouwelijk besluit {i}"
        assert records[event_id].content["encryption"]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert records[event_id].content["encryption"]["session_id"]
    await came_through_the_spool(bot, sent)
    assert not set(sent) & set(bot.seen.by_label.get("matrix", []))

    bot.gate.set()
    await poll_until(lambda: set(sent) <= set(bot.seen.by_label.get("matrix", [])), timeout=30)
    assert [bot.count(i) for i in sent] == [1, 1, 1]
    assert_no_conflicting_versions(bot, room_id)


async def test_a_replayed_encrypted_frame_is_refused_with_an_alert_and_kept_as_a_notice(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: an insider who can write the spool (and read the public key in the module's config) takes
    a genuine encrypted frame and seals it again under a new event id, next in sequence: the same Megolm
    ciphertext, which the bot's own room key decrypts, now claiming to be a second message. nio's replay check
    refuses it (that session's message index was decrypted under the real event id); the bot records no
    message for it, logs an ALERT and keeps the frame as a `spool_frame_unreadable` notice naming the replay."""
    await bot.start()
    room_id, _ = await _encrypted_room_with_a_shared_key(bot, minister)
    real = await minister.send_text(room_id, "echt vertrouwelijk besluit")
    await bot.wait_stored([real])
    (genuine,) = [e for e in frame_events(spool_synapse.frames()) if e["event_id"] == real]

    caplog.set_level(logging.ERROR, logger="bridge.sources.matrix.spool")
    replayed = f"$replayed{time.time_ns()}"
    file, offset = append_frame(spool_synapse, {**genuine, "event_id": replayed})
    notice_id = f"spool:{file}:{offset}"
    await bot.wait_stored([notice_id])
    notice = next(e for e in bot.records() if e.event_id == notice_id)
    assert notice.kind is Kind.NOTICE and notice.content["notice"] == "spool_frame_unreadable"
    assert notice.content["reason"].startswith("replayed") and notice.content["event_id"] == replayed
    assert bot.count(replayed) == 0
    assert any("ALERT matrix spool" in r.getMessage() for r in caplog.records)


async def test_an_encrypted_frame_the_bot_has_no_key_for_is_left_to_the_sync_loop(
    bot: SpoolBot,
    minister: Official,
    spool_synapse: SpoolServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bot down while a new encrypted room gets its first message: the spool holds it, but the room key
    waits in the bot's to-device queue. Restarted with its first sync held back, the spool reader cannot
    decrypt the frame and stores nothing for it (an undecryptable copy would shadow the decrypted one in the
    log's dedup); then the sync loop brings the event with its key: one record, decrypted, from the sync loop."""
    await bot.start()
    await bot.stop()
    room_id = await minister.create_room(encrypted=True)
    event_id = await minister.send_text(room_id, "eerste bericht")
    await poll_until(lambda: event_id in {e["event_id"] for e in frame_events(spool_synapse.frames())}, timeout=20)

    tried = asyncio.Event()
    sync = MatrixSource._sync

    async def after_the_spool_tried(self: MatrixSource, *args: Any, **kwargs: Any) -> Any:
        await tried.wait()
        return await sync(self, *args, **kwargs)

    monkeypatch.setattr(MatrixSource, "_sync", after_the_spool_tried)
    caplog.set_level(logging.INFO, logger="bridge.sources.matrix.source")
    bot.seen.by_label.clear()
    starting = asyncio.create_task(bot.start())
    await poll_until(
        lambda: any(
            "left to the sync loop" in r.getMessage() and getattr(r, "event_id", None) == event_id
            for r in caplog.records
        ),
        timeout=20,
    )
    assert event_id not in bot.seen.by_label.get("matrix-spool", [])
    tried.set()
    await starting
    await bot.wait_stored([event_id])
    assert bot.count(event_id) == 1
    assert event_id in bot.seen.by_label.get("matrix", [])
    assert next(e for e in bot.records() if e.event_id == event_id).content["body"] == "eerste bericht"


async def test_a_tampered_spool_frame_is_flagged_and_the_sync_loop_still_archives_it(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte of a sealed frame altered while the bot is down: an ALERT and a `spool_frame_unreadable` notice in
    the log; the message itself is archived once, by the sync loop."""
    await bot.start()
    room_id = await joined_plain_room(minister, spool_synapse)
    await bot.stop()
    before = {(f.file, f.offset) for f in spool_synapse.frames()}
    event_id = await minister.send_text(room_id, "wordt gemanipuleerd")
    await poll_until(lambda: event_id in {e["event_id"] for e in frame_events(spool_synapse.frames())}, timeout=20)
    frame = next(f for f in spool_synapse.frames() if (f.file, f.offset) not in before)
    path = spool_synapse.spool_dir / frame.file
    data = bytearray(path.read_bytes())
    data[frame.offset + 60] ^= 0xFF  # a byte of the sealed body
    path.write_bytes(bytes(data))

    caplog.set_level(logging.ERROR, logger="bridge.sources.matrix.spool")
    await bot.start()
    await bot.wait_stored([event_id, f"spool:{frame.file}:{frame.offset}"])
    notice = next(e for e in bot.records() if e.event_id == f"spool:{frame.file}:{frame.offset}")
    assert notice.kind is Kind.NOTICE and notice.content["notice"] == "spool_frame_unreadable"
    assert notice.content["reason"] == "checksum mismatch"
    assert any("ALERT matrix spool" in r.getMessage() for r in caplog.records)
    assert bot.count(event_id) == 1
    assert bot.seen.by_label.get("matrix", []).count(event_id) == 1  # brought by the sync loop


async def test_a_plain_room_attachment_is_fetched_by_the_spool_path_as_by_the_sync_loop(
    bot: SpoolBot, minister: Official, spool_synapse: SpoolServer
) -> None:
    """The spool's copy goes through the same media step as the sync loop's: the file is fetched with the
    bot's client and stored (here: its sha256) while the sync loop is held."""
    await bot.start(hold_sync=True)
    room_id = await joined_plain_room(minister, spool_synapse)
    data = os.urandom(3000)
    upload, _ = await minister.client.upload(io.BytesIO(data), "application/pdf", "nota.pdf", filesize=len(data))
    ok(upload)
    content = {"msgtype": "m.file", "body": "nota.pdf", "url": upload.content_uri}
    event_id = await minister.send(room_id, content)

    await bot.wait_stored([event_id])
    record = next(e for e in bot.records() if e.event_id == event_id)
    assert record.kind is Kind.ATTACHMENT
    (attachment,) = record.attachments
    assert attachment.status == "stored" and attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert bot.seen.by_label.get("matrix", []) == []  # nothing from the sync loop yet


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_the_spool_copy_is_the_same_record_as_the_sync_loops(
    spool_synapse: SpoolServer, minister: Official, tmp_path: Path, encrypted: bool
) -> None:
    """The same events, archived by a bot through the spool (its sync loop held) and by a bot through the sync
    loop only (an empty spool): the records of every event the first took from the spool (the archiver's join
    and a topic that replaces another included) are equal but for the receive time and `unsigned.age` in the raw
    event (the spool's copy is taken before any client asks): kind, sender, content (in an encrypted room with
    the same decryption evidence), relations, attachments."""
    by_spool = SpoolBot(spool_synapse, tmp_path / "spool-bot")
    (tmp_path / "empty").mkdir()
    by_sync = SpoolBot(spool_synapse, tmp_path / "sync-bot", spool_dir=tmp_path / "empty")
    for b in (by_spool, by_sync):
        b.workdir.mkdir()
    await by_spool.start(hold_sync=not encrypted)  # encrypted: held once the spool bot has the room key
    await by_sync.start()
    try:
        first = ""
        if encrypted:
            room_id, first = await _encrypted_room_with_a_shared_key(by_spool, minister)
            by_spool.gate.clear()
        else:
            room_id = await joined_plain_room(minister, spool_synapse)
        text = await minister.send_text(room_id, "origineel")
        sent = [
            text,
            await minister.send(room_id, {"msgtype": "m.notice", "body": "mededeling"}),
            await minister.send(
                room_id, {"m.relates_to": {"rel_type": "m.annotation", "event_id": text, "key": "👍"}}, "m.reaction"
            ),
            await minister.send(
                room_id,
                {
                    "msgtype": "m.text",
                    "body": "* herzien",
                    "m.new_content": {"msgtype": "m.text", "body": "herzien"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": text},
                },
            ),
            str(ok(await minister.client.room_put_state(room_id, "m.room.topic", {"topic": "begroting"})).event_id),
            str(ok(await minister.client.room_put_state(room_id, "m.room.topic", {"topic": "formatie"})).event_id),
        ]
        for b in (by_spool, by_sync):  # both hold the notice before it is redacted (a later sync gives it redacted)
            await b.wait_stored(sent)
        redaction = ok(await minister.client.room_redact(room_id, sent[1], reason="vergissing"))
        sent.append(str(redaction.event_id))
        await by_spool.wait_stored(sent)
        await by_sync.wait_stored(sent)
        assert not set(sent) & set(by_spool.seen.by_label.get("matrix", []))  # all came through the spool
        spooled = {e.event_id: e for e in by_spool.records() if e.conversation == room_id}
        synced = {e.event_id: e for e in by_sync.records() if e.conversation == room_id}
        # (The first encrypted message is left out: its evidence depends on which bot had queried the sender's
        # device keys when it decrypted it: the sync loop queries them after the sync that brought the key.)
        both = spooled.keys() & synced.keys() & set(by_spool.seen.by_label.get("matrix-spool", [])) - {first}
        assert set(sent) <= both
        if not encrypted:  # the archiver's join (in the encrypted room it came before the spool bot was held)
            assert any(e.kind is Kind.MEMBERSHIP and e.sender == ARCHIVER for e in (spooled[i] for i in both))
        assert synced[sent[-2]].raw["unsigned"]["prev_content"] == {"topic": "begroting"}  # compared below
        for event_id in both:
            a, b = spooled[event_id], synced[event_id]
            same = ("kind", "sender", "sent_at", "conversation", "content", "relates_to", "attachments", "problem")
            assert {f: getattr(a, f) for f in same} == {f: getattr(b, f) for f in same}, event_id
            raw_a, raw_b = dict(a.raw), dict(b.raw)
            unsigned_b = {
                k: v for k, v in dict(raw_b.pop("unsigned", {})).items() if k not in ("age", "redacted_because")
            }
            assert dict(raw_a.pop("unsigned", {})) == unsigned_b, event_id
            assert raw_a == raw_b, event_id
        for b in (by_spool, by_sync):
            assert_no_conflicting_versions(b, room_id)
    finally:
        await by_spool.stop()
        await by_sync.stop()
