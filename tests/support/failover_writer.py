"""A bot stand-in for the failover test: `python -m tests.support.failover_writer CONFIG KEY_FILE TOTAL`.

It opens the log through `bridge.app.open_store` (the code `run` uses: with `[storage] standby = true` it waits
for the PostgreSQL writer lock), then plays a source with a cursor, like Matrix's `next_batch`: it resumes
after the cursor the log holds ("feed": the last event number made durable) and appends events in batches of
7, each batch with its cursor in the same transaction, until TOTAL events. It prints `active <size>` when it
holds the lock and `appended <last>` after each durable batch (what a source would acknowledge).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bridge import config
from bridge.app import open_store
from bridge.log import keys as keyfile
from tests.conftest import make_event

CURSOR = "feed"


async def main(config_file: Path, key_file: Path, total: int) -> None:
    settings = config.load(config_file)
    keys = keyfile.load(key_file)
    store = await open_store(settings, settings.storage.data_dir, keys, asyncio.Event())
    assert store is not None
    async with store:
        print(f"active {store.size}", flush=True)
        cursor = await store.get_cursor(CURSOR)
        nxt = 0 if cursor is None else int(cursor) + 1
        while nxt < total:
            batch = list(range(nxt, min(total, nxt + 7)))
            await store.append_events([make_event(i) for i in batch], cursor=(CURSOR, str(batch[-1])))
            print(f"appended {batch[-1]}", flush=True)
            nxt = batch[-1] + 1
            await asyncio.sleep(0.01)  # a live source: events keep arriving while the test pulls the plug
        await store.checkpoint()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
