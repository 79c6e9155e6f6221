"""Failover in an encrypted room: the standby's own device keeps the room keys it was sent while it waited.

The active and the standby bot are two Matrix devices of one bot account on one PostgreSQL log, and they
share the log's sync cursor (so the standby resumes exactly after the active bot's last durable batch). A
sync token also carries the to-device position of the device that asked for it, and Synapse deletes a
device's to-device messages up to the `since` it is given. Senders share a room's Megolm key with every
device of the bot they know, the standby's included; if the standby resumed with the other device's token
its first sync would delete its own queued room keys unread, and every message after the takeover in a
session started before it would be stored undecryptable until the senders rotate their session.

Real Synapse, real nio officials, real `chatarchief run` processes, real PostgreSQL (tests/support/pg.py).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from tests.support.logview import LogView
from tests.support.officials import OfficialFactory, poll_until
from tests.support.pg import PgServer
from tests.support.standby import two_hosts


@pytest.mark.synapse
@pytest.mark.slow
async def test_standby_decrypts_an_encrypted_room_after_taking_over(
    synapse: SynapseServer, official: OfficialFactory, pg_server: PgServer, tmp_path: Path
) -> None:
    """Host B waits as the standby (having logged its device in and uploaded its keys first) while host A
    captures an encrypted room. Alice's client shares the room's Megolm key with both bot devices. A is
    SIGKILLed; B takes over and every message, before and after the kill, is in the log exactly once and
    decrypted."""
    alice = await official("alice")
    hosts = await two_hosts(synapse, pg_server, tmp_path, alice.user_id)
    bot_id, keys, bot_a, bot_b = hosts.bot_id, hosts.keys, hosts.a, hosts.b
    sent: list[tuple[str, str]] = []
    try:
        with LogView(hosts.data_a, keys) as view:
            active = bot_a.start()
            await poll_until(lambda: bool(view.cursors()) or active.poll() is not None, timeout=60)
            assert active.poll() is None, bot_a.stderr_tail()
            standby = bot_b.start()
            await poll_until(lambda: b"standby: waiting" in bot_b.log_bytes() or standby.poll() is not None, 60)
            assert standby.poll() is None, bot_b.stderr_tail()

            room = await alice.create_room(encrypted=True, invite=[bot_id])
            await alice.wait_member(room, bot_id)

            async def stream(start: int, n: int) -> None:
                for i in range(start, start + n):
                    sent.append((room, await alice.send_text(room, f"vertrouwelijk bericht {i}")))
                    await asyncio.sleep(0.05)

            await stream(0, 10)
            await poll_until(lambda: view.count_stored(sent) == len(sent) or active.poll() is not None, 60)
            active.send_signal(signal.SIGKILL)
            active.wait(10)
            await stream(10, 5)  # while nobody writes
            await poll_until(lambda: b"standby: took over" in bot_b.log_bytes() or standby.poll() is not None, 60)
            assert standby.poll() is None, bot_b.stderr_tail()
            await stream(15, 5)
            await poll_until(lambda: view.count_stored(sent) == len(sent) or standby.poll() is not None, 90)
            assert standby.poll() is None, bot_b.stderr_tail()
            by_id = {e.event_id: e for _, e in view.events() if e.conversation == room}
            stored = Counter(e.event_id for _, e in view.events() if e.conversation == room)
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(30) == 0, bot_b.stderr_tail()
    finally:
        hosts.cleanup()
    # B's device was ready before the room existed; it collected its own queued room keys once, at the takeover.
    assert b"standby: Matrix device ready" in bot_b.log_bytes()
    assert bot_b.log_bytes().count(b"collected this device's to-device messages") == 1
    kinds = [by_id[eid].kind for _, eid in sent]
    undecrypted = [i for i, k in enumerate(kinds) if k is not Kind.MESSAGE]
    print(f"encrypted failover: {len(sent)} sent, not decrypted: {undecrypted}")
    assert [eid for _, eid in sent if stored[eid] != 1] == []
    assert undecrypted == []
    assert [by_id[eid].content.get("body") for _, eid in sent] == [f"vertrouwelijk bericht {i}" for i in range(20)]
