"""Stopping always works (bridge.capture): SIGTERM ends the bot within seconds in every state.

Before: a commit retrying against failing storage (`StorageRetry`) ignored stop, so a bot whose log
could not be written (full disk, or a second writer's "UNIQUE constraint failed") needed SIGKILL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from bridge.capture import CaptureStopped, LogSink, supervise
from bridge.errors import StorageError
from bridge.events import Event
from tests.conftest import make_event


class FailingStore:
    """A log whose every write fails, as on a full disk."""

    def __init__(self) -> None:
        self.attempts = 0

    async def append_events(self, events: Sequence[Event], cursor: Any = None) -> Any:
        self.attempts += 1
        raise StorageError("database or disk is full")


async def test_stop_ends_a_commit_paused_by_failing_storage() -> None:
    """While storage fails the commit keeps retrying (nothing acknowledged); stop ends it at once with
    CaptureStopped instead of retrying forever."""
    stop = asyncio.Event()
    store = FailingStore()
    sink = LogSink(store, "signal:+31600000000", retry_initial=10, retry_max=10, stop=stop)  # type: ignore[arg-type]
    acked: list[int] = []

    async def source() -> None:
        await sink.commit([make_event(0)], "cursor-1")
        acked.append(1)

    task = asyncio.create_task(source())
    while not sink.paused:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    stop.set()
    with pytest.raises(CaptureStopped):
        await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1
    assert acked == [] and store.attempts == 1


async def test_supervise_treats_a_stop_during_an_outage_as_a_clean_stop() -> None:
    """A source ended by CaptureStopped is a clean stop: supervise returns without raising."""
    stop = asyncio.Event()
    sink = LogSink(FailingStore(), "s", retry_initial=10, stop=stop)  # type: ignore[arg-type]
    task = asyncio.create_task(sink.commit([make_event(0)], "c"))
    while not sink.paused:
        await asyncio.sleep(0.01)
    stop.set()
    started = time.monotonic()
    await supervise([task], stop, [sink], grace=30)
    assert time.monotonic() - started < 1 and task.done()


async def test_supervise_cancels_a_source_that_ignores_stop_after_the_grace() -> None:
    """A source stuck elsewhere (a hung upstream call) is cancelled once the grace is over."""
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(stuck())
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await supervise([task], stop, grace=0.3)
    assert 0.3 <= time.monotonic() - started < 2 and cancelled.is_set()


async def test_supervise_raises_a_source_failure() -> None:
    """A source failing for another reason is not swallowed: it propagates (exit 1 from `run`)."""

    async def broken() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await supervise([asyncio.create_task(broken())], asyncio.Event())
