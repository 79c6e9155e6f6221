"""The control socket (bridge.log.control) and the writer door (bridge.log.writer), in one process.

The end-to-end attack with a real `chatarchief run` is in test_control_run.py; here each rule of the
socket is pinned on its own: who may connect, which key, which records, which frames.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest

from bridge.errors import UsageError
from bridge.events import canonical_bytes
from bridge.importer import import_file
from bridge.log import keys as keyfile
from bridge.log import writer as writer_module
from bridge.log.control import MAX_FRAME, ControlClient, ControlServer, read_frame
from bridge.log.format import RecordType
from bridge.log.lock import WriterBusy
from bridge.log.reader import iter_decisions, iter_events
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from bridge.log.writer import open_writer
from bridge.withhold import withhold
from tests.conftest import LogDir, make_event

SAMPLE = Path(__file__).resolve().parent.parent / "bridge" / "samples" / "sample-conversation.jsonl"


async def test_commands_write_through_the_bot_that_holds_the_lock(empty_log: LogDir) -> None:
    """With the lock held and the socket served, `open_writer` gives the bot's proxy: import, withhold and
    rotate-key land in the bot's log in its own store, interleaved with its own appends."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        async with ControlServer(empty_log.data_dir, store):
            await store.append_events([make_event(0)])
            async with open_writer(empty_log.data_dir, empty_log.keys) as writer:
                assert writer.remote_pid == os.getpid()
                counts = await import_file(writer, SAMPLE)
                await store.append_events([make_event(1)])  # the bot's own capture goes on meanwhile
                seq = (await withhold(writer, "$t1", "privé", "IS", data_dir=empty_log.data_dir)).seq
                assert await writer.rotate_data_key() == 2
            await store.append_events([make_event(2)])
        size = store.size
    assert counts.appended == len([x for x in SAMPLE.read_bytes().splitlines() if x.strip()])
    assert [(s, d.target.event_id) for s, d in iter_decisions(empty_log.data_dir, empty_log.keys)] == [(seq, "$t1")]
    events = [e.event_id for _, e in iter_events(empty_log.data_dir, empty_log.keys)]
    assert {"$event0", "$event1", "$event2"} <= set(events)
    report = verify_log(empty_log.data_dir, empty_log.keys)
    assert report.records == size


async def test_a_connection_from_another_uid_is_refused(empty_log: LogDir) -> None:
    """SO_PEERCRED decides: a peer whose uid is not the bot's gets one refusal and nothing is written.
    (Simulated by a server that serves another uid; the socket file is 0600 besides.)"""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        before = store.size
        async with ControlServer(empty_log.data_dir, store, uid=os.geteuid() + 1) as server:
            assert (server.path.stat().st_mode & 0o777) == 0o600
            with pytest.raises(UsageError, match="refused: the bot serves only its own user"):
                await ControlClient.connect(empty_log.data_dir, empty_log.keys)
            assert server.refused == 1
        assert store.size == before


async def test_a_key_file_of_another_log_is_refused(empty_log: LogDir, tmp_path: Path) -> None:
    """The hello names the client's log id and public key; another log's key file is a usage error."""
    other = keyfile.generate(os.urandom(16))
    async with (
        await LogStore.open(empty_log.data_dir, empty_log.keys) as store,
        ControlServer(empty_log.data_dir, store),
    ):
        with pytest.raises(UsageError, match="belongs to another log"):
            await ControlClient.connect(empty_log.data_dir, other)


async def test_only_events_and_decisions_may_be_appended(empty_log: LogDir) -> None:
    """Clear KEY/BLOB records are the store's own: a client asking to append one gets a usage error."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        before = store.size
        async with (
            ControlServer(empty_log.data_dir, store),
            await ControlClient.connect(empty_log.data_dir, empty_log.keys) as client,
        ):
            payload = canonical_bytes(make_event(0))
            with pytest.raises(UsageError, match="cannot be appended"):
                await client.append_records([(RecordType.KEY, "matrix", "!r", "$x", payload)])
            ok = await client.append_records([(RecordType.EVENT, "matrix", "!r", "$x", payload)])
            assert ok.appended == 1
        assert store.size == before + 1


async def test_an_oversized_or_broken_frame_is_answered_and_dropped(empty_log: LogDir) -> None:
    """A length header above MAX_FRAME is refused before anything is read into memory; the bot goes on."""
    async with (
        await LogStore.open(empty_log.data_dir, empty_log.keys) as store,
        ControlServer(empty_log.data_dir, store) as server,
    ):
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(struct.pack(">I", MAX_FRAME + 1))
        await writer.drain()
        answer = await asyncio.wait_for(read_frame(reader), 5)
        assert answer is not None and "exceeds the limit" in answer["error"]["message"]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        async with await ControlClient.connect(empty_log.data_dir, empty_log.keys) as client:
            assert (await client.call("checkpoint")).startswith("chatarchief.invalid/log/")


async def test_a_stale_socket_is_replaced_and_removed_at_exit(empty_log: LogDir) -> None:
    """A socket file left by a killed bot is removed by the next bot (it holds the lock) and at clean exit."""
    stale = empty_log.data_dir / "control.sock"
    stale.write_bytes(b"left by a SIGKILLed bot")
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        async with ControlServer(empty_log.data_dir, store):
            client = await ControlClient.connect(empty_log.data_dir, empty_log.keys)
            await client.close()
        assert not stale.exists()


async def test_a_lock_holder_that_is_not_a_bot_is_busy(empty_log: LogDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import holding the lock serves no socket: the second writer gets WriterBusy naming the PID."""
    monkeypatch.setattr(writer_module, "CONNECT_WAIT_SECONDS", 0.3)
    async with await LogStore.open(empty_log.data_dir, empty_log.keys):
        with pytest.raises(WriterBusy) as busy:
            async with open_writer(empty_log.data_dir, empty_log.keys):
                pass
    assert busy.value.pid == os.getpid()


async def test_a_data_dir_writable_by_others_is_refused(empty_log: LogDir) -> None:
    """Whoever can replace files in the data dir can replace the log or the socket: refuse, exit-2 class."""
    empty_log.data_dir.chmod(0o770)
    with pytest.raises(UsageError, match="group or others may write"):
        async with open_writer(empty_log.data_dir, empty_log.keys):
            pass


async def test_the_monthly_job_seals_through_the_bots_own_store(empty_log: LogDir) -> None:
    """Inside `run`, snapshot's worker thread gets `seal(size)` that runs the store's seal_prefix on the
    bot's loop (no second connection); called on the loop itself it refuses instead of deadlocking."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(4)])
        seal = writer_module.seal_in_loop(store, asyncio.get_running_loop())
        size = store.size - 1
        note = await asyncio.to_thread(seal, size)
        assert note.split("\n")[1] == str(size)
        assert await asyncio.to_thread(seal, size) == note  # stored once, then reused
        with pytest.raises(RuntimeError, match="worker thread"):
            seal(size)


def test_seal_at_without_a_bot_takes_the_lock_itself(filled_log: LogDir) -> None:
    """Outside `run`, `seal_at` opens the log itself (lock taken and released) and returns the note."""
    note = writer_module.seal_at(filled_log.data_dir, filled_log.keys, 3)
    assert note.split("\n")[1] == "3"
    assert writer_module.seal_at(filled_log.data_dir, filled_log.keys, 3) == note
