"""A smoke run of bench/snapshot.py at a tiny size, so the benchmark never rots (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_snapshot_benchmark_runs_and_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "snapshot.py"), "--events", "300", "--rooms", "3", "--workers", "1", "2"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "300 events in 3 conversations" in out
    for row in ("baseline (decrypt only)", "snapshot, 1 process(es)", "verify-package, 2 process(es)"):
        assert row in out
    assert out.count("MB/s") == 5
