"""Run a benchmark script from bench/ at a small size (smoke runs, so no benchmark rots; no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 300) -> str:
    """`python bench/SCRIPT ARGS...` from the repository root; fails the test unless it exits 0. Its stdout."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout
