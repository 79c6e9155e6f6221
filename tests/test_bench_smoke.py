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


def test_postgresql_benchmark_runs_beside_sqlite() -> None:
    """`bench/pg.py` at 3,000 events ingests and verifies on both backends in one run and prints the ratios."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pg.py"), "--events", "3000", "--batch", "512"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("sqlite     ingest", "postgresql ingest", "ratio postgresql/sqlite: ingest"):
        assert line in proc.stdout, proc.stdout
