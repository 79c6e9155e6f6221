"""The wall clock, in the unit every record and event uses: integer milliseconds since the Unix epoch."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), from the system clock."""
    return time.time_ns() // 1_000_000
