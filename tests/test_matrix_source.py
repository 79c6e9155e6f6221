"""Live Matrix capture against a real Synapse, with real nio clients as the officials.

The sink here is in memory (a list and a cursor) with the log's contract:
`commit` stores events and cursor together; duplicates are allowed and
collapsed on (source, conversation, event_id), as the log does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import RoomPreset

from bridge.dev.synapse import SynapseServer
from bridge.events import Event, Kind
from bridge.sources.matrix import MatrixSource, MatrixSourceConfig
from bridge.sources.matrix.session import load_identity, load_session
from bridge.sources.matrix.state import LEGACY_FILE, decode
from tests.support.officials import Official, OfficialFactory, ok, poll_until, unique_name
from tests.support.sinks import RecordingSink as MemorySink

pytestmark = pytest.mark.synapse


class MemoryBlobs:
    """BlobSink in memory: blob id = plaintext sha256 (the real store encrypts)."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, str | None]] = {}

    async def put(self, data: bytes, media_type: str | None) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = (data, media_type)
        return digest, digest


@dataclass
class Bot:
    """The archive bot's account and a way to run MatrixSource objects for it."""

    synapse: SynapseServer
    user_id: str
    password_file: Path
    store_dir: Path
    allowed: frozenset[str] = frozenset()
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    def config(self, **overrides: Any) -> MatrixSourceConfig:
        cfg = MatrixSourceConfig(
            homeserver=self.synapse.url,
            store_dir=self.store_dir,
            pickle_key=b"test-pickle-key-from-key-material",
            user_id=self.user_id,
            password_file=self.password_file,
            device_name="chatarchief-test",
            allowed_inviters=self.allowed,
            sync_timeout_ms=5_000,
            backoff_initial=0.2,
            backoff_max=1.0,
        )
        return replace(cfg, **overrides)

    async def start(self, sink: MemorySink, blobs: MemoryBlobs | None = None, **overrides: Any) -> MatrixSource:
        source = MatrixSource(self.config(**overrides), sink, blobs)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        self.running.append((stop, task))
        await poll_until(lambda: bool(sink.commits) or task.done(), timeout=20)
        if task.done():
            task.result()  # raise what stopped it
        return source

    async def stop(self) -> None:
        """Graceful stop of every running source (finishes the batch in hand)."""
        while self.running:
            stop, task = self.running.pop()
            stop.set()
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def bot(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[Bot]:
    name = unique_name("archivebot")
    password = f"pw-{name}"
    user_id, _ = await synapse.register_user_async(name, password)
    password_file = tmp_path / "bot.password"
    password_file.write_text(password)
    password_file.chmod(0o600)
    robot = Bot(synapse, user_id, password_file, tmp_path / "bot-store")
    try:
        yield robot
    finally:
        await robot.stop()


async def invite_bot(alice: Official, bot: Bot, *, encrypted: bool) -> str:
    """Alice (an allowed inviter) makes a room with the bot and waits until it joined."""
    room_id = await alice.create_room(encrypted=encrypted, invite=[bot.user_id])
    await alice.wait_member(room_id, bot.user_id)
    return room_id


def bot_device(bot: Bot) -> str:
    session = load_identity(bot.store_dir)
    assert session is not None
    return session.device_id


async def wait_event(sink: MemorySink, event_id: str, timeout: float = 20) -> Event:
    await poll_until(lambda: sink.find(event_id) is not None, timeout)
    event = sink.find(event_id)
    assert event is not None
    return event


async def converse(alice: Official, room_id: str) -> dict[str, str]:
    """Text, formatted text, an edit, a reaction and a deletion; returns their event ids."""
    ids = {"text": await alice.send_text(room_id, "Besluit: we gaan door")}
    ids["formatted"] = await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "*zeker*",
            "format": "org.matrix.custom.html",
            "formatted_body": "<em>zeker</em>",
        },
    )
    ids["edit"] = await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "* Besluit: we gaan niet door",
            "m.new_content": {"msgtype": "m.text", "body": "Besluit: we gaan niet door"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": ids["text"]},
        },
    )
    ids["reaction"] = await alice.send(
        room_id, {"m.relates_to": {"rel_type": "m.annotation", "event_id": ids["text"], "key": "👍"}}, "m.reaction"
    )
    ids["deletion"] = str(ok(await alice.client.room_redact(room_id, ids["formatted"], reason="typo")).event_id)
    return ids


def assert_conversation(sink: MemorySink, ids: dict[str, str]) -> None:
    text = sink.find(ids["text"])
    assert text is not None and text.kind == Kind.MESSAGE
    assert text.content["body"] == "Besluit: we gaan door"
    formatted = sink.find(ids["formatted"])
    assert formatted is not None and formatted.content["formatted_body"] == "<em>zeker</em>"
    edit = sink.find(ids["edit"])
    assert edit is not None and edit.kind == Kind.EDIT and edit.relates_to == ids["text"]
    assert edit.content["body"] == "Besluit: we gaan niet door"
    reaction = sink.find(ids["reaction"])
    assert reaction is not None and reaction.kind == Kind.REACTION and reaction.content["key"] == "👍"
    deletion = sink.find(ids["deletion"])
    assert deletion is not None and deletion.kind == Kind.DELETION and deletion.relates_to == ids["formatted"]


async def test_plain_room_conversation(bot: Bot, official: OfficialFactory) -> None:
    """In an unencrypted room the bot captures text, formatted text, edit, reaction and deletion,
    each as its own record, the edit and deletion pointing at their targets and the original kept."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await invite_bot(alice, bot, encrypted=False)
    ids = await converse(alice, room_id)
    await wait_event(sink, ids["deletion"])
    assert_conversation(sink, ids)
    members = sink.in_room(room_id, Kind.MEMBERSHIP)
    assert {m.content["target"] for m in members} >= {alice.user_id, bot.user_id}
    assert sink.cursor is not None


async def test_receipts_and_typing_do_not_wake_the_sync_loop(bot: Bot, official: OfficialFactory) -> None:
    """Read receipts and typing notices are not archived: they must not each cost the bot a sync round and a
    commit, which the next message would wait behind (every reader's client sends them around every message).
    After them, the next commit is the next message's; none comes empty before it."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink, sync_timeout_ms=60_000)  # no long-poll timeout inside the test's window
    room_id = await invite_bot(alice, bot, encrypted=False)
    first = await alice.send_text(room_id, "een")
    await wait_event(sink, first)
    await asyncio.sleep(0.5)  # the bot is back in its long-poll
    before = len(sink.commits)
    ok(await alice.client.room_read_markers(room_id, first, first))
    ok(await alice.client.room_typing(room_id, True))
    ok(await alice.client.room_typing(room_id, False))
    await asyncio.sleep(1.5)  # long enough for a woken sync to have been committed
    second = await alice.send_text(room_id, "twee")
    await wait_event(sink, second)
    after = sink.commits[before:]
    assert after, "the message after the receipts was committed"
    assert second in {e.event_id for e in after[0][0]}, [[e.event_id for e in events] for events, _ in after]


async def test_encrypted_room_conversation_and_file(bot: Bot, official: OfficialFactory) -> None:
    """In an encrypted room every message is decrypted and kept with its evidence (sender device,
    session); an encrypted file is downloaded, decrypted and stored with its plaintext sha256."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink, blobs = MemorySink(), MemoryBlobs()
    await bot.start(sink, blobs)
    room_id = await invite_bot(alice, bot, encrypted=True)
    ids = await converse(alice, room_id)

    data = b"%PDF-1.4 vertrouwelijk besluit " * 100
    upload, keys = await alice.client.upload(
        io.BytesIO(data), "application/pdf", "besluit.pdf", encrypt=True, filesize=len(data)
    )
    ok(upload)
    file_id = await alice.send(
        room_id,
        {
            "msgtype": "m.file",
            "body": "besluit.pdf",
            "info": {"mimetype": "application/pdf", "size": len(data)},
            "file": {"url": upload.content_uri, **(keys or {})},
        },
    )
    await wait_event(sink, file_id)
    await wait_event(sink, ids["deletion"])
    assert_conversation(sink, ids)

    text = sink.find(ids["text"])
    assert text is not None and text.raw["type"] == "m.room.message"
    evidence = text.content["encryption"]
    assert evidence["device_id"] == alice.client.device_id
    assert evidence["session_id"] and evidence["sender_key"]
    assert evidence["device_known"] is True and evidence["device_key_matches"] is True

    file_event = sink.find(file_id)
    assert file_event is not None and file_event.kind == Kind.ATTACHMENT
    (attachment,) = file_event.attachments
    assert attachment.status == "stored"
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert attachment.size == len(data)
    assert blobs.blobs[attachment.blob_id or ""][0] == data
    assert not sink.in_room(room_id, Kind.UNDECRYPTABLE)


async def test_oversized_media_is_recorded_not_fetched(bot: Bot, official: OfficialFactory) -> None:
    """Media above max_media_bytes is recorded as oversized (never silently skipped) and not stored."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink, blobs = MemorySink(), MemoryBlobs()
    await bot.start(sink, blobs, max_media_bytes=1000)
    room_id = await invite_bot(alice, bot, encrypted=False)
    data = bytes(5000)
    upload, _ = await alice.client.upload(io.BytesIO(data), "image/png", "foto.png", filesize=len(data))
    ok(upload)
    # No declared size: the limit must hold while streaming, too.
    image_id = await alice.send(room_id, {"msgtype": "m.image", "body": "foto.png", "url": upload.content_uri})
    event = await wait_event(sink, image_id)
    assert [a.status for a in event.attachments] == ["oversized"]
    assert not blobs.blobs


async def test_invite_from_stranger_is_declined(bot: Bot, official: OfficialFactory) -> None:
    """An invite from a user not in allowed_inviters is declined and nothing of that room is stored."""
    alice, mallory = await official("alice"), await official("mallory")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await mallory.create_room(encrypted=False, invite=[bot.user_id])

    async def declined() -> bool:
        await mallory.sync()
        room = mallory.client.rooms.get(room_id)
        return room is not None and bot.user_id not in room.invited_users and bot.user_id not in room.users

    await poll_until(declined)
    assert not sink.in_room(room_id)


async def test_restart_and_downtime_lose_and_duplicate_nothing(bot: Bot, official: OfficialFactory) -> None:
    """A new MatrixSource on the same store resumes from the committed cursor: the same device (no
    new login), messages sent while it was down are captured, and no message is committed twice;
    200 messages during downtime (a limited sync, timeline limit 10) are all backfilled, decrypted."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    first = await bot.start(sink, timeline_limit=10)
    room_id = await invite_bot(alice, bot, encrypted=True)
    before = [await alice.send_text(room_id, f"voor {i}") for i in range(5)]
    await wait_event(sink, before[-1])
    device_before = bot_device(bot)
    await bot.stop()
    del first

    started = time.monotonic()
    during = [await alice.send_text(room_id, f"tijdens {i}") for i in range(200)]
    send_seconds = time.monotonic() - started

    await bot.start(sink, timeline_limit=10)
    await wait_event(sink, during[-1], timeout=60)
    after = await alice.send_text(room_id, "na")
    await wait_event(sink, after)

    messages = [e for e in sink.stream if e.conversation == room_id and e.kind == Kind.MESSAGE]
    ids = [e.event_id for e in messages]
    assert len(ids) == len(set(ids)), "a message was committed twice"
    assert set(ids) == {*before, *during, after}
    assert {e.content["body"] for e in messages} >= {f"tijdens {i}" for i in range(200)}
    assert not sink.in_room(room_id, Kind.UNDECRYPTABLE)
    # Same device across the restart (a new login would be a device without the old keys).
    assert bot_device(bot) == device_before
    print(f"sent 200 encrypted messages in {send_seconds:.1f}s")


class HeldBackKey:
    """Alice's Megolm session for a room, made by hand so its key can reach the bot's device later."""

    def __init__(self, alice: Official, bot: Bot, room_id: str) -> None:
        self.alice, self.room_id = alice, room_id
        olm = alice.client.olm
        (self.device,) = alice.client.device_store[bot.user_id].values()
        self.bot_user = bot.user_id
        olm.create_outbound_group_session(room_id)
        session = olm.outbound_group_sessions[room_id]
        self.room_key = {
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": room_id,
            "session_id": session.id,
            "session_key": session.session_key,
        }
        alice.client.blacklist_device(self.device)

    async def send(self) -> None:
        """The key arrives late (as from a slow or restored device): an Olm-encrypted m.room_key."""
        from nio.event_builders import ToDeviceMessage

        client = self.alice.client
        client.unblacklist_device(self.device)
        missing = client.get_missing_sessions(self.room_id)
        if missing:
            ok(await client.keys_claim(missing))
        olm_session = client.olm.session_store.get(self.device.curve25519)
        payload = client.olm._olm_encrypt(olm_session, self.device, "m.room_key", self.room_key)
        message = ToDeviceMessage("m.room.encrypted", self.bot_user, self.device.id, payload)
        ok(await client.to_device(message))


async def test_late_room_key_appends_decrypted_event(bot: Bot, official: OfficialFactory) -> None:
    """A message whose room key reaches the bot only later is first stored as undecryptable, and
    when the key arrives the decrypted event is appended as `<event_id>#decrypted`, linked to it."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await invite_bot(alice, bot, encrypted=True)
    await alice.keys()
    key = HeldBackKey(alice, bot, room_id)
    secret_id = await alice.send_text(room_id, "pas later leesbaar")
    first = await wait_event(sink, secret_id)
    assert first.kind == Kind.UNDECRYPTABLE

    await key.send()
    late = await wait_event(sink, secret_id + "#decrypted")
    assert late.kind == Kind.MESSAGE and late.content["body"] == "pas later leesbaar"
    assert late.relates_to == secret_id
    assert late.content["encryption"]["late"] is True
    assert decode(sink.cursor).pending == (), "a decrypted event stays pending"


async def test_pending_state_survives_restart_and_old_side_file_is_migrated(
    bot: Bot, official: OfficialFactory
) -> None:
    """The undecryptable events awaiting keys and the backfilled rooms live in the committed cursor
    (ids, no message content): an old `source_state.json` (with raw events) beside a bare-token cursor
    is folded in on start, committed with the next batch and deleted; after the restart the key's
    arrival still appends the late decryption, fetched again from the homeserver by id."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await invite_bot(alice, bot, encrypted=True)
    await alice.keys()
    key = HeldBackKey(alice, bot, room_id)
    secret_id = await alice.send_text(room_id, "na herstart leesbaar")
    first = await wait_event(sink, secret_id)
    assert first.kind == Kind.UNDECRYPTABLE
    state = decode(sink.cursor)
    assert room_id in state.backfilled and [p.event_id for p in state.pending] == [secret_id]
    await bot.stop()

    # What an older version left: a bare sync token in the log, the rest in a side file.
    legacy = {"backfilled": [room_id], "pending": {secret_id: {"room_id": room_id, "raw": first.raw}}}
    (bot.store_dir / LEGACY_FILE).write_text(json.dumps(legacy))
    sink.cursor = state.token
    commits = len(sink.commits)
    await bot.start(sink)
    await poll_until(lambda: len(sink.commits) > commits, timeout=20)
    assert not (bot.store_dir / LEGACY_FILE).exists()
    migrated = decode(sink.cursor)
    assert room_id in migrated.backfilled and [p.event_id for p in migrated.pending] == [secret_id]
    assert "na herstart" not in str(sink.cursor) and first.raw["content"]["ciphertext"] not in str(sink.cursor)

    await key.send()
    late = await wait_event(sink, secret_id + "#decrypted")
    assert late.content["body"] == "na herstart leesbaar" and late.relates_to == secret_id
    await poll_until(lambda: decode(sink.cursor).pending == (), timeout=10)


async def test_token_only_login(synapse: SynapseServer, official: OfficialFactory, tmp_path: Path) -> None:
    """With only an access-token file (SSO deployments disable passwords) the source learns its user
    and device from whoami, and captures as that device; the saved token is encrypted in the store."""
    alice = await official("alice")
    name = unique_name("tokenbot")
    user_id, token = await synapse.register_user_async(name, f"pw-{name}")
    token_file = tmp_path / "bot.token"
    token_file.write_text(token + "\n")
    bot = Bot(synapse, user_id, tmp_path / "unused", tmp_path / "token-bot-store", frozenset({alice.user_id}))
    sink = MemorySink()
    try:
        await bot.start(sink, user_id=None, password_file=None, access_token_file=token_file)
        room_id = await invite_bot(alice, bot, encrypted=True)
        message = await alice.send_text(room_id, "via token")
        event = await wait_event(sink, message)
        assert event.kind == Kind.MESSAGE and event.content["body"] == "via token"
        session = load_session(bot.store_dir, bot.config().pickle_key)
        assert session is not None and session.user_id == user_id and session.access_token == token
        # The token is sealed at rest: no file of the store holds it in clear.
        assert [p for p in bot.store_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()] == []
    finally:
        await bot.stop()


async def test_homeserver_restart_is_survived(
    own_synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """While the homeserver is down the source backs off and retries; once it is back, capture goes
    on from the committed cursor without loss."""
    alice = await official("alice", server=own_synapse)
    name = unique_name("archivebot")
    user_id, _ = await own_synapse.register_user_async(name, f"pw-{name}")
    password_file = tmp_path / "bot.password"
    password_file.write_text(f"pw-{name}")
    bot = Bot(own_synapse, user_id, password_file, tmp_path / "bot-store", frozenset({alice.user_id}))
    sink = MemorySink()
    try:
        await bot.start(sink)
        room_id = await invite_bot(alice, bot, encrypted=True)
        first = await alice.send_text(room_id, "voor de herstart")
        await wait_event(sink, first)
        own_synapse.stop()
        await asyncio.sleep(1.0)  # let the source hit the outage and back off
        own_synapse.start()
        second = await alice.send_text(room_id, "na de herstart")
        event = await wait_event(sink, second, timeout=30)
        assert event.content["body"] == "na de herstart"
        assert [e.event_id for e in sink.stream].count(first) == 1
    finally:
        await bot.stop()


def _verify_signed(obj: dict[str, Any], user_id: str, public_b64: str) -> None:
    """Check obj's signature by the Ed25519 key `public_b64` (Matrix canonical JSON)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from bridge.sources.matrix.cross_signing import canonical_json

    def b64(s: str) -> bytes:
        return base64.b64decode(s + "=" * (-len(s) % 4))

    signature = obj["signatures"][user_id][f"ed25519:{public_b64}"]
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    Ed25519PublicKey.from_public_bytes(b64(public_b64)).verify(b64(signature), canonical_json(unsigned))


async def test_bot_device_is_cross_signed(bot: Bot, official: OfficialFactory) -> None:
    """The bot bootstraps cross-signing once: /keys/query (as another user sees it) shows a master
    key, a self-signing key signed by it, and the bot's device signed by the self-signing key; a
    restart keeps the same master key."""
    alice = await official("alice")
    sink = MemorySink()
    await bot.start(sink)

    async def query() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{bot.synapse.url}/_matrix/client/v3/keys/query",
                json={"device_keys": {bot.user_id: []}},
                headers={"Authorization": f"Bearer {alice.client.access_token}"},
            ) as resp,
        ):
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    keys = await query()
    master = keys["master_keys"][bot.user_id]
    (master_pub,) = master["keys"].values()
    self_signing = keys["self_signing_keys"][bot.user_id]
    (ssk_pub,) = self_signing["keys"].values()
    _verify_signed(self_signing, bot.user_id, master_pub)
    device = keys["device_keys"][bot.user_id][bot_device(bot)]
    _verify_signed(device, bot.user_id, ssk_pub)

    await bot.stop()
    await bot.start(sink)
    again = await query()
    assert again["master_keys"][bot.user_id]["keys"] == master["keys"]


async def test_redacted_while_down_is_recovered_with_msc2815(bot: Bot, official: OfficialFactory) -> None:
    """An encrypted message sent and redacted while the bot was down comes back stripped; with
    MSC2815 on the server and moderator power the bot records the decrypted original (marked as
    recovered and redacted-before-capture) as well as the deletion."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await alice.create_room(encrypted=True, invite=[bot.user_id])
    await alice.wait_member(room_id, bot.user_id)
    levels = ok(await alice.client.room_get_state_event(room_id, "m.room.power_levels")).content
    levels["users"][bot.user_id] = 50
    ok(await alice.client.room_put_state(room_id, "m.room.power_levels", levels))
    await wait_event(sink, await alice.send_text(room_id, "bot is moderator"))
    await bot.stop()

    secret_id = await alice.send_text(room_id, "oeps, verkeerde groep")
    redaction_id = str(ok(await alice.client.room_redact(room_id, secret_id)).event_id)
    await bot.start(sink)
    deletion = await wait_event(sink, redaction_id)
    assert deletion.kind == Kind.DELETION and deletion.relates_to == secret_id
    original = sink.find(secret_id)
    assert original is not None and original.kind == Kind.MESSAGE
    assert original.content["body"] == "oeps, verkeerde groep"
    assert original.content["recovered_via"] == "msc2815"
    assert original.content["redacted_before_capture"] is True


async def test_configured_public_room_is_joined_without_invite(bot: Bot, official: OfficialFactory) -> None:
    """A room listed in `rooms` is joined at start-up without an invite, and its messages are captured."""
    alice = await official("alice")
    response = ok(await alice.client.room_create(preset=RoomPreset.public_chat, name="Openbaar overleg"))
    room_id = str(response.room_id)
    sink = MemorySink()
    await bot.start(sink, rooms=frozenset({room_id}))
    await alice.wait_member(room_id, bot.user_id)
    sent = await alice.send_text(room_id, "Agenda voor donderdag")
    event = await wait_event(sink, sent)
    assert event.content["body"] == "Agenda voor donderdag"
