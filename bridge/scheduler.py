"""The monthly snapshot as an apscheduler job inside `chatarchief run`.

Contract: `ArchiveJobs.start()` runs a catch-up at once (every month from the
one holding the log's first record up to the last month that has ended, whose
package is not yet in `archive.destination`), then on the cron
`archive.schedule` in `archive.timezone` (default the 1st at 02:00
Europe/Amsterdam). A month whose package directory exists is never written
again (and the writer itself refuses to overwrite a different package), so
restarts and a late catch-up are harmless. Before each run the live log is
sealed with a checkpoint, so the month just ended can be closed. Snapshots run
one at a time in a worker thread; a failing month is logged as an ALERT and
the next run retries it. `stop()` waits for a snapshot in progress (it is
atomic either way: a crash leaves no half package).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bridge.archive.logscan import LogView
from bridge.archive.package import ArchiveOptions, SnapshotResult, package_name, snapshot
from bridge.archive.range import Month, month_of, months, zone
from bridge.config import Settings
from bridge.errors import ChatarchiefError, ConfigError
from bridge.log.keys import KeyMaterial
from bridge.log.schema import now_ms
from bridge.log.store import LogStore

log = logging.getLogger(__name__)


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
    ) -> None:
        self._data_dir = data_dir
        self._keys = keys
        self._destination = destination
        self._options = options
        self._store = store
        try:
            self._trigger = CronTrigger.from_crontab(schedule, timezone=zone(options.timezone))
        except ValueError as exc:
            raise ConfigError(f"archive.schedule {schedule!r} is not a cron expression: {exc}") from None
        self._scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()
        self._running: set[asyncio.Task[list[SnapshotResult]]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, data_dir: Path, keys: KeyMaterial, store: LogStore) -> ArchiveJobs:
        a = settings.archive
        return cls(data_dir, keys, a.destination, ArchiveOptions.from_settings(settings), a.schedule, store)

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
            return await asyncio.to_thread(self._catch_up)

    def _catch_up(self) -> list[SnapshotResult]:
        with LogView(self._data_dir, self._keys) as view:
            first = view.first_appended_ms()
        written: list[SnapshotResult] = []
        for month in due_months(first, now_ms(), self._options.timezone):
            out = self._destination / package_name(self._keys.log_id, month)
            if out.exists():
                continue
            try:
                result = snapshot(self._data_dir, self._keys, month, out, self._options)
            except (ChatarchiefError, OSError) as exc:
                log.error(
                    "ALERT monthly package failed; retried at the next run",
                    extra={"month": str(month), "error": str(exc)},
                )
                continue
            log.info(
                "monthly package written",
                extra={"month": str(month), "path": str(out), "records": result.end - result.start},
            )
            written.append(result)
        return written
