"""What both live sources share when upstream is away (bridge/sources/outage.py) and the clock (bridge/clock.py)."""

from __future__ import annotations

import asyncio
import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from bridge.clock import now_ms
from bridge.events import MATRIX, ConversationId, Kind, canonical_bytes
from bridge.sources.outage import CAPTURE_GAP, Backoff, Outage, gap_notice, wait


def test_now_ms_is_wall_clock_milliseconds() -> None:
    """now_ms() is integer milliseconds since the epoch, the unit of sent_at and received_at."""
    before = time.time_ns() // 1_000_000
    value = now_ms()
    assert isinstance(value, int)
    assert before <= value <= time.time_ns() // 1_000_000


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    """next() returns 1, 2, 4, 8, 8 ... for (1, 8); reset() starts again at the initial wait."""
    backoff = Backoff(1.0, 8.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.delay == 1.0
    assert backoff.next() == 1.0


@given(st.floats(0.01, 10.0), st.floats(0.01, 100.0), st.integers(1, 40))
def test_backoff_never_exceeds_the_maximum(initial: float, maximum: float, tries: int) -> None:
    """Whatever the settings, no wait is longer than max(initial, maximum) and none shrinks."""
    backoff = Backoff(initial, maximum)
    waits = [backoff.next() for _ in range(tries)]
    assert waits[0] == initial
    assert all(w <= max(initial, maximum) for w in waits)
    assert all(b >= a or b == maximum for a, b in itertools.pairwise(waits))


async def test_wait_returns_true_when_stopped() -> None:
    """wait() returns at once with True when stop is set, and False after the timeout otherwise."""
    stop = asyncio.Event()
    assert await wait(stop, 0.01) is False
    stop.set()
    started = time.monotonic()
    assert await wait(stop, 30.0) is True
    assert time.monotonic() - started < 5.0


def test_outage_is_overdue_once() -> None:
    """overdue(limit) is False before the limit, True the first time past it, then False again."""
    outage = Outage(now_ms(), "refused", started=time.monotonic() - 10.0)
    assert outage.overdue(60.0) is False
    assert outage.overdue(5.0) is True
    assert outage.overdue(5.0) is False


def test_gap_notice_records_the_outage() -> None:
    """The notice is a NOTICE event named by its span, with the common fields and the source's detail."""
    outage = Outage(1_000, "connection refused")
    event = gap_notice(MATRIX, ConversationId("notice:matrix:@bot:hs"), outage, 5_000, {"homeserver": "http://hs"})
    assert event.kind is Kind.NOTICE
    assert event.event_id == "gap:1000-5000"
    assert event.sent_at == event.received_at == 5_000
    assert event.sender is None
    assert event.content == {
        "notice": CAPTURE_GAP,
        "gap_start_ms": 1_000,
        "gap_end_ms": 5_000,
        "reason": "connection refused",
        "homeserver": "http://hs",
    }
    assert canonical_bytes(event)  # storable as is
