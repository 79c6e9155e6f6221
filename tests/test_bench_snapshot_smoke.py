"""A smoke run of bench/snapshot.py at a tiny size, so the benchmark never rots (no timing is asserted)."""

from __future__ import annotations

from tests.support.bench import run_bench


def test_snapshot_benchmark_runs_and_prints_every_row() -> None:
    out = run_bench("snapshot.py", "--events", "300", "--rooms", "3", "--workers", "1", "2")
    assert "300 events in 3 conversations" in out
    for row in ("baseline (decrypt only)", "snapshot, 1 process(es)", "verify-package, 2 process(es)"):
        assert row in out
    assert out.count("MB/s") == 5
    assert out.count("us/event") == 5
