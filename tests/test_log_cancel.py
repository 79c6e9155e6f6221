"""A write cancelled at any moment never leaves the log's connection inside a transaction.

Why: the capture loop, `run`'s stop and the importer's error path cancel appends in flight. The writer's
statements run on the connection's own thread (aiosqlite) or server session (psycopg): a cancelled await does not
stop a statement already handed over. On PostgreSQL psycopg answered a cancelled query by closing the writer's
connection (and the writer lock with it): every later write failed, the checkpoint `run` signs at stop
included (this test failed so on the old code). On SQLite a cancellation landing while `BEGIN` was on its way
left a transaction open ("cannot start a transaction within a transaction", seen while building the import
workers; this test's random moments did not hit that window on the old code). Any cancelled write must end
(commit or roll back) before the cancellation goes on, with the writer's bookkeeping matching what committed:
the next write and checkpoint work, and `verify` finds every record sealed.
"""

from __future__ import annotations

import asyncio
import random

from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, make_event


async def test_cancelling_appends_at_random_moments_leaves_the_log_writable(any_empty_log: LogDir) -> None:
    rng = random.Random(1509)
    log = any_empty_log
    cancelled = 0
    async with await LogStore.open(log.data_dir, log.keys) as store:
        for round_ in range(100):
            batch = [make_event(round_ * 10 + i) for i in range(10)]
            task = asyncio.create_task(store.append_events(batch))
            # from "not yet started" through "BEGIN on its way" to "committing": every window gets hit
            for _ in range(rng.randrange(0, 8)):
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
                cancelled += 1
            await asyncio.gather(task, return_exceptions=True)
            await store.checkpoint()  # would fail if a transaction had been left open
        size = store.size
    assert cancelled >= 40
    report = verify_log(log.data_dir, log.keys)
    assert report.records == size and report.unsealed == 0
