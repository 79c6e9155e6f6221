"""The import benchmark still runs (a smoke run at a small size, so it never rots; no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ingest_benchmark_runs_and_prints_its_table() -> None:
    """`bench/ingest.py` at 2,000 events imports every event in both pipelines and prints ratios, µs/event at
    both sizes and peak RSS (the lines the issue's table is read from)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--events", "2000", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for line in ("at 200: ratio chatarchief/baseline", "at 2000: ratio chatarchief/baseline", "us/event at 2000"):
        assert line in out, out
    assert "chatarchief peak RSS:" in out
    assert "bytes/event against" in out  # bytes on disk per event beside the input's (issue 15)


def test_consistency_benchmark_runs() -> None:
    """`bench/consistency.py` at a small size prints the before/after line (no timing asserted)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "consistency.py"), "--sizes", "3000", "--proofs", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "N=    3,000: before" in proc.stdout and "leaves read/proof" in proc.stdout, proc.stdout
