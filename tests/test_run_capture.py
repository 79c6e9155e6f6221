"""`chatarchief run` end to end: the real command as a subprocess, a real Synapse, real nio officials.

The bot's log is watched through a read-only SQLite view (WAL lets a reader
see each commit while the bot writes) and decrypted with the key file, so the
assertions are about what is durable, not about what the bot says it did.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bridge.dev.synapse import SynapseServer
from bridge.events import Event, Kind
from bridge.log import keys as keyfile
from bridge.log.verify import verify_log
from bridge.sources.matrix.session import load_session
from tests.support.botrun import BotRun, chatarchief, files_containing, write_config
from tests.support.logview import LogView
from tests.support.officials import OfficialFactory, poll_until, unique_name

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


async def test_run_survives_sigkill_and_seals_on_sigterm(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """`chatarchief run` captures a plain and an encrypted room; SIGKILLed while an official streams
    300 messages and started again, it holds every sent event exactly once (decrypted, by event id),
    the tail the kill left unsealed is sealed at the restart, SIGTERM makes it exit 0 with a
    checkpoint covering every record, `verify` passes, and neither a message body nor the bot's
    access token appears in its logs or in any file of the data dir."""
    alice = await official("alice")
    name = unique_name("archivebot")
    password = f"pw-{name}"
    bot_id, _ = await synapse.register_user_async(name, password)
    config = write_config(tmp_path, synapse, bot_id, password, alice.user_id)
    init = chatarchief("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    data_dir = tmp_path / "data"
    keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
    bot = BotRun(config, tmp_path)
    marker = f"ZEGEL{uuid.uuid4().hex}"
    try:
        first = bot.start()
        with LogView(data_dir, keys) as view:
            # The first commit comes after the device's keys are up: only then may it be invited.
            await poll_until(lambda: bool(view.cursors()) or first.poll() is not None, timeout=30)
            assert first.poll() is None, bot.stderr_tail()

            plain = await alice.create_room(encrypted=False, invite=[bot_id])
            secret = await alice.create_room(encrypted=True, invite=[bot_id])
            await alice.wait_member(plain, bot_id)
            await alice.wait_member(secret, bot_id)
            opening = [
                (plain, await alice.send_text(plain, f"{marker} open")),
                (secret, await alice.send_text(secret, f"{marker} dicht")),
            ]
            await poll_until(lambda: view.count_stored(opening) == 2, timeout=30)

            sent: list[tuple[str, str]] = []
            bodies: dict[str, str] = {}

            async def stream() -> None:
                for i in range(300):
                    room = secret if i % 2 else plain
                    body = f"{marker} bericht {i}"
                    event_id = await alice.send_text(room, body)
                    sent.append((room, event_id))
                    bodies[event_id] = body

            sender = asyncio.create_task(stream())
            await poll_until(lambda: view.count_stored(sent) >= 60, timeout=30)
            assert not sender.done(), "the stream ended before the kill: not mid-stream"
            first.kill()
            assert first.wait(10) == -signal.SIGKILL
            size_at_kill = view.size()

            second = bot.start()
            await sender
            await poll_until(lambda: view.count_stored(sent) == 300 or second.poll() is not None, timeout=60)
            assert second.poll() is None, bot.stderr_tail()
            # `run` seals what a crash left unsealed before it captures anything new.
            assert any(size >= size_at_kill for size in view.checkpoint_sizes())

            # Nothing lost, nothing duplicated: decrypt every record and count event ids.
            events = [e for _, e in view.events()]
            stored: Counter[tuple[str, str]] = Counter((e.conversation, e.event_id) for e in events)
            expected = [*opening, *sent]
            assert [k for k in expected if stored[k] != 1] == []
            by_id: dict[str, Event] = {e.event_id: e for e in events}
            for _, event_id in sent:
                assert by_id[event_id].kind == Kind.MESSAGE  # decrypted, not `undecryptable`
                assert by_id[event_id].content["body"] == bodies[event_id]

            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0, bot.stderr_tail()
            size = view.size()
            assert view.checkpoint_sizes()[-1] == size, "SIGTERM must seal every record"
    finally:
        bot.cleanup()

    report = verify_log(data_dir, keys)
    assert report.unsealed == 0 and report.records == size
    verified = chatarchief("verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    logs = b"".join(p.read_bytes() for p in bot.logs)
    assert b"capture running" in logs and b"capture stopped" in logs
    leaks = [p for p in bot.logs if marker.encode() in p.read_bytes()] + files_containing(data_dir, marker.encode())
    assert leaks == [], f"message bodies in plaintext: {leaks}"
    session = load_session(data_dir / "matrix-store", keys.derive("matrix-nio-store"))
    assert session is not None
    token = session.access_token.encode()
    assert [p for p in bot.logs if token in p.read_bytes()] + files_containing(data_dir, token) == []
