"""Which records belong to a month (pure: values in, values out).

A month is a calendar month in the archive's time zone (config
`archive.timezone`, default Europe/Amsterdam): the half-open window of append
times [first instant of the month, first instant of the next month).

The package of a month holds the contiguous leaf range [start, end) where

    start = the first seq whose appended_ms >= the month's first instant
    end   = the first seq whose appended_ms >= the next month's first instant

(or the log's size when there is none). `appended_ms` (the record header's
append time) is non-decreasing in practice: the writer stamps each batch with
the wall clock. When the clock steps back, the rule still gives contiguous
ranges that tile the log without gaps or overlaps (the boundary for a later
instant is never before the boundary for an earlier one), and a record keeps
its place in log order: a record stamped "too early" after a boundary belongs
to the later month, and its own append time is shown in the package. So the
end of one month is always the start of the next, and the first month (the
one holding record 0) starts at 0. Finding the boundaries scans the headers in
order (`BoundaryScan`; `LogView.boundary` runs the same scan inside SQLite,
comparing the header's big-endian append time as bytes); a binary search would
be cheaper but would depend on the log's size when the clock stepped back, so a
month's range could change as the log grows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.errors import UsageError

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1 <= self.month <= 12 and 1 <= self.year <= 9998):
            raise ValueError(f"not a month: {self.year:04d}-{self.month:02d}")

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)


def parse_month(text: str) -> Month:
    """`YYYY-MM` -> Month; UsageError naming the expected form otherwise."""
    m = _MONTH.fullmatch(text.strip())
    try:
        if m is None:
            raise ValueError
        return Month(int(m.group(1)), int(m.group(2)))
    except ValueError:
        raise UsageError(f"--month must be YYYY-MM (e.g. 2024-03), got {text!r}") from None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"archive.timezone {name!r} is not a known time zone (e.g. Europe/Amsterdam)") from None


def first_instant_ms(month: Month, tz: ZoneInfo) -> int:
    """Unix ms of local midnight on the 1st of `month` in `tz`."""
    return int(datetime(month.year, month.month, 1, tzinfo=tz).timestamp()) * 1000


@dataclass(frozen=True, slots=True)
class Window:
    """The append-time window [start_ms, end_ms) of a month in a time zone."""

    month: Month
    timezone: str
    start_ms: int
    end_ms: int


def window(month: Month, timezone: str) -> Window:
    tz = zone(timezone)
    return Window(month, timezone, first_instant_ms(month, tz), first_instant_ms(month.next(), tz))


def month_of(ms: int, timezone: str) -> Month:
    """The month (in `timezone`) holding the instant `ms`."""
    local = datetime.fromtimestamp(ms / 1000, zone(timezone))
    return Month(local.year, local.month)


def months(first: Month, last: Month) -> Iterator[Month]:
    """first, ..., last (inclusive); nothing when last < first."""
    m = first
    while m <= last:
        yield m
        m = m.next()


class BoundaryScan:
    """Feed (seq, appended_ms) in log order; `start`/`end` are the month's range boundaries once seen.

    `start`/`end` stay None until the boundary record is fed; `finish(size)`
    then fills in the log's size for a boundary that no record reached.
    """

    __slots__ = ("_window", "end", "start")

    def __init__(self, win: Window) -> None:
        self._window = win
        self.start: int | None = None
        self.end: int | None = None

    def feed(self, seq: int, appended_ms: int) -> None:
        if self.start is None and appended_ms >= self._window.start_ms:
            self.start = seq
        if self.end is None and appended_ms >= self._window.end_ms:
            self.end = seq
            if self.start is None:  # cannot happen (end_ms > start_ms), kept for clarity
                self.start = seq

    @property
    def done(self) -> bool:
        return self.end is not None

    def finish(self, size: int) -> tuple[int, int]:
        start = self.start if self.start is not None else size
        end = self.end if self.end is not None else size
        return start, end
