"""What every live source does when its upstream is away: back off, wait for `stop`, record the gap.

Contract:
- `Backoff(initial, maximum)`: `next()` returns the wait before the next try
  and doubles the one after (capped at `maximum`); `reset()` starts again from
  `initial` (the upstream was up for a while: a fresh outage); `delay` is the
  current wait without growing it.
- `wait(stop, seconds)` sleeps up to `seconds` and returns True if `stop` was
  set meanwhile (the caller then returns instead of retrying).
- `Outage(start_ms, reason)` is an outage not yet in the log; `started` is
  monotonic, so `overdue(limit)` (True once, the first time the outage is at
  least `limit` seconds old) does not jump with the wall clock.
- `gap_notice(...)` is pure: the Kind.NOTICE `Event` that records an outage
  (`content.notice = "capture_gap"`, `gap_start_ms`, `gap_end_ms`, `reason`,
  plus the source's own `detail`), event id `gap:<start>-<end>`. It says that
  capture was late or down, not which events were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.events import ConversationId, Event, SourceName, notice

__all__ = ["CAPTURE_GAP", "Backoff", "Outage", "gap_notice", "wait"]

#: `content.notice` of the record of an outage.
CAPTURE_GAP = "capture_gap"


class Backoff:
    """Exponential backoff between reconnects (see module docstring)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        """The wait before this try; the next one doubles, up to `maximum`."""
        delay = self.delay
        self.delay = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial


async def wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


@dataclass(slots=True)
class Outage:
    """An outage not yet recorded in the log."""

    start_ms: int
    reason: str
    started: float = field(default_factory=time.monotonic)
    alerted: bool = False

    def overdue(self, limit_seconds: float) -> bool:
        """True the first time the outage has lasted `limit_seconds`, then never again."""
        if self.alerted or time.monotonic() - self.started < limit_seconds:
            return False
        self.alerted = True
        return True


def gap_notice(
    source: SourceName,
    conversation: ConversationId,
    outage: Outage,
    end_ms: int,
    detail: Mapping[str, Any],
) -> Event:
    """The record of `outage`, ended at `end_ms` (see module docstring)."""
    return notice(
        source,
        conversation,
        f"gap:{outage.start_ms}-{end_ms}",
        end_ms,
        {
            "notice": CAPTURE_GAP,
            "gap_start_ms": outage.start_ms,
            "gap_end_ms": end_ms,
            "reason": outage.reason,
            **detail,
        },
    )
