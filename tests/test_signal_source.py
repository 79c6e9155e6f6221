"""SignalSource against the stand-in signal-cli daemon: transports, receive modes, faults, attachments.

The daemon is `tests.support.signal_daemon.SignalDaemon` (a stand-in: real signal-cli needs Signal's
servers). The sink here is in memory and deduplicates on the idempotency key like the log does; the
end-to-end tests through the real log are in test_signal_run.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.events import Kind
from bridge.sources.signal import SignalSource, SignalSourceConfig
from tests.support.signal_daemon import ACCOUNT, SignalDaemon, fixture_names, load_fixture
from tests.support.sinks import DedupSink as MemorySink

STORED_FIXTURES = [n for n in fixture_names() if n not in ("receipt", "typing", "sync_read")]


class MemoryBlobs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, data: bytes, media_type: str | None) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        self.data[digest[:40]] = data
        return digest[:40], digest


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[SignalDaemon]:
    server = SignalDaemon(tmp_path, keepalive=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def capturing(source: SignalSource) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def make_source(endpoint: str, sink: MemorySink, blobs: MemoryBlobs | None = None, **kw: Any) -> SignalSource:
    cfg = SignalSourceConfig(endpoint=endpoint, account=ACCOUNT, backoff_initial=0.05, backoff_max=0.2, **kw)
    return SignalSource(cfg, sink, blobs or MemoryBlobs())


def numbered(i: int) -> dict[str, Any]:
    """A distinct 1:1 message (its own timestamp, hence its own id)."""
    params = copy.deepcopy(load_fixture("dm_received"))
    params["envelope"]["timestamp"] = params["envelope"]["dataMessage"]["timestamp"] = 1_710_000_000_000 + i
    params["envelope"]["dataMessage"]["message"] = f"bericht {i}"
    return params


@pytest.mark.parametrize("transport", ["unix", "tcp", "http", "ws"])
async def test_every_envelope_kind_over_every_transport(daemon: SignalDaemon, transport: str) -> None:
    """Over a unix socket, TCP, HTTP+SSE and the rest-api websocket, every stored kind arrives exactly once;
    receipts and typing are counted; the attachment's bytes are in the blob store."""
    daemon.attachments["Xq3vT0bLm9Jk2a1.pdf"] = b"%PDF-1.4 de nota"
    sink, blobs = MemorySink(), MemoryBlobs()
    source = make_source(daemon.endpoints[transport], sink, blobs)
    async with capturing(source):
        for name in fixture_names():
            daemon.enqueue(load_fixture(name))
        await until(lambda: len([e for e in sink.events.values() if e.kind is not Kind.NOTICE]) == len(STORED_FIXTURES))
    kinds = sorted(e.kind.value for e in sink.events.values())
    assert "poll" in kinds and "edit" in kinds and "retention_change" in kinds
    assert source.counts["receiptMessage"] == 1 and source.counts["typingMessage"] == 1
    (pdf,) = [a for e in sink.events.values() for a in e.attachments if a.media_type == "application/pdf"]
    assert pdf.status == "stored" and blobs.data[pdf.blob_id or ""] == b"%PDF-1.4 de nota"
    assert len(sink.offered) == len(sink.events)  # nothing offered twice


async def test_manual_mode_subscribes_and_messages_wait_while_away(daemon: SignalDaemon) -> None:
    """In manual mode the source calls subscribeReceive; envelopes sent while it is stopped wait
    (signal-cli does not pull them) and arrive after the next start."""
    sink = MemorySink()
    async with capturing(make_source(daemon.endpoints["tcp"], sink)):
        assert ("subscribeReceive", {"account": ACCOUNT}) in daemon.requests
        daemon.enqueue(numbered(1))
        await until(lambda: len(sink.events) == 1)
    await until(lambda: not daemon.subscribed())
    assert any(m == "unsubscribeReceive" for m, _ in daemon.requests)
    daemon.enqueue(numbered(2))
    await asyncio.sleep(0.2)
    assert daemon.pending == 1 and not daemon.lost
    async with capturing(make_source(daemon.endpoints["tcp"], sink)):
        await until(lambda: len(sink.of_kind(Kind.MESSAGE)) == 2)
    (notice,) = sink.of_kind(Kind.NOTICE)
    assert notice.content["notice"] == "capture_gap" and notice.content["reason"] == "capture was not running"


@pytest.mark.parametrize("transport", ["unix", "tcp", "http", "ws"])
async def test_drop_mid_stream_loses_nothing_and_duplicates_nothing(daemon: SignalDaemon, transport: str) -> None:
    """The daemon closes the connection after 7 of 20 envelopes, and repeats the last 3 after the reconnect:
    all 20 are captured once, and the gap is recorded as a notice."""
    sink = MemorySink()
    async with capturing(make_source(daemon.endpoints[transport], sink)):
        daemon.drop_after(7)
        daemon.redeliver(3)
        for i in range(20):
            daemon.enqueue(numbered(i))
        await until(lambda: len(sink.of_kind(Kind.MESSAGE)) == 20)
        await asyncio.sleep(0.1)
    bodies = sorted(e.content["body"] for e in sink.of_kind(Kind.MESSAGE))
    assert bodies == sorted(f"bericht {i}" for i in range(20))
    notices = sink.of_kind(Kind.NOTICE)
    assert len(notices) == 1 and notices[0].content["gap_end_ms"] >= notices[0].content["gap_start_ms"]


async def test_outage_alert_and_gap_notice(daemon: SignalDaemon, caplog: pytest.LogCaptureFixture) -> None:
    """A daemon that stops listening longer than max_disconnected_seconds raises one ALERT; on its return
    a gap notice (start, end, reason) is committed and capture goes on."""
    sink = MemorySink()
    source = make_source(daemon.endpoints["unix"], sink, max_disconnected_seconds=0.3)
    with caplog.at_level(logging.WARNING):
        async with capturing(source):
            await daemon.outage(1.0)
            daemon.enqueue(numbered(1))
            await until(lambda: len(sink.of_kind(Kind.MESSAGE)) == 1)
    alerts = [r for r in caplog.records if r.getMessage().startswith("ALERT signal capture disconnected")]
    assert len(alerts) == 1
    (notice,) = sink.of_kind(Kind.NOTICE)
    assert notice.content["gap_end_ms"] - notice.content["gap_start_ms"] >= 900
    assert "bericht" not in caplog.text  # logs never hold message content


async def test_on_start_mode_loses_what_arrives_while_nobody_listens(tmp_path: Path) -> None:
    """Why manual mode matters: a daemon in on-start mode consumes envelopes with nobody connected."""
    server = SignalDaemon(tmp_path, mode="on-start")
    await server.start()
    try:
        server.enqueue(numbered(1))
        await until(lambda: len(server.lost) == 1)
        sink = MemorySink()
        async with capturing(make_source(server.endpoints["tcp"], sink, receive_mode="on-start")):
            server.enqueue(numbered(2))
            await until(lambda: len(sink.of_kind(Kind.MESSAGE)) == 1)
        assert not any(m == "subscribeReceive" for m, _ in server.requests)
    finally:
        await server.stop()


async def test_malformed_line_is_kept_and_capture_goes_on(daemon: SignalDaemon) -> None:
    """A line that is not JSON becomes an UNKNOWN event with its bytes; the next envelope is captured."""
    sink = MemorySink()
    async with capturing(make_source(daemon.endpoints["tcp"], sink)):
        daemon.emit_raw(b'{"jsonrpc":"2.0","method":"receive","params":{"envelope":')
        daemon.enqueue(numbered(1))
        await until(lambda: len(sink.events) == 2)
    (junk,) = sink.of_kind(Kind.UNKNOWN)
    assert junk.problem == "not JSON" and "unparsed_b64" in junk.raw
    assert len(sink.of_kind(Kind.MESSAGE)) == 1


async def test_huge_messages(daemon: SignalDaemon) -> None:
    """A 6 MB message under the limit is captured whole; one over the limit is kept as UNKNOWN with its size
    and first 64 KiB, memory stays bounded, and the following message is captured."""
    sink = MemorySink()
    big = numbered(1)
    big["envelope"]["dataMessage"]["message"] = "a" * 6_000_000
    huge = numbered(2)
    huge["envelope"]["dataMessage"]["message"] = "b" * 9_000_000
    async with capturing(make_source(daemon.endpoints["unix"], sink, max_message_bytes=8_000_000)):
        for params in (big, huge, numbered(3)):
            daemon.enqueue(params)
        await until(lambda: len(sink.events) == 3)
    messages = {e.event_id: e for e in sink.of_kind(Kind.MESSAGE)}
    assert any(len(e.content["body"] or "") == 6_000_000 for e in messages.values())
    (over,) = sink.of_kind(Kind.UNKNOWN)
    assert (
        over.raw["truncated"] is True
        and over.raw["size"] > 9_000_000
        and "exceeds max_message_bytes" in (over.problem or "")
    )


def attachment_envelope(attachment_id: str, filename: str | None, i: int = 1) -> dict[str, Any]:
    params = numbered(i)
    params["envelope"]["dataMessage"]["attachments"] = [
        {"contentType": "text/plain", "filename": filename, "id": attachment_id, "size": 5}
    ]
    return params


HOSTILE = ["../../etc/passwd", "nul\x00byte.txt", "n" * 10_000, "..", "/etc/passwd", "a\\..\\b"]


@pytest.mark.parametrize("how", ["getAttachment", "folder", "rest-api"])
async def test_attachment_retrieval(daemon: SignalDaemon, tmp_path: Path, how: str) -> None:
    """Attachment bytes come from signal-cli's attachments folder, from getAttachment (base64), or from the
    rest-api's /v1/attachments/{id}; a missing one is recorded as failed, an oversized one as oversized."""
    folder = tmp_path / "attachments"
    folder.mkdir()
    if how == "folder":
        (folder / "abc123.txt").write_bytes(b"hallo")
    else:
        daemon.attachments["abc123.txt"] = b"hallo"
    endpoint = daemon.endpoints["ws" if how == "rest-api" else "tcp"]
    sink, blobs = MemorySink(), MemoryBlobs()
    extra = {"attachments_dir": folder} if how == "folder" else {}
    big = attachment_envelope("big.bin", "big.bin", 3)
    big["envelope"]["dataMessage"]["attachments"][0]["size"] = 10**9
    async with capturing(make_source(endpoint, sink, blobs, max_media_bytes=1000, **extra)):
        daemon.enqueue(attachment_envelope("abc123.txt", "groet.txt", 1))
        daemon.enqueue(attachment_envelope("missing.txt", "weg.txt", 2))
        daemon.enqueue(big)
        await until(lambda: len(sink.events) == 3)
    by_name = {a.filename: a for e in sink.events.values() for a in e.attachments}
    assert by_name["groet.txt"].status == "stored" and blobs.data[by_name["groet.txt"].blob_id or ""] == b"hallo"
    assert by_name["weg.txt"].status == "failed" and by_name["weg.txt"].error
    assert by_name["big.bin"].status == "oversized"


async def test_hostile_attachment_names_are_stored_safely(daemon: SignalDaemon, tmp_path: Path) -> None:
    """Hostile ids and file names (`../../etc/passwd`, NUL bytes, 10 KB names, `..`) never reach the file
    system outside the attachments folder: names are kept as metadata, such ids are fetched over the
    connection (or fail), a symlink in the folder is not followed, and nothing is written outside."""
    folder = tmp_path / "attachments"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"geheim")
    (folder / "link.txt").symlink_to(secret)
    sink, blobs = MemorySink(), MemoryBlobs()
    for i, name in enumerate(HOSTILE):
        daemon.attachments[name] = f"inhoud {i}".encode()
    before = sorted(p.name for p in tmp_path.iterdir())
    async with capturing(make_source(daemon.endpoints["tcp"], sink, blobs, attachments_dir=folder)):
        for i, name in enumerate(HOSTILE):
            daemon.enqueue(attachment_envelope(name, name, 10 + i))
        daemon.enqueue(attachment_envelope("link.txt", "link.txt", 30))
        await until(lambda: len(sink.events) == len(HOSTILE) + 1)
    attachments = {a.filename: a for e in sink.events.values() for a in e.attachments}
    for i, name in enumerate(HOSTILE):
        assert attachments[name].filename == name  # kept as metadata, exactly
        assert attachments[name].status == "stored"
        assert blobs.data[attachments[name].blob_id or ""] == f"inhoud {i}".encode()  # via getAttachment
    assert attachments["link.txt"].status == "failed"  # symlink not followed; the daemon has no such id
    assert b"geheim" not in blobs.data.values()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_stop_commits_what_was_read(daemon: SignalDaemon) -> None:
    """Stopping unsubscribes first, then commits what was already read: nothing read is dropped."""
    sink = MemorySink()
    source = make_source(daemon.endpoints["unix"], sink)
    async with capturing(source):
        for i in range(50):
            daemon.enqueue(numbered(i))
        await until(lambda: daemon.delivered == 50)
    assert len(sink.of_kind(Kind.MESSAGE)) == 50
