"""Month windows and range boundaries (bridge.archive.range)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.range import BoundaryScan, Month, month_of, months, parse_month, window
from bridge.errors import UsageError


def test_window_is_the_amsterdam_calendar_month() -> None:
    """A month runs from local midnight on the 1st to local midnight on the 1st of the next (CET/CEST)."""
    w = window(Month(2024, 3), "Europe/Amsterdam")
    assert w.start_ms == 1709247600000  # 2024-03-01T00:00+01:00
    assert w.end_ms == 1711922400000  # 2024-04-01T00:00+02:00 (after the DST switch)
    assert window(Month(2024, 12), "Europe/Amsterdam").end_ms == window(Month(2025, 1), "Europe/Amsterdam").start_ms


def test_parse_month_refuses_anything_but_yyyy_mm() -> None:
    """--month takes YYYY-MM only; anything else is a usage error naming the form."""
    assert parse_month("2024-03") == Month(2024, 3)
    for bad in ("2024-13", "2024-3", "march", "2024-03-01", ""):
        with pytest.raises(UsageError, match="YYYY-MM"):
            parse_month(bad)


def test_months_and_month_of() -> None:
    """months() is inclusive and crosses years; month_of uses the archive's time zone."""
    assert [str(m) for m in months(Month(2023, 11), Month(2024, 2))] == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert list(months(Month(2024, 2), Month(2024, 1))) == []
    assert month_of(window(Month(2024, 3), "Europe/Amsterdam").start_ms, "Europe/Amsterdam") == Month(2024, 3)
    assert month_of(window(Month(2024, 3), "Europe/Amsterdam").start_ms - 1, "Europe/Amsterdam") == Month(2024, 2)


def _range(times: list[int], month: Month) -> tuple[int, int]:
    scan = BoundaryScan(window(month, "UTC"))
    for seq, t in enumerate(times):
        scan.feed(seq, t)
    return scan.finish(len(times))


@given(st.lists(st.integers(min_value=0, max_value=12 * 31 * 86_400_000), max_size=60))
def test_ranges_tile_the_log_even_when_the_clock_steps_back(times: list[int]) -> None:
    """Consecutive months give contiguous ranges from 0 to the log's end, whatever the append times."""
    ranges = [_range(times, m) for m in months(Month(1970, 1), Month(1971, 1))]
    assert ranges[0][0] == 0
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start
    assert ranges[-1][1] == len(times)
    for start, end in ranges:
        assert start <= end


def test_a_record_stamped_early_after_the_boundary_stays_in_the_later_month() -> None:
    """Clock step back: the boundary is the first record at or after the instant; later records keep log order."""
    jan, feb = window(Month(1970, 1), "UTC"), window(Month(1970, 2), "UTC")
    times = [jan.start_ms, feb.start_ms, jan.start_ms + 5, feb.start_ms + 1]
    assert _range(times, Month(1970, 1)) == (0, 1)
    assert _range(times, Month(1970, 2)) == (1, 4)
