"""The `Sink` contract (bridge/sources/__init__.py), run against every implementation.

Implementations: the real `bridge.capture.LogSink` over a `LogStore`, and the in-memory sinks the source
tests use (`tests/support/sinks.py`). A test double that drifts from the contract would let a source test
pass against behaviour the log does not have, so each one is held to the same suite as the real sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.capture import LogSink
from bridge.events import Event
from bridge.log.reader import iter_events
from bridge.log.store import LogStore
from bridge.sources import Sink
from tests.conftest import create_log, make_event
from tests.support.sinks import DedupSink, RecordingSink

BACKENDS = ["log", "recording", "dedup"]


@dataclass
class Harness:
    sink: Sink
    #: What the backend holds: each idempotency key once, first copy, in commit order.
    stored: Callable[[], list[Event]]


def _first_copies(events: list[Event]) -> list[Event]:
    out: dict[tuple[str, str, str], Event] = {}
    for event in events:
        out.setdefault(event.key, event)
    return list(out.values())


@contextlib.asynccontextmanager
async def harness(backend: str, tmp: Path) -> AsyncIterator[Harness]:
    if backend == "log":
        log = create_log(tmp)
        async with await LogStore.open(log.data_dir, log.keys) as store:
            sink = LogSink(store, "matrix:@bot:example.org")
            yield Harness(sink, lambda: [e for _, e in iter_events(log.data_dir, log.keys)])
    elif backend == "recording":
        recording = RecordingSink()
        yield Harness(recording, lambda: list(recording.unique().values()))
    else:
        dedup = DedupSink()
        yield Harness(dedup, lambda: list(dedup.events.values()))


@pytest.fixture(params=BACKENDS)
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(request.param, tmp_path) as h:
        yield h


async def test_no_cursor_before_the_first_commit(sink: Harness) -> None:
    """A fresh sink has no cursor: the source starts from the beginning (or its initial sync)."""
    assert await sink.sink.load_cursor() is None
    assert sink.stored() == []


async def test_commit_stores_events_and_cursor_together(sink: Harness) -> None:
    """After commit returns, the events are held and load_cursor gives the committed cursor."""
    await sink.sink.commit([make_event(0), make_event(1)], "s1")
    assert await sink.sink.load_cursor() == "s1"
    assert [e.event_id for e in sink.stored()] == ["$event0", "$event1"]


async def test_a_none_cursor_leaves_the_stored_cursor(sink: Harness) -> None:
    """A backfill page (cursor None) stores its events and keeps the cursor of the last live commit."""
    await sink.sink.commit([make_event(0)], "s1")
    await sink.sink.commit([make_event(1)], None)
    assert await sink.sink.load_cursor() == "s1"
    assert [e.event_id for e in sink.stored()] == ["$event0", "$event1"]


async def test_the_cursor_advances_without_events(sink: Harness) -> None:
    """An empty batch still moves the cursor (a sync that brought nothing to store)."""
    await sink.sink.commit([make_event(0)], "s1")
    await sink.sink.commit([], "s2")
    assert await sink.sink.load_cursor() == "s2"
    assert [e.event_id for e in sink.stored()] == ["$event0"]


async def test_a_redelivered_batch_is_held_once(sink: Harness) -> None:
    """Upstream redelivers what was not acknowledged (a crash after commit, before ack): no error, no copy."""
    batch = [make_event(0), make_event(1)]
    await sink.sink.commit(batch, "s1")
    await sink.sink.commit(batch, "s1")
    await sink.sink.commit([make_event(1), make_event(2)], "s2")
    assert [e.event_id for e in sink.stored()] == ["$event0", "$event1", "$event2"]
    assert await sink.sink.load_cursor() == "s2"


batches = st.lists(
    st.tuples(st.lists(st.integers(0, 12), max_size=6), st.none() | st.sampled_from(["a", "b", "c", "d"])),
    max_size=8,
)


@pytest.mark.parametrize("backend", BACKENDS)
@given(batches=batches)
def test_any_commit_sequence_holds_first_copies_and_the_last_cursor(
    backend: str, batches: list[tuple[list[int], str | None]]
) -> None:
    """For any sequence of commits: each event is held once, in first-commit order, and load_cursor gives
    the last cursor that was not None."""

    async def go(tmp: Path) -> tuple[list[Event], str | None]:
        async with harness(backend, tmp) as h:
            for ids, cursor in batches:
                await h.sink.commit([make_event(i, conversation=f"!r{i % 3}:example.org") for i in ids], cursor)
            return h.stored(), await h.sink.load_cursor()

    with tempfile.TemporaryDirectory() as tmp:
        stored, cursor = asyncio.run(go(Path(tmp)))
    offered = [make_event(i, conversation=f"!r{i % 3}:example.org") for ids, _ in batches for i in ids]
    assert [e.key for e in stored] == [e.key for e in _first_copies(offered)]
    assert stored == _first_copies(offered)
    cursors = [c for _, c in batches if c is not None]
    assert cursor == (cursors[-1] if cursors else None)
