"""The capture-latency benchmark still runs (a smoke run at a small size, so it never rots; no timing asserted)."""

from __future__ import annotations

import pytest

from tests.support.bench import run_bench

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


def test_capture_benchmark_prints_every_case_observer_and_the_breakdown() -> None:
    """`bench/capture.py` with 2 messages per sender, 1 and 2 senders: a percentile line per observer and case
    (plain rooms also the peer module), a goal line per case, and the breakdown from the bot's debug timing."""
    out = run_bench("capture.py", "--messages", "2", "--senders", "1", "2", timeout=600)
    for case in ("1 sender, plain", "1 sender, encrypted", "2 senders, plain", "2 senders, encrypted"):
        assert f"  {case} (" in out, out
        assert f"  {case}: p50 " in out, out
        assert f"  {case}: sent -> " in out, out  # the breakdown found the bot's timing for it
    assert out.count("send round trip (the tick)") == 4
    assert out.count("chatarchief (durable)") == 4
    assert out.count("peer module in Synapse (durable)") == 2
    assert out.count("spool: our module (durable)") == 4  # Chatarchief's own module, encrypted rooms too
    assert "  1 sender, plain: spool p50 " in out, out
    assert "  1 sender, encrypted: spool p50 " in out, out
    assert "queued -> durable" in out
    assert "bare SQLite commit + fsync" in out
