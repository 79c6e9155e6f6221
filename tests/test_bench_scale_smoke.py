"""A smoke run of bench/scale.py at tiny sizes, so the scale table never rots (no timing is asserted)."""

from __future__ import annotations

import re

from tests.support.bench import run_bench


def test_scale_benchmark_prints_its_table() -> None:
    """Every step runs at both sizes and the table has a row per size with the same-run baselines beside."""
    out = run_bench("scale.py", "--events", "200", "400", "--workers", "2", timeout=600)
    for step in ("import-baseline", "import", "read", "verify", "verify-key", "snapshot", "verify-package"):
        assert len(re.findall(rf"^ +[0-9,]+ {step} +[0-9.]+ s ", out, re.MULTILINE)) == 2, (step, out)
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split("|")[0].strip() == "events"
    rows = [line for line in table if line.split("|")[0].strip() in ("200", "400")]
    assert len(rows) == 2 and all(len(row.split("|")) == 10 for row in rows), table
    assert "2 process(es)" in table[-1]
