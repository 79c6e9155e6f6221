"""`bench/synapse_module.py` still runs, now with a third server whose module spools (smoke size, no timing)."""

from __future__ import annotations

import re

import pytest

from tests.support.bench import run_bench

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


def test_module_cost_benchmark_prints_the_spooling_server_and_its_bytes() -> None:
    """All three servers' send and createRoom lines, and a spool that holds the spooling server's events."""
    out = run_bench("synapse_module.py", "--messages", "3", "--rooms", "2", timeout=600)
    for label in ("without module", "with module", "module + spool"):
        assert f"send       {label}" in out and f"createRoom {label}" in out, out
    written = re.search(r"spool: (\d+) bytes written", out)
    assert written is not None and int(written.group(1)) > 0, out  # the sends were spooled
