"""bridge/helper_process.py: helpers started ahead (`Started`) are handed out in order and always end."""

from __future__ import annotations

import pytest

from bridge import helper_process


@pytest.mark.parametrize("tails", [True, False])
def test_started_helpers_are_taken_in_order_and_all_end_on_close(tails: bool) -> None:
    """`take()` gives the processes in start order, then None; `start()` adds one more (taken next); each has a
    stderr tail unless `tails=False`; `close()` ends every one, taken or not (killed while waiting on stdin),
    and may be called again."""
    started = helper_process.Started("bridge.archive.render", "helper_main", 2, tails=tails)
    try:
        first, second = started.procs
        assert started.take() is first and started.take() is second and started.take() is None
        third = started.start()
        assert started.procs == [first, second, third] and started.take() is third
        assert len(started.tails) == (3 if tails else 0)
    finally:
        started.close()
    assert all(proc.returncode is not None and proc.returncode < 0 for proc in started.procs)
    started.close()
    assert all(proc.stdin is not None and proc.stdin.closed for proc in started.procs)
