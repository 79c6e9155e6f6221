"""Every benchmark in bench/ still runs and prints the figures it is read for (smoke runs at small sizes, so
none rots; no timing is asserted: speed is measured by running them, see README "Scale")."""

from __future__ import annotations

import pytest

from tests.support.bench import run_bench


def test_ingest_benchmark_runs_and_prints_its_table() -> None:
    """`bench/ingest.py` at 2,000 events imports every event in both pipelines and prints ratios, µs/event at
    both sizes and peak RSS (the lines the issue's table is read from)."""
    out = run_bench("ingest.py", "--events", "2000", "--repeat", "1", "--workers", "1", "--in-process")
    for line in ("at 200: ratio chatarchief/baseline", "at 2000: ratio chatarchief/baseline", "us/event at 2000"):
        assert line in out, out
    assert "chatarchief peak RSS:" in out
    assert "bytes/event against" in out  # bytes on disk per event beside the input's (issue 15)
    assert "chatarchief CPU us/event at 2000 / at 200" in out  # linearity in CPU time, beside the wall figure
    assert "chatarchief bytes written per event" in out  # what grows when an index is written at random
    assert "chatarchief writer open on the imported log" in out  # the dedup filter is loaded at open
    assert "at 2000: ratio in-process/baseline" in out  # the import with no worker beside the one with workers


def test_consistency_benchmark_runs() -> None:
    """`bench/consistency.py` at a small size prints the before/after line."""
    out = run_bench("consistency.py", "--sizes", "3000", "--proofs", "5")
    assert "N=    3,000: before" in out and "leaves read/proof" in out, out


#: (script, small-size arguments, lines its output must hold: each figure beside its same-run baseline)
OTHERS = [
    ("backup.py", ["--events", "300", "--blobs", "3", "--repeat", "1"], ["baseline copy + sync", "ratio (backup"]),
    ("gaps.py", ["--events", "500", "--rooms", "3"], ["matrix hole detection", "liveness listing", "ratio"]),
    ("metrics.py", ["--events", "500", "--batch", "50", "--repeat", "1"], ["observer alone", "ratio (with / without)"]),
    ("open_tail.py", ["--records", "500", "--repeat", "1"], ["baseline (select + leaf + AES-GCM)", "ratio open"]),
    (
        "transcript.py",
        ["--entries", "300", "--senders", "3", "--repeat", "1"],
        ["baseline (escape only)", "throughput"],
    ),
    (
        "upload.py",
        ["--events", "300", "--media", "2", "--media-kib", "16", "--repeat", "1"],
        ["baseline copytree + sync", "ratio (upload+verify"],
    ),
    (
        "verify_log.py",
        ["--events", "500", "--repeat", "1"],
        ["bare-keyless w=1", "verify-keyless w=2", "bare-keyed w=2", "verify-keyed w=1", "verify-keyed w=2"],
    ),
    (
        "witness.py",
        ["--checkpoints", "10", "--logs", "1", "--seals", "3", "--repeat", "1"],
        ["baseline (decision + durable write", "add-checkpoint over HTTP"],
    ),
    ("decode_offload.py", [], ["inline ms", "off_loop ms"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "lines"), OTHERS, ids=[o[0] for o in OTHERS])
def test_benchmark_runs_at_a_small_size(script: str, args: list[str], lines: list[str]) -> None:
    out = run_bench(script, *args)
    for line in lines:
        assert line in out, out


def test_postgresql_benchmark_runs_beside_sqlite() -> None:
    """`bench/pg.py` at 3,000 events ingests and verifies on both backends in one run and prints the ratios."""
    out = run_bench("pg.py", "--events", "3000", "--batch", "512")
    for line in ("sqlite     ingest", "postgresql ingest", "ratio postgresql/sqlite: ingest"):
        assert line in out, out
