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


def test_snapshot_benchmark_prints_the_phases_of_each_snapshot() -> None:
    """`--phases`: each snapshot of this code is followed by its phases and what is left of its wall time."""
    out = run_bench("snapshot.py", "--events", "300", "--rooms", "3", "--workers", "1", "--phases")
    for phase in ("plan", "record pass", "render", "publish", "rest"):
        assert out.count(f"      {phase} ") == 1, phase
    assert out.count("cores busy") == 4
