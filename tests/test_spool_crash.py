"""Crash and restart with the spool: `chatarchief run` (reading the module's spool) SIGKILLed at random moments.

A real Synapse whose module seals plain-room events to the key `chatarchief spool-key` prints, the real command
as a subprocess, one official streaming messages into a plain room. The bot is killed with SIGKILL at seeded
random moments and started again; afterwards every message is in the log exactly once (the spool's position is
committed with its records: a kill re-reads from it, the log's dedup drops the sync loop's copies) and the spool
path carried them (its cursor's seq). The sync loop runs too, so a message the spool path alone lost would still
be stored: what this pins is no duplicate, no flagged frame, no stall of the spool path across kills; the
spool path alone is pinned by tests/test_spool_synapse.py (sync loop held, restart from the committed position).
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bridge.dev.officials import make_official
from bridge.dev.synapse import SynapseServer, archiver_module_config, free_port
from bridge.log import keys as keyfile
from tests.support.botrun import BotRun, chatarchief, write_config
from tests.support.logview import LogView
from tests.support.officials import poll_until

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

MESSAGES, KILLS, SEED = 120, 5, 20261202
ARCHIVER, MINISTER = "@archiver:localhost", "@minister:localhost"


async def test_sigkilled_bot_reading_the_spool_stores_each_plain_message_once(tmp_path: Path) -> None:
    """Every message sent while the bot is killed and restarted 5 times is in the log once; the spool cursor
    covers them; no spool frame was flagged (the bot's kills never touch the module's spool)."""
    rng = random.Random(SEED)
    server = SynapseServer(tmp_path / "synapse", port=free_port())
    spool_dir = tmp_path / "spool"
    config = write_config(
        tmp_path, server, ARCHIVER, "pw-archiver", MINISTER, extra_matrix=f'spool_dir = "{spool_dir}"'
    )
    assert chatarchief("init", "--config", str(config)).returncode == 0
    printed = chatarchief("spool-key", "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    module = archiver_module_config(ARCHIVER, officials=(MINISTER,))
    module["config"]["spool"] = {"path": str(spool_dir), "public_key": printed.stdout.strip()}
    server.archiver_module = module
    await asyncio.to_thread(server.start)
    bot = BotRun(config, tmp_path)
    try:
        await server.register_user_async("archiver", "pw-archiver")
        minister = await make_official(server, tmp_path / "people", name="minister")
        keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
        first = bot.start()
        with LogView(tmp_path / "data", keys) as view:
            await poll_until(lambda: bool(view.cursors()) or first.poll() is not None, timeout=60)
            assert first.poll() is None, bot.stderr_tail()
            room = await minister.create_room(encrypted=False)
            sent: list[str] = []

            async def stream() -> None:
                for i in range(MESSAGES):
                    sent.append(await minister.send_text(room, f"bericht {i}"))
                    await asyncio.sleep(0.02)

            sending = asyncio.create_task(stream())
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                proc = bot.current
                assert proc.poll() is None, bot.stderr_tail()
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                bot.start()
            await sending
            expected = [(room, eid) for eid in sent]
            await poll_until(
                lambda: view.count_stored(expected) == len(expected) or bot.current.poll() is not None,
                timeout=120,
                interval=0.5,
            )
            assert bot.current.poll() is None, bot.stderr_tail()
            spool_cursor = orjson.loads(view.cursors()[f"matrix-spool:{ARCHIVER}"])
            events = [e for _, e in view.events()]
            bot.current.send_signal(signal.SIGTERM)
            assert bot.current.wait(30) == 0, bot.stderr_tail()
        stored = Counter(e.event_id for e in events if e.conversation == room)
        assert [eid for eid in sent if stored[eid] != 1] == []
        assert spool_cursor["seq"] >= MESSAGES  # the spool carried them (plus the room's state events)
        assert not [e for e in events if e.content.get("notice") == "spool_frame_unreadable"]
        await minister.client.close()
    finally:
        bot.cleanup()
        await asyncio.to_thread(server.stop)
