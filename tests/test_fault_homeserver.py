"""Homeserver faults: Synapse stopped and restarted mid-stream, and unreachable when the bot starts.

The bot is the real `chatarchief run`; Synapse is a private one (`own_synapse`)
so it can be stopped. The bot must wait, reconnect on its own, lose nothing, and
report the outage twice: in its log lines and as a `capture_gap` NOTICE event
in the archive itself (so the record shows when capture was late).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from bridge.dev.synapse import DevServerError, SynapseServer
from bridge.events import Kind
from bridge.log import keys as keyfile
from bridge.log.verify import verify_log
from tests.support.botrun import BotRun, chatarchief, write_config
from tests.support.figures import record
from tests.support.logview import LogView
from tests.support.officials import Official, OfficialFactory, poll_until, unique_name

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


async def send_retrying(person: Official, room: str, body: str) -> str:
    """Send like a client whose server may be down: retry until the server accepts (ids of accepted sends only)."""
    while True:
        try:
            return await person.send_text(room, body)
        except (DevServerError, aiohttp.ClientError, OSError, TimeoutError):
            await asyncio.sleep(0.2)


def notices(view: LogView) -> list[dict[str, object]]:
    return [e.content for _, e in view.events() if e.kind is Kind.NOTICE and e.content.get("notice") == "capture_gap"]


async def make_bot(server: SynapseServer, tmp_path: Path, allowed: str) -> tuple[str, BotRun, Path]:
    name = unique_name("hsbot")
    bot_id, _ = await server.register_user_async(name, f"pw-{name}")
    config = write_config(tmp_path, server, bot_id, f"pw-{name}", allowed)
    assert chatarchief("init", "--config", str(config)).returncode == 0
    return bot_id, BotRun(config, tmp_path), tmp_path / "data"


async def test_synapse_restart_mid_stream_loses_nothing_and_is_recorded(
    own_synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Synapse is stopped (SIGTERM) while an official streams into a plain and an encrypted room, kept
    down for a few seconds and started again: the bot reconnects by itself, every accepted event is in
    the log exactly once (encrypted ones decrypted), its log says the homeserver was unreachable, and a
    `capture_gap` NOTICE event spanning the outage is in the archive; `verify` passes."""
    alice = await official("alice", server=own_synapse)
    bot_id, bot, data_dir = await make_bot(own_synapse, tmp_path, alice.user_id)
    keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
    try:
        proc = bot.start()
        with LogView(data_dir, keys) as view:
            await poll_until(lambda: bool(view.cursors()) or proc.poll() is not None, timeout=60)
            plain = await alice.create_room(encrypted=False, invite=[bot_id])
            secret = await alice.create_room(encrypted=True, invite=[bot_id])
            await alice.wait_member(plain, bot_id)
            await alice.wait_member(secret, bot_id)
            sent: list[tuple[str, str]] = []

            async def stream() -> None:
                for i in range(120):
                    room = secret if i % 2 else plain
                    sent.append((room, await send_retrying(alice, room, f"bericht {i}")))

            sender = asyncio.create_task(stream())
            await poll_until(lambda: view.count_stored(sent) >= 30, timeout=60)
            down_at = len(sent)
            await asyncio.to_thread(own_synapse.stop)
            await poll_until(lambda: b"matrix homeserver unreachable" in bot.log_bytes(), timeout=60)
            await asyncio.sleep(2)
            await asyncio.to_thread(own_synapse.start)
            await sender
            await poll_until(lambda: view.count_stored(sent) == len(sent) or proc.poll() is not None, timeout=120)
            assert proc.poll() is None, bot.stderr_tail()
            await poll_until(lambda: bool(notices(view)), timeout=30)

            stored = Counter((e.conversation, e.event_id) for _, e in view.events())
            by_id = {e.event_id: e for _, e in view.events()}
            gaps = notices(view)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()

    lost = [k for k in sent if stored[k] == 0]
    duplicated = [k for k in sent if stored[k] > 1]
    record("homeserver_restart", sent=len(sent), sent_before_stop=down_at, lost=len(lost),
           duplicated=len(duplicated), gap_notices=len(gaps))  # fmt: skip
    assert lost == [] and duplicated == []
    assert all(by_id[eid].kind is Kind.MESSAGE for room, eid in sent if room == secret)
    assert len(gaps) == 1
    gap = gaps[0]
    assert isinstance(gap["gap_start_ms"], int) and isinstance(gap["gap_end_ms"], int)
    assert gap["gap_end_ms"] > gap["gap_start_ms"]
    logs = bot.log_bytes()
    assert b"matrix homeserver unreachable" in logs and b"outage recorded" in logs
    assert verify_log(data_dir, keys).unsealed == 0


async def test_synapse_unreachable_at_start_up_bot_waits_then_captures(
    own_synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Started while its homeserver is down, `chatarchief run` does not exit: it logs the outage, keeps
    retrying, and once Synapse is up logs in, records a `capture_gap` NOTICE and captures an encrypted
    room it is then invited to."""
    alice = await official("alice", server=own_synapse)
    bot_id, bot, data_dir = await make_bot(own_synapse, tmp_path, alice.user_id)
    keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
    await asyncio.to_thread(own_synapse.stop)
    try:
        proc = bot.start()
        await poll_until(lambda: b"matrix homeserver unreachable" in bot.log_bytes() or proc.poll() is not None, 60)
        assert proc.poll() is None, bot.stderr_tail()
        await asyncio.sleep(1.5)
        assert proc.poll() is None, "the bot gave up while the homeserver was down"
        await asyncio.to_thread(own_synapse.start)
        with LogView(data_dir, keys) as view:
            await poll_until(lambda: bool(view.cursors()) or proc.poll() is not None, timeout=90)
            assert proc.poll() is None, bot.stderr_tail()
            secret = await alice.create_room(encrypted=True, invite=[bot_id])
            await alice.wait_member(secret, bot_id)
            sent = [(secret, await alice.send_text(secret, f"na de storing {i}")) for i in range(5)]
            await poll_until(lambda: view.count_stored(sent) == 5, timeout=60)
            assert all(e.kind is Kind.MESSAGE for _, e in view.events() if e.conversation == secret and
                       e.event_id in {eid for _, eid in sent})  # fmt: skip
            gaps = notices(view)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()
    assert len(gaps) == 1 and "gap_start_ms" in gaps[0]
    assert verify_log(data_dir, keys).unsealed == 0
