"""An insider who can write to the spool directory cannot slip a message into the archive unquestioned.

The spool's frames are sealed *to* the bot's public key, which sits in Synapse's module config: anyone who can
read that config and write the spool directory can seal a frame the bot opens like Synapse's own
(docs/synapse-module.md). The attack below does exactly that with what such an insider has (the public key,
the documented frame format: here the module's own `encode_frame`, as the docs describe it) and checks that
the archive questions the forged message: the sync loop never brings it, so after the grace period the log
holds a `spool_event_unconfirmed` notice naming it in its room, with an ALERT, while the messages Synapse
really carried are confirmed and get no notice. Before `bridge/sources/matrix/confirm.py` the forged message
was archived as an ordinary message, with nothing beside it.

The pure bookkeeping (`Confirmations`) is tested on its own with a fake clock, including a hypothesis model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.events import Kind
from bridge.sources.matrix.confirm import UNCONFIRMED, Confirmations, Spooled
from tests.support.officials import Official, poll_until
from tests.support.spool import SpoolBot, SpoolServer, append_frame, frame_events, minister, spool_synapse

__all__ = ["minister", "spool_synapse"]  # fixtures used by name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def item(n: int, file: str = "b", offset: int = 0) -> Spooled:
    return Spooled("!r:x", f"$e{n}", file, offset, 5)


def test_only_frames_past_the_boundary_wait_and_the_sync_loop_confirms_them() -> None:
    clock = Clock()
    c = Confirmations(grace=10, clock=clock)
    c.spooled([item(0)])  # before any connection: nothing is known about it
    c.connected(("b", 100))
    c.spooled([item(1, "a", 900), item(2, "b", 99), item(3, "b", 100), item(4, "c", 0)])
    assert c.waiting() == 2  # $e3 (at the boundary) and $e4 (a newer file)
    c.synced(["$e3"])
    clock.now += 11
    c.batch_done()
    c.batch_done()
    assert [(i.event_id, round(w)) for i, w in c.overdue()] == [("$e4", 11)]
    assert c.waiting() == 0 and c.overdue() == []


def test_an_event_the_sync_loop_brought_first_needs_no_confirmation() -> None:
    c = Confirmations(grace=0, clock=Clock())
    c.connected(("", 0))
    c.synced(["$e1"])
    c.spooled([item(1), item(2)])
    c.batch_done()
    c.batch_done()
    assert [i.event_id for i, _ in c.overdue()] == ["$e2"]


def test_overdue_needs_the_grace_period_and_two_sync_batches() -> None:
    clock = Clock()
    c = Confirmations(grace=60, clock=clock)
    c.connected(("", 0))
    c.spooled([item(1)])
    clock.now += 3600
    c.batch_done()
    assert c.overdue() == []  # an hour, but one batch: the sync loop may not have reached it (a long backfill)
    c.batch_done()
    assert [i.event_id for i, _ in c.overdue()] == ["$e1"]
    c2 = Confirmations(grace=60, clock=clock)
    c2.connected(("", 0))
    c2.spooled([item(1)])
    for _ in range(5):
        c2.batch_done()
    assert c2.overdue() == []  # many batches within seconds: not yet


def test_past_the_cap_the_oldest_are_shed_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.sources.matrix import confirm

    monkeypatch.setattr(confirm, "PENDING_MAX", 3)
    c = Confirmations(grace=0, clock=Clock())
    c.connected(("", 0))
    c.spooled([item(n) for n in range(5)])
    assert c.shed() == 2 and c.waiting() == 3 and c.shed() == 0
    c.batch_done()
    c.batch_done()
    assert [i.event_id for i, _ in c.overdue()] == ["$e2", "$e3", "$e4"]


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("spool"), st.integers(0, 5), st.integers(0, 3)),
        st.tuples(st.just("sync"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("batch"), st.just(0), st.just(0)),
        st.tuples(st.just("tick"), st.integers(1, 30), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, boundary=st.integers(0, 3))
def test_what_is_questioned_is_exactly_what_the_model_says(ops: list[tuple[str, int, int]], boundary: int) -> None:
    """A model: an event is questioned iff it was spooled at or past the boundary, the sync loop had not brought
    it before and did not bring it within the grace period, and two batches passed since it was spooled."""
    clock = Clock()
    c = Confirmations(grace=20, clock=clock)
    c.connected(("f", boundary))
    synced: set[int] = set()
    waiting: dict[int, tuple[float, int]] = {}
    batches = 0
    for op, n, offset in ops:
        if op == "spool":
            c.spooled([item(n, "f", offset)])
            if offset >= boundary and n not in synced and n not in waiting:
                waiting[n] = (clock.now, batches)
        elif op == "sync":
            c.synced([f"$e{n}"])
            synced.add(n)
            waiting.pop(n, None)
        elif op == "batch":
            c.batch_done()
            batches += 1
        else:
            clock.now += n
        got = [int(i.event_id[2:]) for i, _ in c.overdue()]
        due = [k for k, (t, b) in waiting.items() if clock.now - t >= 20 and batches - b >= 2]
        for k in due:
            del waiting[k]
        assert got == due
    assert c.waiting() == len(waiting)


def forge(spool: SpoolServer, room_id: str, sender: str, body: str) -> str:
    """What an insider with write access to the spool directory and the module's config (the public key) does:
    seal a message of their own making and append it to the newest spool file, next in sequence."""
    event_id = f"$forged{int(time.time() * 1000)}"
    event = {
        "event_id": event_id,
        "type": "m.room.message",
        "sender": sender,
        "room_id": room_id,
        "origin_server_ts": int(time.time() * 1000),
        "content": {"msgtype": "m.text", "body": body},
    }
    append_frame(spool, event)
    return event_id


@pytest.mark.synapse
async def test_a_frame_sealed_by_an_insider_is_archived_but_questioned_in_its_room(
    spool_synapse: SpoolServer, minister: Official, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = SpoolBot(spool_synapse, tmp_path, confirm_seconds=1.0)
    try:
        await bot.start()
        room_id = await minister.create_room(encrypted=False)
        real = [await minister.send_text(room_id, f"echt besluit {i}") for i in range(2)]
        await poll_until(lambda: set(real) <= {e["event_id"] for e in frame_events(spool_synapse.frames())}, timeout=20)
        await bot.wait_stored(real)

        with caplog.at_level(logging.ERROR):
            forged = forge(spool_synapse, room_id, minister.user_id, "vervalst besluit")
            await bot.wait_stored([forged])  # the spool opens it like any frame: it is archived

            def questions() -> list[str]:
                return [
                    str(e.content.get("event_id"))
                    for e in bot.records()
                    if e.kind is Kind.NOTICE and e.content.get("notice") == UNCONFIRMED
                ]

            await poll_until(lambda: forged in questions(), timeout=30, interval=0.2)
        notice = next(e for e in bot.records() if e.kind is Kind.NOTICE and e.content.get("event_id") == forged)
        assert notice.conversation == room_id  # beside the message it questions, in the room's transcript
        assert notice.content["room_id"] == room_id and notice.content["spool_offset"] > 0
        assert [e.content["body"] for e in bot.records() if e.event_id == forged] == ["vervalst besluit"]
        assert questions() == [forged]  # the messages Synapse carried were confirmed by the sync loop
        assert any("came only through the spool" in r.getMessage() for r in caplog.records)
    finally:
        await bot.stop()
