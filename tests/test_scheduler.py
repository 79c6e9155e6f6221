"""The monthly snapshot job (bridge.scheduler): due months, catch-up, never twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.archive.package import package_name
from bridge.archive.range import Month, window
from bridge.errors import ConfigError
from bridge.log import schema
from bridge.scheduler import ArchiveJobs, due_months
from tests.conftest import LogDir, create_log
from tests.support.archive_log import OPTIONS, january_february, ms


def test_due_months_are_the_ended_months_since_the_first_record() -> None:
    """From the month of record 0 up to (not including) the current month; none for an empty log."""
    now = ms(2024, 4, 10)
    assert [str(m) for m in due_months(ms(2024, 1, 31, 23), now, "Europe/Amsterdam")] == [
        "2024-01",
        "2024-02",
        "2024-03",
    ]
    assert due_months(None, now, "Europe/Amsterdam") == []
    assert due_months(window(Month(2024, 4), "Europe/Amsterdam").start_ms, now, "Europe/Amsterdam") == []


@pytest.fixture
def two_months(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    # The log is created in January 2024 too: its first records (the key records of `init`) date its start.
    monkeypatch.setattr(schema, "now_ms", lambda: ms(2024, 1, 1))
    log = create_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    return log


def test_catch_up_writes_missed_months_once(two_months: LogDir, tmp_path: Path) -> None:
    """Catch-up writes every ended month (incl. empty ones) that is missing, and never rewrites one."""
    dest = tmp_path / "archive"
    jobs = ArchiveJobs(two_months.data_dir, two_months.keys, dest, OPTIONS)
    first = asyncio.run(jobs.catch_up())
    assert [r.month for r in first][:3] == ["2024-01", "2024-02", "2024-03"]
    # January: the two KEY records of `init`, one BLOB record (its image) and 10 events; February: 10 events
    assert (first[0].start, first[0].end, first[1].end, first[2].end) == (0, 13, 23, 23)
    jan = dest / package_name(two_months.keys.log_id, Month(2024, 1))
    stamp = (jan / "bag-info.txt").stat().st_mtime_ns
    assert asyncio.run(jobs.catch_up()) == []
    assert (jan / "bag-info.txt").stat().st_mtime_ns == stamp


def test_scheduler_starts_with_a_catch_up_and_stops_cleanly(two_months: LogDir, tmp_path: Path) -> None:
    """start() runs the catch-up at once (inside the event loop); stop() waits for it."""
    dest = tmp_path / "archive"

    async def go() -> None:
        jobs = ArchiveJobs(two_months.data_dir, two_months.keys, dest, OPTIONS, "0 2 1 * *")
        jobs.start()
        await asyncio.sleep(0)
        await jobs.stop()

    asyncio.run(go())
    assert (dest / package_name(two_months.keys.log_id, Month(2024, 2))).is_dir()


def test_bad_schedule_is_a_config_error(tmp_path: Path) -> None:
    """archive.schedule must be a cron expression."""
    with pytest.raises(ConfigError, match=r"archive\.schedule"):
        ArchiveJobs(tmp_path, None, tmp_path, OPTIONS, "every month")  # type: ignore[arg-type]


def test_a_target_path_it_did_not_write_is_an_alert_and_retried(
    two_months: LogDir, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A month whose package path already holds something chatarchief did not write (here a folder with a
    stray file) is not skipped silently nor overwritten: ALERT, the later months are written, and once the
    path is cleared the next run writes it."""
    dest = tmp_path / "archive"
    feb = dest / package_name(two_months.keys.log_id, Month(2024, 2))
    feb.mkdir(parents=True)
    (feb / "notes.txt").write_text("not a package")
    jobs = ArchiveJobs(two_months.data_dir, two_months.keys, dest, OPTIONS, retry_seconds=60)
    first = asyncio.run(jobs.catch_up())
    assert "2024-02" not in [r.month for r in first] and "2024-03" in [r.month for r in first]
    assert "2024-02" in jobs.failed
    assert (feb / "notes.txt").read_text() == "not a package"
    assert any("ALERT monthly package blocked" in r.getMessage() for r in caplog.records)
    (feb / "notes.txt").unlink()
    feb.rmdir()
    second = asyncio.run(jobs.catch_up())
    assert "2024-02" in [r.month for r in second] and "2024-02" not in jobs.failed
    assert (feb / "bag-info.txt").is_file()


def test_a_blocked_month_schedules_a_retry(two_months: LogDir, tmp_path: Path) -> None:
    """Inside the scheduler a blocked month adds a one-off retry job, instead of waiting a whole month."""
    dest = tmp_path / "archive"
    (dest / package_name(two_months.keys.log_id, Month(2024, 2))).mkdir(parents=True)

    async def go() -> list[str]:
        jobs = ArchiveJobs(two_months.data_dir, two_months.keys, dest, OPTIONS, retry_seconds=3600)
        jobs.start()
        await asyncio.sleep(0)
        while jobs._running:  # the start-up catch-up
            await asyncio.sleep(0.05)
        assert jobs._scheduler is not None
        ids = [job.id for job in jobs._scheduler.get_jobs()]
        await jobs.stop()
        return ids

    assert "monthly-snapshot-retry" in asyncio.run(go())
