"""Benchmark: the time per consistency proof the witness client makes, before and after the subtree cache.

Run: `.venv/bin/python bench/consistency.py [--sizes 100000 1000000] [--proofs 50]`

A log of N leaves is stood in for by a SQLite table of (seq, leaf) on disk (the real `records` table's rows
are ~1.4 KB, so a full read there is slower still: the "before" figure is a lower bound). Per size:

- before (same run, the baseline): what the client did per checkpoint until now: read all N leaves and
  `merkle.consistency_proof(leaves, old)`;
- after: `SubtreeCache` built once (one streaming read, reported apart), then per checkpoint: 10 new
  leaves appended and taken (`extend`), and `consistency_proof(old, new)` for a random old size.

Prints ms per proof for both, the one-off build time, the leaves read per proof and the cache's memory.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.log import merkle  # noqa: E402
from bridge.log.subtrees import SubtreeCache  # noqa: E402


def leaf(i: int) -> bytes:
    return merkle.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest())


def run(n: int, proofs: int, tmp: Path) -> None:
    conn = sqlite3.connect(tmp / f"leaves-{n}.sqlite3")
    conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, leaf BLOB NOT NULL)")
    conn.executemany("INSERT INTO records VALUES (?, ?)", ((i, leaf(i)) for i in range(n)))
    conn.commit()

    def read(start: int, end: int) -> list[bytes]:
        rows = conn.execute("SELECT leaf FROM records WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end))
        return [bytes(r[0]) for r in rows]

    rng = random.Random(n)
    before: list[float] = []
    for _ in range(3):
        old = rng.randrange(1, n)
        t = time.perf_counter()
        merkle.consistency_proof(read(0, n), old)
        before.append(time.perf_counter() - t)
    t = time.perf_counter()
    cache = SubtreeCache(read)
    cache.extend(n)
    build = time.perf_counter() - t
    size, after, reads = n, [], []
    for _ in range(proofs):
        conn.executemany("INSERT INTO records VALUES (?, ?)", ((i, leaf(i)) for i in range(size, size + 10)))
        size += 10
        old = rng.randrange(1, size)
        r0 = cache.leaves_read
        t = time.perf_counter()
        cache.extend(size)
        proof = cache.consistency_proof(old, size)
        after.append(time.perf_counter() - t)
        reads.append(cache.leaves_read - r0)
        assert merkle.verify_consistency(old, size, cache.root(old), cache.root(size), proof)
    nodes = sum(len(level) for level in cache._levels)
    b, a = statistics.median(before) * 1000, statistics.median(after) * 1000
    print(
        f"N={n:>9,}: before {b:8.1f} ms/proof | after {a:6.2f} ms/proof ({b / a:,.0f}x),"
        f" {statistics.mean(reads):.0f} leaves read/proof | cache built once in {build:.2f} s,"
        f" {nodes * 32 / 1024:.0f} KiB"
    )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--proofs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            run(n, args.proofs, Path(tmp))


if __name__ == "__main__":
    main()
