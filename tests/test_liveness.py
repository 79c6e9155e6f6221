"""Heartbeats and the bot's own outages as records (bridge.liveness, wired by bridge.app)."""

from __future__ import annotations

import asyncio
import itertools
import time

from bridge.app import record_restart_gap
from bridge.events import Event, Kind, canonical_bytes, event_from_bytes
from bridge.liveness import CONVERSATION, SOURCE, Heartbeats, heartbeat_notice, restart_gap
from bridge.log.reader import iter_events
from bridge.log.store import CheckpointPolicy, LogStore
from tests.conftest import LogDir, make_event

POLICY = CheckpointPolicy(every_records=1000, every_seconds=3600)


def notices(log: LogDir, notice: str) -> list[tuple[int, Event]]:
    return [
        (seq, e)
        for seq, e in iter_events(log.data_dir, log.keys)
        if e.kind is Kind.NOTICE and e.content.get("notice") == notice
    ]


async def alive_for(log: LogDir, seconds: float, interval: float) -> None:
    """One run of the bot: restart gap at open, heartbeats while running, a chat event in between."""
    async with await LogStore.open(log.data_dir, log.keys, POLICY) as store:
        await record_restart_gap(store, log.data_dir, log.keys)
        beats = Heartbeats(store, interval)
        beats.start()
        await store.append_events([make_event(int(time.time() * 1000))])
        await asyncio.sleep(seconds)
        await beats.stop()
        await store.checkpoint()


async def test_a_stopped_bot_leaves_one_gap_with_its_span_and_none_while_alive(empty_log: LogDir) -> None:
    """Run, stop for ~1.5 s, run again: heartbeats throughout the runs, exactly one gap, spanning from the last
    record of the first run to the second start; the first start (empty log) records no gap."""
    await alive_for(empty_log, 0.6, 0.1)
    first_run_last = max(seq for seq, _ in iter_events(empty_log.data_dir, empty_log.keys))
    last_beat = notices(empty_log, "heartbeat")[-1][1]
    stopped_at = int(time.time() * 1000)
    await asyncio.sleep(1.5)
    restarted_at = int(time.time() * 1000)
    await alive_for(empty_log, 0.4, 0.1)

    gaps = notices(empty_log, "capture_gap")
    assert len(gaps) == 1, gaps
    seq, gap = gaps[0]
    assert gap.source == SOURCE and gap.conversation == CONVERSATION
    assert gap.content["reason"] == "bot_not_running"
    assert last_beat.sent_at is not None
    assert last_beat.sent_at <= gap.content["gap_start_ms"] <= stopped_at
    assert restarted_at <= gap.content["gap_end_ms"] <= restarted_at + 1000
    assert gap.content["gap_end_ms"] - gap.content["gap_start_ms"] >= 1500
    assert gap.content["last_record_seq"] == first_run_last
    assert seq == first_run_last + 1  # the first thing the second run writes
    beats = notices(empty_log, "heartbeat")
    assert len(beats) >= 6  # ~0.6 s and ~0.4 s at 0.1 s
    alive = [e.sent_at for _, e in beats if e.sent_at is not None]
    assert all(b - a < 1000 for a, b in itertools.pairwise(alive) if b < gap.content["gap_start_ms"])


def test_notices_round_trip_through_the_canonical_encoding() -> None:
    """Heartbeat and gap notices are ordinary events: they encode and decode unchanged."""
    for event in (heartbeat_notice(1_700_000_000_000, 900_000, 1_699_999_000_000), restart_gap(1, 2, 0)):
        assert event_from_bytes(canonical_bytes(event)) == event
