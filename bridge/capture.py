"""Source -> log pipeline: the sink sources commit to, and the `run` loop.

Contract: `LogSink.commit(events, cursor)` returns only once the events and the
cursor are durable in one transaction. While storage fails (disk full, I/O
error) it keeps the batch, logs an alert, and retries with backoff; the source
waits meanwhile, so its cursor (sync token, ack) never advances past what is
stored. `RetryingBlobs` does the same for media, which are written before the
event that references them. `run_capture` wires the configured sources to one LogStore, serves
the control socket (`bridge.control`: other commands write through the bot), stops the sources on
SIGTERM/SIGINT after the batch in hand, and seals the log with a checkpoint.

Stopping always works: a source gets `STOP_GRACE_SECONDS` to commit the batch in
hand, then it is cancelled; a write paused by failing storage gives up at once
(`CaptureStopped`). Either way nothing was acknowledged upstream that is not
durable, since a source acknowledges only after its commit returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bridge.archive.package import private_workdir
from bridge.blobs import BlobStore
from bridge.config import Settings
from bridge.control import ControlServer
from bridge.errors import StorageError, UsageError
from bridge.events import Event, Kind
from bridge.log.keys import KeyMaterial, check_permissions
from bridge.log.lock import WriterBusy
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.log.writer import check_private_dir, seal_in_loop
from bridge.scheduler import ArchiveJobs
from bridge.sources.matrix import MatrixSource, MatrixSourceConfig
from bridge.sources.signal import SignalSource, SignalSourceConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

#: After SIGTERM, how long a source may take to commit the batch in hand before it is cancelled.
STOP_GRACE_SECONDS = 5.0


class CaptureStopped(StorageError):
    """Stop was requested while storage was failing: the write was given up (nothing acknowledged)."""


class StorageRetry:
    """Retries a storage write while it raises StorageError (disk full, I/O error), with backoff.

    The first failure of an outage logs one ALERT, the recovery one warning; the
    caller (and so the source, and so the upstream ack) waits meanwhile. When
    `stop` is set while paused, the write is given up with `CaptureStopped`.
    """

    def __init__(
        self,
        name: str,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._name = name
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._stop = stop
        self.failed_attempts = 0
        self.paused = False

    async def __call__(self, write: Callable[[], Awaitable[T]], pending: str) -> T:
        delay = self._retry_initial
        paused_since: float | None = None
        while True:
            try:
                result = await write()
            except StorageError as exc:
                self.failed_attempts += 1
                if paused_since is None:
                    paused_since = time.monotonic()
                    self.paused = True
                    log.error(
                        "ALERT storage failing; capture paused, nothing acknowledged upstream",
                        extra={"source": self._name, "error": str(exc), "pending": pending},
                    )
                if await self._stopped_within(delay):
                    self.paused = False
                    raise CaptureStopped(f"stopped while storage was failing; {pending} not stored") from exc
                delay = min(delay * 2, self._retry_max)
                continue
            self.paused = False
            if paused_since is not None:
                log.warning(
                    "storage recovered; capture resumed",
                    extra={"source": self._name, "paused_seconds": round(time.monotonic() - paused_since, 1)},
                )
            return result

    async def _stopped_within(self, seconds: float) -> bool:
        if self._stop is None:
            await asyncio.sleep(seconds)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()


class LogSink:
    """Commits a source's batches to the log, with the source's cursor."""

    def __init__(
        self,
        store: LogStore,
        cursor_name: str,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._store = store
        self._name = cursor_name
        self._retry = StorageRetry(cursor_name, retry_initial=retry_initial, retry_max=retry_max, stop=stop)
        self.committed_events = 0

    @property
    def failed_attempts(self) -> int:
        return self._retry.failed_attempts

    @property
    def paused(self) -> bool:
        return self._retry.paused

    async def load_cursor(self) -> str | None:
        return await self._store.get_cursor(self._name)

    async def commit(self, events: Sequence[Event], cursor: str | None) -> None:
        entry = (self._name, cursor) if cursor is not None else None
        result = await self._retry(lambda: self._store.append_events(events, entry), f"{len(events)} events")
        self.committed_events += result.appended
        report_compliance_alerts(events, self._name)


class RetryingBlobs:
    """The blob store as sources see it: a failing media write pauses capture like a failing commit.

    Media are stored before the event that references them is committed, so
    without this a full disk would stop the bot at the first attachment instead
    of pausing it.
    """

    def __init__(
        self, blobs: BlobStore, name: str = "blobs", *, stop: asyncio.Event | None = None, **retry: float
    ) -> None:
        self._blobs = blobs
        self._retry = StorageRetry(name, stop=stop, **retry)

    @property
    def failed_attempts(self) -> int:
        return self._retry.failed_attempts

    @property
    def paused(self) -> bool:
        return self._retry.paused

    async def put(self, data: bytes, media_type: str | None) -> tuple[str, str]:
        return await self._retry(lambda: self._blobs.put(data, media_type), f"media of {len(data)} bytes")


def report_compliance_alerts(events: Sequence[Event], source: str) -> None:
    """Log an ALERT (ids only, no content) for events an information specialist must act on.

    A retention policy on a room (`m.room.retention`, or a Signal disappearing-message
    timer) means messages are set to disappear; capture does not depend on it, but the
    instruction forbids disappearing business messages, so it is flagged as soon as it
    is durable in the log. So is a view-once message (captured, but gone on the phones).
    """
    for event in events:
        if event.content.get("view_once") is True:
            log.warning(
                "ALERT compliance: view-once message captured",
                extra={"source": source, "conversation": event.conversation, "event_id": event.event_id},
            )
        if event.kind is Kind.RETENTION_CHANGE:
            log.warning(
                "ALERT compliance: retention policy set on a conversation",
                extra={
                    "source": source,
                    "conversation": event.conversation,
                    "event_id": event.event_id,
                    "max_lifetime_ms": event.content.get("max_lifetime"),
                },
            )


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop`: sources finish the batch in hand and save their cursor."""
    if sys.platform == "win32":  # the loop has no signal handlers there; Ctrl+C still interrupts
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def disable_core_dumps() -> None:
    """No core file may hold the keys or decrypted chats: RLIMIT_CORE 0, and not dumpable (Linux)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_dumpable = 4
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)


async def run_capture(settings: Settings, data_dir: Path, keys: KeyMaterial, stop: asyncio.Event) -> None:
    """Run every configured source against the log in `data_dir` until `stop` is set."""
    if settings.matrix is None and settings.signal is None:
        raise UsageError("no source configured: add a [matrix] (or [signal]) section to the config")
    policy = CheckpointPolicy(
        every_records=settings.storage.checkpoint_every_records,
        every_seconds=settings.storage.checkpoint_every_seconds,
    )
    if settings.matrix is not None:
        for secret in (settings.matrix.password_file, settings.matrix.access_token_file):
            if secret is not None:
                check_permissions(secret, "matrix credential file")
    check_private_dir(data_dir)
    try:
        store = await LogStore.open(data_dir, keys, policy)
    except WriterBusy as busy:
        who = f"process {busy.pid}" if busy.pid is not None else "another process"
        raise UsageError(
            f"{who} already writes the log in {data_dir} (lock {data_dir / 'writer.lock'}); one bot per data dir"
            " (import, withhold, rotate-key and snapshot hand their work to it)"
        ) from None
    async with store:
        await store.checkpoint()  # seal whatever a crash left unsealed
        await asyncio.to_thread(private_workdir, data_dir)  # plaintext temp bags of a crashed snapshot go now
        blobs = RetryingBlobs(BlobStore(data_dir / "blobs", store.media_keys()), stop=stop)
        seal = seal_in_loop(store, asyncio.get_running_loop())
        archive = ArchiveJobs.from_settings(settings, data_dir, keys, store, seal=seal)
        tasks: list[asyncio.Task[None]] = []
        retries: list[LogSink | RetryingBlobs] = [blobs]
        if settings.matrix is not None:
            cfg = matrix_source_config(settings, data_dir, keys)
            sink = LogSink(store, f"matrix:{settings.matrix.user_id}", stop=stop)
            retries.append(sink)
            tasks.append(asyncio.create_task(MatrixSource(cfg, sink, blobs).run(stop), name="matrix"))
        if settings.signal is not None:
            signal_cfg = signal_source_config(settings)
            sink = LogSink(store, f"signal:{settings.signal.account or settings.signal.endpoint}", stop=stop)
            retries.append(sink)
            tasks.append(asyncio.create_task(SignalSource(signal_cfg, sink, blobs).run(stop), name="signal"))
        try:
            async with ControlServer(data_dir, store):
                archive.start()  # monthly packages: catches up missed months now, then on archive.schedule
                log.info("capture running", extra={"sources": [t.get_name() for t in tasks], "log_size": store.size})
                try:
                    await supervise(tasks, stop, retries)
                finally:
                    await archive.stop()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                note = await store.checkpoint()
            except StorageError as exc:
                log.error("ALERT could not seal the log at stop; the next start seals it", extra={"error": str(exc)})
            else:
                sealed_size = note.split("\n", 2)[1]
                log.info("capture stopped; log sealed", extra={"log_size": store.size, "sealed_size": sealed_size})


async def supervise(
    tasks: Iterable[asyncio.Task[Any]],
    stop: asyncio.Event,
    retries: Sequence[LogSink | RetryingBlobs] = (),
    grace: float = STOP_GRACE_SECONDS,
) -> None:
    """Wait for the sources until `stop`; then give them `grace` seconds (none while storage is paused).

    A source failing raises here (the others are cancelled by the caller); one
    that stopped because storage failed at stop time (`CaptureStopped`) is a
    clean stop. Returns with every task done or cancelled.
    """
    pending: set[asyncio.Task[Any]] = set(tasks)
    stopping = asyncio.create_task(stop.wait())
    loop = asyncio.get_running_loop()
    try:
        while pending and not stop.is_set():
            done, _ = await asyncio.wait(pending | {stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                pending.discard(task)
                _reap(task)
        deadline = loop.time() + grace
        while pending and not any(r.paused for r in retries):
            left = deadline - loop.time()
            if left <= 0:
                log.warning("stopping: a source did not finish its batch in time; cancelled (nothing acknowledged)")
                break
            done, pending = await asyncio.wait(pending, timeout=min(left, 0.2))
            for task in done:
                _reap(task)
    finally:
        stopping.cancel()
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, CaptureStopped | asyncio.CancelledError):
                continue
            if isinstance(result, BaseException):
                log.error("a source failed while stopping", extra={"error": type(result).__name__})


def _reap(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, CaptureStopped):
        raise exc


def matrix_source_config(settings: Settings, data_dir: Path, keys: KeyMaterial) -> MatrixSourceConfig:
    m = settings.matrix
    assert m is not None
    return MatrixSourceConfig(
        homeserver=m.homeserver,
        store_dir=m.store_dir or data_dir / "matrix-store",
        pickle_key=keys.derive("matrix-nio-store"),
        user_id=m.user_id,
        password_file=m.password_file,
        access_token_file=m.access_token_file,
        device_name=m.device_name,
        allowed_inviters=frozenset(m.allowed_inviters),
        rooms=frozenset(m.rooms),
        max_media_bytes=m.max_media_bytes,
        sync_timeout_ms=m.sync_timeout_ms,
    )


def signal_source_config(settings: Settings) -> SignalSourceConfig:
    s = settings.signal
    assert s is not None
    return SignalSourceConfig(
        endpoint=s.endpoint,
        account=s.account,
        receive_mode=s.receive_mode,
        attachments_dir=s.attachments_dir,
        max_media_bytes=s.max_media_bytes,
        max_message_bytes=s.max_message_bytes,
        max_disconnected_seconds=s.max_disconnected_seconds,
    )
