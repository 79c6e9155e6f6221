"""The log's read API, one suite run against every reader: same records in, same records out, same errors.

Readers: `bridge.log.reader` (iter_events / iter_decisions, the tools' reader), `bridge.log.view.LogView` (the
archive's), and, for the signed checkpoint at a size, `LogView.note_at` beside the writer door
(`bridge.log.writer`: `LocalWriter.seal_prefix` in this process, `RemoteWriter.seal_prefix` through a running
bot's control socket). A reader that disagreed with another would make a package differ from `events` output,
or a tampered record pass one door and fail another.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.errors import LogIntegrityError
from bridge.events import Event, event_from_bytes
from bridge.log.control import ControlServer
from bridge.log.decision import Decision, parse_decision
from bridge.log.format import RecordType
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_decisions, iter_events
from bridge.log.store import LogStore
from bridge.log.view import LogView
from bridge.log.writer import Writer, open_writer
from bridge.withhold import withhold
from tests.conftest import LogDir, make_event
from tests.support.pg import rows
from tests.test_log_tamper import attacker, flip

EventReader = Callable[[Path, KeyMaterial], list[tuple[int, Event]]]
DecisionReader = Callable[[Path, KeyMaterial], list[tuple[int, Decision]]]


def reader_events(data_dir: Path, keys: KeyMaterial) -> list[tuple[int, Event]]:
    return list(iter_events(data_dir, keys))


def view_events(data_dir: Path, keys: KeyMaterial) -> list[tuple[int, Event]]:
    with LogView(data_dir, keys) as view:
        records = view.records(0, view.size())
        return [(r.seq, event_from_bytes(r.payload)) for r in records if r.header.type == RecordType.EVENT]


def reader_decisions(data_dir: Path, keys: KeyMaterial) -> list[tuple[int, Decision]]:
    return list(iter_decisions(data_dir, keys))


def view_decisions(data_dir: Path, keys: KeyMaterial) -> list[tuple[int, Decision]]:
    with LogView(data_dir, keys) as view:
        records = view.records(0, view.size())
        return [(r.seq, parse_decision(r.payload)) for r in records if r.header.type == RecordType.DECISION]


def view_scan_decisions(data_dir: Path, keys: KeyMaterial) -> list[tuple[int, Decision]]:
    with LogView(data_dir, keys) as view:
        return [(row.seq, view.decision(row)) for row in view.scan() if row.type == RecordType.DECISION]


EVENT_READERS = {"reader.iter_events": reader_events, "LogView.records": view_events}
DECISION_READERS = {
    "reader.iter_decisions": reader_decisions,
    "LogView.records": view_decisions,
    "LogView.scan+decision": view_scan_decisions,
}

EVENTS = [make_event(i, conversation=f"!room{i % 3}:example.org") for i in range(30)]


async def _write(log: LogDir) -> None:
    async with await LogStore.open(log.data_dir, log.keys) as store:
        for start in range(0, 20, 4):
            await store.append_events(EVENTS[start : start + 4])
        await store.checkpoint()
        await store.append_events(EVENTS[20:])
        await store.checkpoint()


@pytest.fixture
def empty_log(any_empty_log: LogDir) -> LogDir:
    """Every reader (and the view the snapshot reads through) on both backends: SQLite and PostgreSQL."""
    return any_empty_log


@pytest.fixture
async def written(empty_log: LogDir) -> LogDir:
    """30 events in 3 conversations, two checkpoints, and a withhold and a release decision."""
    await _write(empty_log)
    async with open_writer(empty_log.data_dir, empty_log.keys) as writer:
        await withhold(writer, "$event4", "privé", "IS", data_dir=empty_log.data_dir)
        await withhold(writer, "$event7", "partijpolitiek", "IS", data_dir=empty_log.data_dir)
        await withhold(writer, "$event4", "toch zakelijk", "IS", data_dir=empty_log.data_dir, release=True)
    return empty_log


@pytest.mark.parametrize("name", EVENT_READERS)
async def test_every_reader_gives_back_the_events_written(written: LogDir, name: str) -> None:
    """Each event reader yields every event written, in log order, equal to what went in, at the same seqs."""
    got = EVENT_READERS[name](written.data_dir, written.keys)
    assert [e for _, e in got] == EVENTS
    assert got == reader_events(written.data_dir, written.keys)
    assert [s for s, _ in got] == sorted(s for s, _ in got)


@pytest.mark.parametrize("name", DECISION_READERS)
async def test_every_reader_gives_back_the_decisions_written(written: LogDir, name: str) -> None:
    """Each decision reader yields the three decisions, in order, at the same seqs."""
    got = DECISION_READERS[name](written.data_dir, written.keys)
    assert [(d.decision, d.target.event_id) for _, d in got] == [
        ("withhold", "$event4"),
        ("withhold", "$event7"),
        ("release", "$event4"),
    ]
    assert got == reader_decisions(written.data_dir, written.keys)


def _tamper(log: LogDir, column: str, nth_event: int) -> int:
    """Flip one byte of `column` of the `nth_event`-th event record; returns its seq."""
    seq = reader_events(log.data_dir, log.keys)[nth_event][0]
    with contextlib.closing(attacker(log.data_dir)) as conn:
        (value,) = conn.execute(f"SELECT {column} FROM records WHERE seq = ?", (seq,)).fetchone()
        conn.execute(f"UPDATE records SET {column} = ? WHERE seq = ?", (flip(bytes(value), len(value) // 2), seq))
    return seq


@pytest.mark.parametrize("column", ["body", "commitment", "header"])
@pytest.mark.parametrize("name", EVENT_READERS)
async def test_a_tampered_event_record_is_the_same_error_at_every_reader(
    written: LogDir, name: str, column: str
) -> None:
    """A flipped byte in a stored event raises LogIntegrityError naming that record, whichever reader reads it."""
    seq = _tamper(written, column, 12)
    with pytest.raises(LogIntegrityError) as caught:
        EVENT_READERS[name](written.data_dir, written.keys)
    assert caught.value.seq == seq


async def test_a_tampered_decision_is_the_same_error_at_every_decision_reader(written: LogDir) -> None:
    """A flipped byte in a stored decision is a LogIntegrityError naming it at each decision reader."""
    seq = reader_decisions(written.data_dir, written.keys)[1][0]
    with contextlib.closing(attacker(written.data_dir)) as conn:
        (body,) = conn.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        conn.execute("UPDATE records SET body = ? WHERE seq = ?", (flip(bytes(body), 0), seq))
    for name, read in DECISION_READERS.items():
        with pytest.raises(LogIntegrityError) as caught:
            read(written.data_dir, written.keys)
        assert caught.value.seq == seq, name


@contextlib.asynccontextmanager
async def local_writer(log: LogDir) -> AsyncIterator[Writer]:
    async with open_writer(log.data_dir, log.keys) as writer:
        assert writer.remote_pid is None
        yield writer


@contextlib.asynccontextmanager
async def remote_writer(log: LogDir) -> AsyncIterator[Writer]:
    async with (
        await LogStore.open(log.data_dir, log.keys) as store,
        ControlServer(log.data_dir, store),
        open_writer(log.data_dir, log.keys) as writer,
    ):
        assert writer.remote_pid is not None
        yield writer


WRITERS = {"LocalWriter": local_writer, "RemoteWriter": remote_writer}


@pytest.mark.parametrize("name", WRITERS)
async def test_the_writer_door_reads_the_same_checkpoints_as_the_view(written: LogDir, name: str) -> None:
    """For a size that is already sealed, seal_prefix returns the stored note, byte for byte as LogView has it."""
    sizes = [int(size) for (size,) in rows(written.data_dir, "SELECT size FROM checkpoints ORDER BY size")]
    assert len(sizes) >= 2
    with LogView(written.data_dir, written.keys) as view:
        notes = {size: view.note_at(size) for size in sizes}
    async with WRITERS[name](written) as writer:
        for size, note in notes.items():
            assert await writer.seal_prefix(size) == note
