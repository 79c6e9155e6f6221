"""The sealing path's hook: `LogStore.on_checkpoint` fires after a committed signed checkpoint, never blocks
it, and wakes the witness client at once (`run` wires it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.log.store import CheckpointPolicy, LogStore
from bridge.witness.client import Witnessing
from bridge.witness.cosigned import CosignatureStore
from tests.conftest import LogDir, make_event
from tests.test_witness_server import leaves_of, make_witness, running


async def test_hook_fires_after_each_signed_commit_only(empty_log: LogDir) -> None:
    """Called once per transaction that signed a checkpoint (policy, explicit, key rotation), not for
    appends that signed none; a listener that raises does not fail the write."""
    calls: list[int] = []
    async with await LogStore.open(empty_log.data_dir, empty_log.keys, CheckpointPolicy(5, 3600)) as store:
        store.on_checkpoint = lambda: calls.append(store.size)
        await store.append_events([make_event(i) for i in range(3)])
        assert calls == []
        await store.append_events([make_event(i) for i in range(3, 6)])
        assert len(calls) == 1
        await store.append_events([make_event(6)])
        await store.checkpoint()
        await store.rotate_data_key()
        assert len(calls) == 3

        def broken() -> None:
            raise RuntimeError("listener bug")

        store.on_checkpoint = broken
        await store.append_events([make_event(i) for i in range(7, 20)])
        assert store.size == 2 + 1 + 20


async def test_a_signed_checkpoint_wakes_the_witness_client(empty_log: LogDir, tmp_path: Path) -> None:
    """With a poll interval of an hour, a checkpoint signed through the store is cosigned within seconds:
    the hook, not the poll, started the round."""
    config, key = make_witness(tmp_path, [empty_log])
    policy = CheckpointPolicy(10**6, 3600)
    async with running(config) as url, await LogStore.open(empty_log.data_dir, empty_log.keys, policy) as store:
        cosigned = CosignatureStore(empty_log.data_dir)
        w = Witnessing(
            [(url, key.verifier)], cosigned, store.latest_checkpoint,
            lambda start, end: leaves_of(empty_log)[start:end], poll_seconds=3600,
        )  # fmt: skip
        store.on_checkpoint = w.wake
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(0.3)  # the first round (at start) is done; the client now sleeps for an hour
        await store.append_events([make_event(i) for i in range(4)])
        await store.checkpoint()
        for _ in range(100):
            if cosigned.last_cosigned(key.verifier, empty_log.keys.key_name) == store.size:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        assert cosigned.last_cosigned(key.verifier, empty_log.keys.key_name) == store.size == 6
        cosigned.close()
