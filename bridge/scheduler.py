"""The monthly snapshot as an apscheduler job inside `chatarchief run`.

Contract: `ArchiveJobs.start()` runs a catch-up at once (every month from the
one holding the log's first record up to the last month that has ended, whose
package is not yet in `archive.destination`), then on the cron
`archive.schedule` in `archive.timezone` (default the 1st at 02:00
Europe/Amsterdam). A month whose package directory exists is never written
again (and the writer itself refuses to overwrite a different package), so
restarts and a late catch-up are harmless. A target path that holds anything
this log did not write (a stray file, an empty folder, another log's package)
is never touched: it is an ALERT and retried later. Before each run the live
log is sealed with a checkpoint, so the month just ended can be closed; the
month-end checkpoint is signed through `seal` (inside `run`: the bot's own
store, on its event loop), never a second connection. Snapshots run one at a
time in a worker thread; a failing or blocked month is logged as an ALERT and
retried after `retry_seconds` (and at every scheduled run). `stop()` waits for
a snapshot in progress (it is atomic either way: a crash leaves no half package).

With `worm` (an `s3://` destination) a month's package is written to the data
dir's outbox and then published (bridge.worm.publish: upload under object lock,
read back and verified, receipt, local copy removed); a month with a receipt
that the bucket confirms is done (one the bucket contradicts is an ALERT, set
aside, and the month uploaded again); a package left in the outbox by a failed upload is uploaded as it is at
the next run (never rebuilt, never removed before its verified upload).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from bridge.archive.package import ArchiveOptions, SnapshotResult, package_name, snapshot
from bridge.archive.range import Month, month_of, months, zone
from bridge.archive.render import default_workers
from bridge.clock import now_ms
from bridge.errors import ChatarchiefError, ConfigError
from bridge.log.keys import KeyMaterial
from bridge.log.store import LogStore
from bridge.log.view import LogView
from bridge.worm.bucket import TransientStorageError
from bridge.worm.publish import WormDestination

log = logging.getLogger(__name__)

RETRY_SECONDS = 3600.0


def written_by_us(path: Path, name: str, key_name: str) -> bool:
    """Whether `path` is a package this log wrote: a bag whose bag-info names it and this log."""
    try:
        info = (path / "bag-info.txt").read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    lines = set(info.splitlines())
    return f"External-Identifier: {name}" in lines and f"Chatarchief-Log: {key_name}" in lines


def due_months(first_appended_ms: int | None, now: int, timezone: str) -> list[Month]:
    """Months that have ended, from the one holding the log's first record (none for an empty log)."""
    if first_appended_ms is None:
        return []
    current = month_of(now, timezone)
    first = month_of(first_appended_ms, timezone)
    return [m for m in months(first, current) if m < current]


class ArchiveJobs:
    """Writes missing monthly packages into `destination`; see the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        keys: KeyMaterial,
        destination: Path,
        options: ArchiveOptions,
        schedule: str = "0 2 1 * *",
        store: LogStore | None = None,
        *,
        seal: Callable[[int], str] | None = None,
        retry_seconds: float = RETRY_SECONDS,
        worm: WormDestination | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._keys = keys
        self._destination = destination
        self._options = options
        self._store = store
        self._seal = seal
        self._retry_seconds = retry_seconds
        self._worm = worm
        #: Months that failed or were blocked at the last run (retried later).
        self.failed: list[str] = []
        #: The latest month whose package is in `destination` (seen or written at the last run), for metrics.
        self.last_month: Month | None = None
        try:
            self._trigger = CronTrigger.from_crontab(schedule, timezone=zone(options.timezone))
        except ValueError as exc:
            raise ConfigError(f"archive.schedule {schedule!r} is not a cron expression: {exc}") from None
        self._scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()
        self._running: set[asyncio.Task[list[SnapshotResult]]] = set()

    def start(self) -> None:
        scheduler = AsyncIOScheduler(timezone=zone(self._options.timezone))
        scheduler.add_job(self._job, self._trigger, id="monthly-snapshot", coalesce=True, max_instances=1)
        scheduler.start()
        self._scheduler = scheduler
        self._spawn()  # start-up catch-up

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _job(self) -> None:
        await asyncio.shield(self._spawn())

    def _spawn(self) -> asyncio.Task[list[SnapshotResult]]:
        task = asyncio.get_running_loop().create_task(self.catch_up(), name="monthly-snapshot")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def catch_up(self) -> list[SnapshotResult]:
        """Write every due month's package that is not there yet; returns what was written."""
        async with self._lock:
            if self._store is not None:
                await self._store.checkpoint()  # seal the tail: the month that just ended can close
            written, self.failed = await asyncio.to_thread(self._catch_up)
            if self.failed:
                self._schedule_retry()
            return written

    def _schedule_retry(self) -> None:
        if self._scheduler is None:
            return
        when = datetime.now(UTC) + timedelta(seconds=self._retry_seconds)
        self._scheduler.add_job(
            self._job, DateTrigger(when), id="monthly-snapshot-retry", replace_existing=True, coalesce=True
        )

    def _snapshot(self, month: Month, out: Path) -> SnapshotResult:
        # Inside `run` one CPU stays with capture: rendering takes the others (none on a 2-CPU host).
        workers = max(1, default_workers() - 1)
        return snapshot(self._data_dir, self._keys, month, out, self._options, seal=self._seal, workers=workers)

    def _catch_up(self) -> tuple[list[SnapshotResult], list[str]]:
        with LogView(self._data_dir, self._keys) as view:
            first = view.first_appended_ms()
        written: list[SnapshotResult] = []
        failed: list[str] = []
        for month in due_months(first, now_ms(), self._options.timezone):
            name = package_name(self._keys.log_id, month)
            out = self._destination / name if self._worm is None else self._worm.staging(name)
            if self._worm is not None and self._worm.done(name) and self._receipt_holds(month, name):
                self.last_month = month
                continue
            if out.exists() or out.is_symlink():
                if written_by_us(out, name, self._keys.key_name):
                    if self._worm is None or self._publish(month, out):
                        self.last_month = month
                    else:
                        failed.append(str(month))
                    continue
                failed.append(str(month))
                log.error(
                    "ALERT monthly package blocked: its target path holds something chatarchief did not write;"
                    " move it away, the package is retried later",
                    extra={"month": str(month), "path": str(out), "retry_seconds": self._retry_seconds},
                )
                continue
            try:
                result = self._snapshot(month, out)
            except (ChatarchiefError, OSError) as exc:
                failed.append(str(month))
                log.error(
                    "ALERT monthly package failed; retried later",
                    extra={"month": str(month), "error": str(exc), "retry_seconds": self._retry_seconds},
                )
                continue
            log.info(
                "monthly package written",
                extra={"month": str(month), "path": str(out), "records": result.end - result.start},
            )
            written.append(result)
            if self._worm is None or self._publish(month, out):
                self.last_month = month
            else:
                failed.append(str(month))
        return written, failed

    def _receipt_holds(self, month: Month, name: str) -> bool:
        """A month with a receipt is done if the bucket holds that version (or cannot be asked now); a
        receipt the bucket contradicts is an ALERT, set aside, and the month is uploaded again."""
        assert self._worm is not None
        try:
            if self._worm.confirm_sync(name):
                return True
        except (TransientStorageError, ConfigError, OSError):
            return True  # cannot be asked now: the receipt stands until it can (uploads alert meanwhile)
        except ChatarchiefError:
            pass  # the bucket refuses that version (S3 answers 400 to a malformed version id): contradicted
        aside = self._worm.set_aside(name)
        log.error(
            "ALERT upload receipt contradicted by the bucket; the month is uploaded again",
            extra={"month": str(month), "receipt": str(aside), "destination": self._worm.url},
        )
        return False

    def _publish(self, month: Month, package: Path) -> bool:
        """Upload and verify a package in the outbox; False (an ALERT, the package kept) if that failed."""
        assert self._worm is not None
        try:
            self._worm.publish_sync(package)
        except (ChatarchiefError, OSError) as exc:
            log.error(
                "ALERT monthly package not uploaded; kept in the outbox, retried later",
                extra={
                    "month": str(month),
                    "path": str(package),
                    "destination": self._worm.url,
                    "error": str(exc),
                    "retry_seconds": self._retry_seconds,
                },
            )
            return False
        return True
