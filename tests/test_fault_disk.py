"""Full disk: the data dir on a small tmpfs that fills up mid-stream.

The contract under test is `LogSink.commit`'s (bridge/capture.py): it returns
only when the batch and its cursor are durable; while storage fails it keeps
the batch, logs an ALERT and retries, so the source waits and its cursor (the
Matrix sync token, the Signal ack) never advances past what is stored. The
stream here is a stand-in source that acknowledges upstream exactly when
`commit` returns, as MatrixSource and SignalSource do; a real Synapse would add
nothing to what is tested (the sink is where the disk is).

Needs root to mount the tmpfs (CI runs as root); skipped, with the reason, where
mounting is impossible.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.blobs import BlobStore
from bridge.capture import LogSink, RetryingBlobs
from bridge.errors import StorageError
from bridge.events import Event
from bridge.log import keys as keyfile
from bridge.log.schema import INIT_RECORDS as B  # a new log holds its two key records
from bridge.log.store import CheckpointPolicy, LogStore, initialise
from bridge.log.verify import verify_log
from tests.conftest import make_event
from tests.support.disk import fill, mounted_tmpfs
from tests.support.figures import record
from tests.support.logview import LogView
from tests.support.officials import poll_until

pytestmark = pytest.mark.slow

CURSOR = "matrix:@archief:example.org"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test only."""
    with mounted_tmpfs(tmp_path / "disk", 16) as mnt:
        yield mnt


def batch(n: int, size: int = 20) -> list[Event]:
    return [make_event(n * size + i, body=f"bericht {n * size + i} " + "x" * 1500) for i in range(size)]


async def test_full_disk_pauses_capture_without_ack_and_resumes_without_loss(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the disk fills mid-stream the batch in hand is not acknowledged: the stored cursor stays at
    the last durable batch, an ALERT is logged, the log on disk still verifies; once space returns the
    same batch commits and the stream goes on, and at the end every event is stored exactly once and
    `verify` (with the key) passes."""
    caplog.set_level(logging.WARNING, logger="bridge.capture")
    key_file = tmp_path / "keys" / "chatarchief.key"
    key_file.parent.mkdir(mode=0o700)
    keys = keyfile.generate(os.urandom(16))
    keyfile.write_new(key_file, keys)
    data_dir = small_disk / "data"
    initialise(data_dir, keys)
    filler = small_disk / "filler"
    acked: list[str] = []
    batches = 40

    async with await LogStore.open(data_dir, keys, CheckpointPolicy(every_records=100, every_seconds=3600)) as store:
        sink = LogSink(store, CURSOR, retry_initial=0.05, retry_max=0.2)

        disk_full = asyncio.Event()

        async def source() -> None:
            for n in range(batches):
                if n == 10:
                    await disk_full.wait()  # the stream goes on once the disk is full (no race with the filler)
                await sink.commit(batch(n), f"token-{n}")
                acked.append(f"token-{n}")  # upstream acknowledgement: only after commit returned

        task = asyncio.create_task(source())
        await poll_until(lambda: len(acked) >= 10, timeout=30)
        filled = await asyncio.to_thread(fill, filler)
        disk_full.set()
        await poll_until(lambda: sink.failed_attempts >= 3 or task.done(), timeout=60)
        assert not task.done(), "the stream finished before the disk filled: make the batches bigger"
        acked_while_full = len(acked)
        with LogView(data_dir, keys) as view:
            stored_cursor = view.cursors()[CURSOR]
            stored_size = view.size()
        await asyncio.sleep(0.5)
        assert len(acked) == acked_while_full, "a batch was acknowledged while the disk was full"
        assert stored_cursor == acked[-1], "the stored cursor moved past the last acknowledged batch"
        assert verify_log(data_dir, keys).records == stored_size, "the log is corrupt while the disk is full"
        alerts = [r for r in caplog.records if r.getMessage().startswith("ALERT storage failing")]
        assert len(alerts) == 1  # once per outage, not once per retry

        filler.unlink()
        await asyncio.wait_for(task, 60)
        failed = sink.failed_attempts
        await store.checkpoint()

    report = verify_log(data_dir, keys)
    record("full_disk", batches=batches, events=batches * 20, acked_before_full=acked_while_full,
           filler_bytes=filled, failed_attempts=failed, stored=report.records)  # fmt: skip
    assert acked == [f"token-{n}" for n in range(batches)]
    assert report.records == B + batches * 20 and report.unsealed == 0
    with LogView(data_dir, keys) as view:
        assert view.count_stored(("!room:example.org", f"$event{i}") for i in range(batches * 20)) == batches * 20
        assert view.cursors()[CURSOR] == f"token-{batches - 1}"
    assert any("capture resumed" in r.getMessage() for r in caplog.records)


async def test_full_disk_at_open_is_a_clear_storage_error_and_leaves_the_log_intact(
    small_disk: Path, tmp_path: Path
) -> None:
    """A log opened when the disk is already full fails with one clear StorageError (no raw sqlite3
    exception, no half-written record); the log verifies before and after, and opens and appends
    once space returns."""
    keys = keyfile.generate(os.urandom(16))
    data_dir = small_disk / "data"
    initialise(data_dir, keys)
    async with await LogStore.open(data_dir, keys) as store:
        await store.append_events(batch(0))
        await store.checkpoint()
    await asyncio.to_thread(fill, small_disk / "filler")
    failed_at: int | None = None
    try:
        async with await LogStore.open(data_dir, keys) as store:
            for n in range(1, 40):  # enough to outgrow whatever the WAL still has room for
                await store.append_events(batch(n))
    except StorageError as exc:
        assert "disk" in str(exc) or "full" in str(exc), str(exc)
        failed_at = verify_log(data_dir, keys).records
    assert failed_at is not None, "appending to a full disk never failed"
    (small_disk / "filler").unlink()
    async with await LogStore.open(data_dir, keys) as store:
        await store.append_events(batch(99))
        await store.checkpoint()
    assert verify_log(data_dir, keys).records == failed_at + 20


async def test_full_disk_pauses_media_writes_instead_of_stopping_the_bot(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Media are stored before their event is committed; on a full disk `RetryingBlobs.put` (what
    `run` hands the sources) waits with one ALERT instead of raising, and stores the blob once space
    returns: the source never reaches its commit, so nothing is acknowledged meanwhile."""
    caplog.set_level(logging.WARNING, logger="bridge.capture")
    keys = keyfile.generate(os.urandom(16))
    data_dir = small_disk / "data"
    initialise(data_dir, keys)
    async with await LogStore.open(data_dir, keys) as store:
        blobs = BlobStore(data_dir / "blobs", store.media_keys())
        retrying = RetryingBlobs(blobs, retry_initial=0.05, retry_max=0.2)
        await asyncio.to_thread(fill, small_disk / "filler")
        media = os.urandom(256 * 1024)
        put = asyncio.create_task(retrying.put(media, "image/png"))
        await poll_until(lambda: retrying.failed_attempts >= 3 or put.done(), timeout=30)
        assert not put.done(), "a media write succeeded on a full disk"
        (small_disk / "filler").unlink()
        blob_id, _ = await asyncio.wait_for(put, 30)
        assert blobs.get(blob_id) == media
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("ALERT storage failing") for m in messages) == 1
    assert any("capture resumed" in m for m in messages)
