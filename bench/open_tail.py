"""Benchmark: what authenticating the unsealed tail costs when a writer opens the log.

Run: `.venv/bin/python bench/open_tail.py [--records 100000] [--repeat 3]`

A writer (`run`, `import`, `withhold`, `rotate-key`, the month-end seal) never
signs a record it has not authenticated, so `LogStore.open` decrypts and checks
every record after the newest signed checkpoint (see `bridge/log/store.py`).
This builds a log whose last N records are unsealed (as after a crash with an
enormous checkpoint interval; with the default of 10,000 records or 60 s the
tail is far shorter) and times, in the same run:

- baseline: the bare work over the same rows — SELECT, SHA-256 of the
  ciphertext, leaf hash, AES-256-GCM decrypt (cryptography), nothing else;
- open: `LogStore.open` (lock, key table, signed edge, chain, leaf, AEAD,
  commitment, payload parse, conversation and dedup tags).

Prints µs per record of both, the ratio, and the open time per 10^5 records.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from bridge.log import format, keys  # noqa: E402
from bridge.log.schema import initialise  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore  # noqa: E402
from tests.conftest import make_event  # noqa: E402


async def build(data_dir: Path, material: keys.KeyMaterial, n: int) -> None:
    policy = CheckpointPolicy(every_records=10**12, every_seconds=10**9)
    async with await LogStore.open(data_dir, material, policy) as store:
        for start in range(0, n, 1024):
            await store.append_events([make_event(i) for i in range(start, min(n, start + 1024))])


def baseline(db: Path) -> float:
    key = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    sealed = key.encrypt(nonce, b"x" * 16, None)
    t = time.perf_counter()
    conn = sqlite3.connect(db)
    for header, commit, body in conn.execute("SELECT header, commitment, body FROM records ORDER BY seq"):
        leaf = format.leaf_of(bytes(header), bytes(commit), bytes(body))
        hashlib.sha256(leaf).digest()
        # same-size AEAD work as the record (decrypting the record needs its real key, which the baseline
        # does not unwrap): encrypt+decrypt a buffer of the body's length
        ct = key.encrypt(nonce, bytes(body), None)
        key.decrypt(nonce, ct, None)
    conn.close()
    del sealed
    return time.perf_counter() - t


async def open_time(data_dir: Path, material: keys.KeyMaterial) -> float:
    t = time.perf_counter()
    store = await LogStore.open(data_dir, material)
    elapsed = time.perf_counter() - t
    await store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        material = keys.generate(os.urandom(16))
        initialise(data_dir, material)
        asyncio.run(build(data_dir, material, args.records))
        base = min(baseline(data_dir / "log.sqlite3") for _ in range(args.repeat))
        opened = min(asyncio.run(open_time(data_dir, material)) for _ in range(args.repeat))
    n = args.records
    print(f"unsealed records: {n}")
    print(f"baseline (select + leaf + AES-GCM): {base * 1e6 / n:.1f} us/record")
    print(f"LogStore.open (authenticate tail):   {opened * 1e6 / n:.1f} us/record")
    print(f"open per 10^5 unsealed records: {opened * 1e5 / n:.2f} s; ratio open/baseline {opened / base:.2f}")


if __name__ == "__main__":
    main()
