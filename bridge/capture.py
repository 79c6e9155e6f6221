"""Source -> log pipeline: the sink sources commit to, storage retries, and source supervision.

Contract: `LogSink.commit(events, cursor)` returns only once the events and the
cursor are durable in one transaction. While storage fails (disk full, I/O
error) it keeps the batch, logs an alert, and retries with backoff; the source
waits meanwhile, so its cursor (sync token, ack) never advances past what is
stored. `RetryingBlobs` does the same for media, which are written before the
event that references them. `supervise` watches the running sources and stops
them after the batch in hand. Wiring (which sources, which store, the archive
jobs, the control socket) is `bridge.app`'s: this module knows no config,
scheduler or archive. What happens here is reported to a `CaptureObserver`
(`bridge.app` passes the metrics one); capture never imports a metrics library.

Stopping always works: a source gets `STOP_GRACE_SECONDS` to commit the batch in
hand, then it is cancelled; a write paused by failing storage gives up at once
(`CaptureStopped`). Either way nothing was acknowledged upstream that is not
durable, since a source acknowledges only after its commit returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from bridge.blobs import BlobStore
from bridge.clock import now_ms
from bridge.errors import StorageError
from bridge.events import Event, Kind
from bridge.log.store import LogStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: After SIGTERM, how long a source may take to commit the batch in hand before it is cancelled.
STOP_GRACE_SECONDS = 5.0


class CaptureObserver(Protocol):
    """What capture reports as it goes (counts and times only: never content). `label` names the writer
    for operators ("matrix", "signal", "blobs"), never an account or a user id."""

    def committed(self, label: str, events: Sequence[Event], appended: int, duplicates: int, durable_ms: int) -> None:
        """`events` are durable (as of `durable_ms`): `appended` new records, `duplicates` already stored."""

    def storage_failed(self, label: str, error: str) -> None:
        """One write attempt failed; capture is paused until `storage_recovered`."""

    def storage_recovered(self, label: str) -> None:
        """The write that failed went through; capture goes on."""


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
        observer: CaptureObserver | None = None,
        label: str | None = None,
    ) -> None:
        self._name = name
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._stop = stop
        self._observer = observer
        self.label = label if label is not None else name.partition(":")[0]
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
                if self._observer is not None:
                    self._observer.storage_failed(self.label, str(exc))
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
                if self._observer is not None:
                    self._observer.storage_recovered(self.label)
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
        observer: CaptureObserver | None = None,
    ) -> None:
        self._store = store
        self._name = cursor_name
        self._observer = observer
        self._retry = StorageRetry(
            cursor_name, retry_initial=retry_initial, retry_max=retry_max, stop=stop, observer=observer
        )
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
        if self._observer is not None:
            self._observer.committed(self._retry.label, events, result.appended, result.duplicates, now_ms())
        report_compliance_alerts(events, self._name)


class RetryingBlobs:
    """The blob store as sources see it: a failing media write pauses capture like a failing commit.

    Media are stored before the event that references them is committed, so
    without this a full disk would stop the bot at the first attachment instead
    of pausing it.
    """

    def __init__(
        self,
        blobs: BlobStore,
        name: str = "blobs",
        *,
        stop: asyncio.Event | None = None,
        observer: CaptureObserver | None = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self._blobs = blobs
        self._retry = StorageRetry(name, retry_initial=retry_initial, retry_max=retry_max, stop=stop, observer=observer)

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
