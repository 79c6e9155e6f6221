"""Planning without a scan from record 0: boundaries found in SQLite, start and end edges from checkpoints.

The range rule (`range.py`) is a scan in log order, kept exact even when the writer's clock stepped back;
`LogView.boundary` runs that scan inside SQLite. The attack on the stored edges: a forged `frontier` column
in the checkpoints table (an insider with the database file) must not change what a package proves.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive.package import snapshot
from bridge.archive.range import BoundaryScan, Month, Window, window
from bridge.archive.verify_package import verify_package
from bridge.errors import LogIntegrityError
from bridge.log import keys as keyfile
from bridge.log.view import LogView, appended_ms
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, append, create_archive_log, event, ms, seal_for

#: Append times that step back over month boundaries (Dec 31 after Jan 2, Feb after Mar...).
STEPS = [ms(2024, 1, 2), ms(2023, 12, 31), ms(2024, 2, 10), ms(2024, 1, 30), ms(2024, 3, 5), ms(2024, 2, 28)]


@pytest.fixture(scope="module")
def stepping_log(tmp_path_factory: pytest.TempPathFactory) -> LogDir:
    mp = pytest.MonkeyPatch()
    try:
        log = create_archive_log(tmp_path_factory.mktemp("steps"))
        batches = [(at, [event(10 * i + k) for k in range(3)]) for i, at in enumerate(STEPS)]
        append(log, mp, batches)
    finally:
        mp.undo()
    return log


def _scanned(view: LogView, at: int) -> int | None:
    """range.py's rule: `BoundaryScan` fed every record in log order."""
    scan = BoundaryScan(Window(Month(2024, 1), "UTC", at, at + 1))
    for row in view.scan():
        scan.feed(row.seq, appended_ms(row.header))
    return scan.start


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=ms(2023, 12, 1), max_value=ms(2024, 3, 31)))
def test_boundary_in_sqlite_is_the_scan_in_log_order(stepping_log: LogDir, at: int) -> None:
    with LogView(stepping_log.data_dir, stepping_log.keys) as view:
        assert view.boundary(at) == _scanned(view, at)


def test_boundaries_at_each_append_time_and_around_it(stepping_log: LogDir) -> None:
    """Every instant where the answer can change (each append time, one ms either side) agrees with the scan."""
    with LogView(stepping_log.data_dir, stepping_log.keys) as view:
        times = sorted({appended_ms(r.header) for r in view.scan()})
        for t in times:
            for at in (t - 1, t, t + 1):
                assert view.boundary(at) == _scanned(view, at)
        assert view.boundary(0) == 0


def test_months_of_a_stepping_clock_tile_the_log_and_verify(stepping_log: LogDir, tmp_path: Path) -> None:
    """January, February and March packages start where the previous one ended, and each verifies."""
    pub = keyfile.load_public(keyfile.public_path(stepping_log.key_file))
    previous = None
    last_end = None
    for m in (1, 2, 3):
        out = tmp_path / f"m{m}"
        result = snapshot(stepping_log.data_dir, stepping_log.keys, Month(2024, m), out, OPTIONS,
                          seal=seal_for(stepping_log), allow_open_month=True)  # fmt: skip
        if last_end is not None:
            assert result.start == last_end
        last_end = result.end
        verify_package(out, pub, previous)
        previous = out
    with LogView(stepping_log.data_dir, stepping_log.keys) as view:
        assert last_end == view.size()


def test_a_forged_stored_edge_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's stored tree edge is only a shortcut: a forged one fails against the signed root."""
    log = create_archive_log(tmp_path)
    append(log, monkeypatch, [(ms(2024, 1, 10), [event(1), event(2)])])
    append(log, monkeypatch, [(ms(2024, 2, 10), [event(3), event(4)])])
    monkeypatch.undo()
    snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    with LogView(log.data_dir, log.keys) as view:
        start = view.boundary(window(Month(2024, 2), "Europe/Amsterdam").start_ms)
        assert start is not None and view.stored_frontier(start) is not None
    conn = sqlite3.connect(log.data_dir / "log.sqlite3")
    with conn:
        conn.execute("DROP TRIGGER checkpoints_no_update")
        (edge,) = conn.execute("SELECT frontier FROM checkpoints WHERE size = ?", (start,)).fetchone()
        forged = edge[:8] + bytes(len(edge) - 8)
        conn.execute("UPDATE checkpoints SET frontier = ? WHERE size = ?", (forged, start))
    conn.close()
    with pytest.raises(LogIntegrityError, match="do not match the signed checkpoint"):
        snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "feb", OPTIONS, seal=seal_for(log))
    assert not (tmp_path / "feb").exists()
