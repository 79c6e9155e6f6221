"""Liveness as records: heartbeats while the bot runs, and a gap record for the time it did not.

Contract:
- `heartbeat_notice(at_ms, interval_ms, started_ms)` is pure: the Kind.NOTICE `Event` proving the bot was alive at
  `at_ms` (`content.notice = "heartbeat"`, `interval_ms`, `running_since_ms`), source `chatarchief`, conversation
  `liveness`, event id `heartbeat:<at_ms>`. With one every `interval_ms`, a month without chat shows heartbeats,
  a dead bot shows none.
- `restart_gap(last_ms, now_ms, last_seq)` is pure: the `capture_gap` notice (as `sources.outage.gap_notice`
  writes for a source's outage) of the bot itself: it was not running somewhere between its log's last record
  (`gap_start_ms`, the last sign of life) and this start (`gap_end_ms`); reason `bot_not_running`. A start-up
  proves the outage (one writer per data dir: no other bot captured meanwhile), so it is recorded at every start
  of a non-empty log and never while the bot runs: no false gaps.
- `Heartbeats(store, interval_s)` appends a heartbeat at once and then every `interval_s` until stopped; a failing
  append is logged (ALERT) and tried again at the next beat; it never stops capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bridge.clock import now_ms
from bridge.errors import StorageError
from bridge.events import ConversationId, Event, SourceName, notice
from bridge.log.store import LogStore

__all__ = ["CONVERSATION", "HEARTBEAT", "SOURCE", "Heartbeats", "heartbeat_notice", "restart_gap"]

log = logging.getLogger(__name__)

#: The archiver itself, as a source of records about its own liveness.
SOURCE = SourceName("chatarchief")
CONVERSATION = ConversationId("liveness")
HEARTBEAT = "heartbeat"
CAPTURE_GAP = "capture_gap"  # the same notice as bridge.sources.outage.CAPTURE_GAP


def heartbeat_notice(at_ms: int, interval_ms: int, started_ms: int) -> Event:
    return notice(
        SOURCE,
        CONVERSATION,
        f"heartbeat:{at_ms}",
        at_ms,
        {"notice": HEARTBEAT, "interval_ms": interval_ms, "running_since_ms": started_ms},
    )


def restart_gap(last_ms: int, now: int, last_seq: int) -> Event:
    return notice(
        SOURCE,
        CONVERSATION,
        f"gap:{last_ms}-{now}",
        now,
        {
            "notice": CAPTURE_GAP,
            "gap_start_ms": last_ms,
            "gap_end_ms": now,
            "reason": "bot_not_running",
            "last_record_seq": last_seq,
        },
    )


class Heartbeats:
    """A heartbeat record every `interval_s` seconds while running (see module docstring)."""

    def __init__(self, store: LogStore, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.beats = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        started = now_ms()
        interval_ms = round(self._interval_s * 1000)
        while True:
            try:
                await self._store.append_events([heartbeat_notice(now_ms(), interval_ms, started)])
                self.beats += 1
            except StorageError as exc:
                log.error("ALERT heartbeat not recorded; tried again at the next beat", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)
