"""The sealed spool's frames: what the Synapse module writes, the bot reads back whole, and nothing else.

The writer is the module's own code (`chatarchief_synapse.spool`, needing only `cryptography`); the reader is the
bot's (`bridge.sources.matrix.spool`). Attacks: a reader that trusted the clear header, skipped a frame it could
not open, or crashed on garbage would fail these.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dev.synapse import SYNAPSE_MODULE_DIR
from bridge.sources.matrix.spool import HEADER, TRAILER, Position, problem_notice, read

sys.path.insert(0, str(SYNAPSE_MODULE_DIR))
from chatarchief_synapse.spool import SpoolWriter, client_event, encode_frame, file_name

KEY = X25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
contents = st.dictionaries(st.sampled_from(["body", "msgtype", "x", "ü"]), texts, max_size=4)


def event(i: int, body: str = "hallo") -> dict[str, Any]:
    return {
        "event_id": f"$e{i}",
        "type": "m.room.message",
        "sender": "@minister:localhost",
        "origin_server_ts": 1_700_000_000_000 + i,
        "content": {"msgtype": "m.text", "body": body},
        "room_id": "!plain:localhost",
    }


def write(directory: Path, events: list[dict[str, Any]], writer: SpoolWriter | None = None) -> SpoolWriter:
    writer = writer or SpoolWriter(directory, PUBLIC)
    for e in events:
        writer.append(orjson.dumps(e))
    return writer


def read_all(directory: Path, position: Position | None = None) -> tuple[list[Any], Position]:
    frames, pos = read(directory, position or Position(), KEY, limit=10_000)
    return frames, pos


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(bodies=st.lists(texts, min_size=1, max_size=8))
def test_round_trip_in_order_and_sealed(tmp_path_factory: pytest.TempPathFactory, bodies: list[str]) -> None:
    """Every appended event reads back whole, in seq order from 1; no body, room id or sender is on disk."""
    directory = tmp_path_factory.mktemp("spool")
    events = [event(i, f"geheim-{i}-{b}") for i, b in enumerate(bodies)]
    write(directory, events).close()

    frames, pos = read_all(directory)
    assert [f.event for f in frames] == events
    assert [f.seq for f in frames] == list(range(1, len(events) + 1))
    assert all(f.problem is None for f in frames)
    assert pos.seq == len(events)
    on_disk = b"".join(p.read_bytes() for p in directory.iterdir())
    for e in events:
        assert e["content"]["body"].encode() not in on_disk
        assert b"geheim" not in on_disk and b"!plain" not in on_disk and b"@minister" not in on_disk


def test_reading_on_from_a_position_and_across_writer_restarts(tmp_path: Path) -> None:
    """A stored position resumes exactly after it; a restarted writer starts a new file and the seq goes on."""
    write(tmp_path, [event(1), event(2)]).close()
    first, pos = read_all(tmp_path)
    write(tmp_path, [event(3)]).close()  # a restarted Synapse: a new file, the seq goes on
    assert len(os.listdir(tmp_path)) == 2
    rest, end = read_all(tmp_path, Position.decode(pos.encode()))
    assert [f.event["event_id"] for f in first + rest] == ["$e1", "$e2", "$e3"]
    assert [f.seq for f in rest] == [3] and all(f.problem is None for f in rest)
    assert read_all(tmp_path, end) == ([], end)


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    """8 threads appending at once (group commit): every seq 1..200 once, every event once."""
    writer = SpoolWriter(tmp_path, PUBLIC)
    seqs: list[int] = []

    def send(base: int) -> None:
        for i in range(25):
            seqs.append(writer.append(orjson.dumps(event(base + i))))

    threads = [threading.Thread(target=send, args=(k * 100,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frames, _ = read_all(tmp_path)
    assert sorted(seqs) == list(range(1, 201)) == [f.seq for f in frames]
    sent = sorted(f"$e{k * 100 + i}" for k in range(8) for i in range(25))
    assert sorted(f.event["event_id"] for f in frames) == sent
    assert all(f.problem is None for f in frames)


def test_a_frame_still_being_written_waits_then_a_torn_one_is_flagged(tmp_path: Path) -> None:
    """A partial frame at the end of the newest file is not returned (it may still be completed); once a newer
    file exists it is flagged as torn, with its bytes."""
    write(tmp_path, [event(1)]).close()
    (name,) = os.listdir(tmp_path)
    partial = encode_frame(KEY.public_key(), 2, 0, orjson.dumps(event(2)))[:-10]
    with open(tmp_path / name, "ab") as f:
        f.write(partial)
    frames, pos = read_all(tmp_path)
    assert [f.seq for f in frames] == [1]  # the torn tail is not returned while it may still be completed
    assert read_all(tmp_path, pos) == ([], pos)

    write(tmp_path, [event(3)]).close()  # a newer file: the torn frame will never be completed
    later, _ = read_all(tmp_path, pos)
    assert later[0].problem == "torn frame at the end of a spool file" and later[0].data == partial
    assert later[1].event == event(3)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(where=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7), which=st.integers(0, 2))
def test_any_flipped_bit_is_flagged_never_trusted_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, where: int, bit: int, which: int
) -> None:
    """A flipped bit anywhere in a frame: the frame is flagged, never taken for an event, never a crash."""
    directory = tmp_path_factory.mktemp("spool")
    events = [event(i) for i in range(3)]
    write(directory, events).close()
    (name,) = os.listdir(directory)
    data = bytearray((directory / name).read_bytes())
    frame_len = len(data) // 3
    at = which * frame_len + where % frame_len
    data[at] ^= 1 << bit
    (directory / name).write_bytes(bytes(data))
    # A newer file: the tampered one can no longer be a frame still being written (a longer length would wait).
    write(directory, [event(9)]).close()

    frames, _ = read_all(directory)
    opened = [f.event for f in frames if f.event is not None and f.problem is None]
    assert all(e in [*events, event(9)] for e in opened)  # nothing altered is taken for an event
    assert events[which] not in opened
    assert any(f.problem is not None for f in frames)
    for f in frames:
        if f.problem is not None:
            notice = problem_notice("@archiver:localhost", f, 1)
            assert notice.content["notice"] == "spool_frame_unreadable" and notice.content["reason"] == f.problem


def test_a_recomputed_checksum_does_not_pass_an_altered_header(tmp_path: Path) -> None:
    """An attacker who renumbers a frame and fixes the CRC: the header is the AEAD's additional data."""
    import zlib

    frame = bytearray(encode_frame(KEY.public_key(), 1, 0, orjson.dumps(event(1))))
    fields = list(HEADER.unpack(frame[: HEADER.size]))
    fields[4] = 7  # seq
    frame[: HEADER.size] = HEADER.pack(*fields)
    body = bytes(frame[HEADER.size : -TRAILER.size])
    frame[-TRAILER.size :] = TRAILER.pack(zlib.crc32(body, zlib.crc32(bytes(frame[: HEADER.size]))))
    (tmp_path / file_name(1)).write_bytes(bytes(frame))
    (frame_read,), _ = read_all(tmp_path)
    assert frame_read.event is None and "cannot be opened" in str(frame_read.problem)


def test_frames_for_another_key_are_flagged(tmp_path: Path) -> None:
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    write(tmp_path, [event(1)], SpoolWriter(tmp_path, other)).close()
    (frame,), pos = read_all(tmp_path)
    assert frame.event is None and "cannot be opened" in str(frame.problem) and pos.seq == 1


def test_a_seq_gap_is_flagged_with_the_event_kept(tmp_path: Path) -> None:
    """A missing seq is flagged on the next frame, whose event is still returned."""
    (tmp_path / file_name(1)).write_bytes(
        encode_frame(KEY.public_key(), 1, 0, orjson.dumps(event(1)))
        + encode_frame(KEY.public_key(), 3, 0, orjson.dumps(event(3)))
    )
    frames, _ = read_all(tmp_path)
    assert frames[1].event == event(3) and frames[1].problem == "out of sequence: 3 after 1"


def test_garbage_is_one_flagged_stretch(tmp_path: Path) -> None:
    """Bytes that are no frame header are one flagged stretch to the end of what was read."""
    write(tmp_path, [event(1)]).close()
    (name,) = os.listdir(tmp_path)
    with open(tmp_path / name, "ab") as f:
        f.write(b"not a frame at all, but long enough to hold a header" * 3)
    frames, pos = read_all(tmp_path)
    assert frames[0].event == event(1)
    assert frames[1].problem == "garbled frame header" and pos.offset == (tmp_path / name).stat().st_size


@given(content=contents, state_key=st.one_of(st.none(), texts))
def test_client_event_is_the_sync_shape(content: dict[str, str], state_key: str | None) -> None:
    """The module serialises the client format: no federation fields, `unsigned` without age."""
    pdu: dict[str, Any] = {
        "type": "m.room.topic",
        "sender": "@a:b",
        "origin_server_ts": 5,
        "content": content,
        "room_id": "!r:b",
        "depth": 9,
        "prev_events": ["$p"],
        "auth_events": [],
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    out = orjson.loads(client_event(pdu, "$id", {"age_ts": 1, "prev_content": {"topic": "t"}}))
    expected = {"event_id", "type", "sender", "origin_server_ts", "content", "room_id", "unsigned"}
    assert set(out) == expected | ({"state_key"} if state_key is not None else set())
    assert out["content"] == content and out["unsigned"] == {"prev_content": {"topic": "t"}}


def test_a_removed_or_reset_spool_is_flagged_once_and_reading_goes_on(tmp_path: Path) -> None:
    """The position's file removed: flagged, reading goes on in the next file; the whole spool wiped: flagged
    once, and the new spool (seq from 1) is read."""
    write(tmp_path, [event(1)]).close()
    _, pos = read_all(tmp_path)
    write(tmp_path, [event(2)]).close()
    os.unlink(tmp_path / pos.file)  # the operator removed the file the position names
    frames, pos = read_all(tmp_path, pos)
    assert frames[0].problem == "spool file of the committed position is gone" and frames[1].event == event(2)

    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)  # wiped: the module starts again at seq 1, a name before the position
    frames, reset = read_all(tmp_path, pos)
    assert [f.problem for f in frames] == [
        "spool reset: the file of the committed position and everything after it are gone"
    ]
    assert read_all(tmp_path, reset) == ([], reset)  # flagged once
    write(tmp_path, [event(3)]).close()
    frames, _ = read_all(tmp_path, reset)
    assert [(f.event, f.problem, f.seq) for f in frames] == [(event(3), None, 1)]


async def test_an_unreadable_spool_is_an_alert_not_a_crash_and_reading_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool path is a file, not a directory (a misconfiguration): the reader logs one ALERT and keeps
    trying; once the directory is there its frames are committed. A crash here would stop the sync loop too."""
    import asyncio
    import logging

    from bridge.sources.matrix import spool as reader
    from tests.support.sinks import DedupSink

    monkeypatch.setattr(reader, "SPOOL_RETRY_SECONDS", 0.01)
    spool_dir = tmp_path / "spool"
    spool_dir.write_text("not a directory")
    sink, stop = DedupSink(), asyncio.Event()

    async def as_events(raws: list[dict[str, Any]]) -> tuple[list[Any], dict[int, str]]:
        from bridge.sources.matrix.normalise import normalise

        return [normalise(r, room_id=r.pop("room_id"), received_at=1) for r in raws], {}

    caplog.set_level(logging.ERROR, logger="bridge.sources.matrix.spool")
    task = asyncio.create_task(reader.tail(spool_dir, KEY, sink, "@a:x", as_events, stop, 0.001))
    await asyncio.sleep(0.1)
    assert not task.done()
    alerts = [r for r in caplog.records if "ALERT matrix spool: cannot read the spool" in r.getMessage()]
    assert len(alerts) == 1  # once per distinct error, not per retry

    spool_dir.unlink()
    write(spool_dir, [event(1)]).close()
    for _ in range(200):
        if sink.events:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [e.event_id for e in sink.events.values()] == ["$e1"]
    assert Position.decode(sink.cursor).seq == 1


def test_a_failed_write_is_reported_to_its_caller_and_the_next_frame_starts_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full in the middle of a frame: that append raises (the module logs it at ERROR, the sync loop still
    brings the event); the torn bytes stay at the end of their file, the next frame goes to a new file, and the
    reader flags both the torn frame and the seq it never got."""
    import chatarchief_synapse.spool as module_spool

    writer = write(tmp_path, [event(1)])
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:40]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module_spool.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        writer.append(orjson.dumps(event(2)))
    monkeypatch.setattr(module_spool.os, "write", real_write)
    writer.append(orjson.dumps(event(3)))
    writer.close()

    assert len(os.listdir(tmp_path)) == 2
    frames, _ = read_all(tmp_path)
    assert [(f.event, f.problem) for f in frames] == [
        (event(1), None),
        (None, "torn frame at the end of a spool file"),
        (event(3), "out of sequence: 3 after 1"),
    ]


def test_frames_bigger_than_a_read_chunk_and_backlogs_across_chunks_are_read_whole(tmp_path: Path) -> None:
    """A frame bigger than a read chunk and frames across chunk ends are all read, in order."""
    from bridge.sources.matrix import spool as reader

    big = event(1, "x" * (reader.CHUNK + 1000))  # one frame larger than a chunk
    # ~1 MiB: several chunks, each ending inside a frame before 64 frames are read
    small = [event(i, f"b{i}-" + "y" * (5000 + i)) for i in range(2, 200)]
    write(tmp_path, [big, *small]).close()
    got: list[Any] = []
    pos = Position()
    while True:
        frames, pos = read(tmp_path, pos, KEY, limit=64)
        if not frames:
            break
        got += frames
    assert [f.event for f in got] == [big, *small] and all(f.problem is None for f in got)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=30),
    limit=st.integers(1, 10),
    chunk=st.integers(200, 5000),
    files=st.integers(1, 3),
)
def test_reading_in_any_steps_gives_every_frame_once_in_order(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    sizes: list[int],
    limit: int,
    chunk: int,
    files: int,
) -> None:
    """Whatever the batch limit, chunk size and file split, repeated reads give every frame once, in order."""
    from bridge.sources.matrix import spool as reader

    monkeypatch.setattr(reader, "CHUNK", chunk)
    directory = tmp_path_factory.mktemp("spool")
    events = [event(i, "z" * n) for i, n in enumerate(sizes)]
    per_file = -(-len(events) // files)
    for start in range(0, len(events), per_file):  # one writer per file: a Synapse restart between
        write(directory, events[start : start + per_file]).close()
    got: list[Any] = []
    pos = Position()
    for _ in range(10 * len(events) + 10):
        frames, pos = read(directory, Position.decode(pos.encode()), KEY, limit=limit)
        assert len(frames) <= limit
        got += frames
        if not frames:
            break
    assert [f.event for f in got] == events and all(f.problem is None for f in got)
    assert pos.seq == len(events)


def test_keep_days_removes_old_files_when_a_new_one_starts_and_reading_goes_on(tmp_path: Path) -> None:
    """`keep_days`: when a writer starts a new file, spool files last written more than that many days ago go
    (not the new one, not a recent one, nothing that is not a spool file); the seq goes on and a reader reads
    on (one whose position named a removed file flags it: the test above)."""
    import chatarchief_synapse.spool as module_spool

    write(tmp_path, [event(1)]).close()
    write(tmp_path, [event(2)]).close()
    _, pos = read_all(tmp_path)  # a reader at the end of the second file
    old, recent = sorted(os.listdir(tmp_path))
    week = 7 * 86400
    os.utime(tmp_path / old, (time.time() - week - 60,) * 2)
    os.utime(tmp_path / recent, (time.time() - week + 3600,) * 2)
    (tmp_path / "notes.txt").write_text("not a spool file")
    os.utime(tmp_path / "notes.txt", (time.time() - 10 * week,) * 2)

    writer = module_spool.SpoolWriter(tmp_path, PUBLIC, keep_days=7)
    writer.append(orjson.dumps(event(3)))
    writer.close()
    names = sorted(os.listdir(tmp_path))
    assert old not in names and recent in names and "notes.txt" in names and len(names) == 3
    frames, _ = read_all(tmp_path, pos)
    assert [(f.event, f.seq) for f in frames] == [(event(3), 3)]

    write(tmp_path, [event(4)]).close()  # without keep_days nothing is removed
    assert len(os.listdir(tmp_path)) == 4


def test_pruning_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A spool directory that cannot be listed is an ALERT in Synapse's log, not an error in its event path."""
    import chatarchief_synapse.spool as module_spool

    assert module_spool.prune(tmp_path / "missing", 1, time.time()) == []
    assert "ALERT listing the spool for pruning failed" in caplog.text


def test_a_frame_that_fills_a_read_chunk_exactly_is_not_the_end_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the property above: a file's first frame exactly one read chunk long made the reader take the
    chunk for the whole file and move on to the next file, skipping the frames after it in the file. And a
    torn frame of exactly one chunk at the end of the newest file must make the reader wait, not spin."""
    import threading

    from bridge.sources.matrix import spool as reader

    write(tmp_path / "a", [event(0, "z" * 1089), event(1)]).close()
    write(tmp_path / "a", [event(2)]).close()
    frames, _ = read_all(tmp_path / "a")
    monkeypatch.setattr(reader, "CHUNK", frames[1].offset)  # the first frame fills a chunk exactly
    got, pos = [], Position()
    for _ in range(5):
        batch, pos = read(tmp_path / "a", pos, KEY, limit=2)
        got += batch
    assert [(f.event, f.problem) for f in got] == [(e, None) for e in (event(0, "z" * 1089), event(1), event(2))]

    write(tmp_path / "b", [event(0, "z" * 1089)]).close()
    (name,) = os.listdir(tmp_path / "b")
    whole = (tmp_path / "b" / name).read_bytes()
    (tmp_path / "b" / name).write_bytes(whole[:-1])  # being written: one byte short
    monkeypatch.setattr(reader, "CHUNK", len(whole) - 1)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(read(tmp_path / "b", Position(), KEY)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and result[0][0] == []  # waits for the rest of the frame
