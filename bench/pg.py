"""Benchmark: the log on PostgreSQL beside SQLite, in one run: ingest events/s and verify MB/s.

Run: `.venv/bin/python bench/pg.py [--events 1000000] [--batch 4096]`

Both backends take the same synthetic events through the real writer (`LogStore.append_events`, group
commits of `--batch` events, the import's size; checkpoints every 10,000 records) and then the real full
verify with the key (`verify_log`: recompute every leaf, chain, checkpoint root, decrypt and check every
record). PostgreSQL is a real server from Debian's binaries on 127.0.0.1 (tests/support/pg.py: fsync on,
synchronous_commit on), started by this script; SQLite is WAL with synchronous=FULL. Prints events/s,
verify MB/s (stored bytes of the records table per second) and the ratio PostgreSQL/SQLite of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log.db import PgTarget  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore, initialise  # noqa: E402
from bridge.log.verify import open_readonly, verify_log  # noqa: E402
from tests.support.pg import PgServer  # noqa: E402


def event(i: int) -> Event:
    return Event(
        source=MATRIX,
        conversation=ConversationId(f"!room{i % 50}:ministerie.example"),
        event_id=EventId(f"$bench{i}"),
        kind=Kind.MESSAGE,
        sender=SenderId(f"@official{i % 20}:ministerie.example"),
        sent_at=1_700_000_000_000 + i,
        received_at=1_700_000_000_500 + i,
        content={"msgtype": "m.text", "body": f"bericht {i} over de kamerbrief en het overleg van morgen " * 4},
        raw={"type": "m.room.message", "event_id": f"$bench{i}"},
    )


async def ingest(data_dir: Path, keys: keyfile.KeyMaterial, n: int, batch: int) -> float:
    policy = CheckpointPolicy(every_records=10_000, every_seconds=3600)
    start = time.perf_counter()
    async with await LogStore.open(data_dir, keys, policy) as store:
        pending: list[asyncio.Task[object]] = []
        for lo in range(0, n, batch):
            # two batches in flight, as the importer pipelines them (seal the next while one commits)
            pending.append(asyncio.create_task(store.append_events([event(i) for i in range(lo, min(n, lo + batch))])))
            if len(pending) >= 2:
                await pending.pop(0)
        for task in pending:
            await task
        await store.checkpoint()
    return time.perf_counter() - start


def stored_bytes(data_dir: Path) -> int:
    conn = open_readonly(data_dir)
    try:
        row = conn.execute(
            "SELECT sum(length(dedup) + length(header) + length(commitment) + length(body) + length(leaf)) FROM records"
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def one(name: str, root: Path, pg: PgTarget | None, n: int, batch: int) -> tuple[float, float]:
    data_dir = root / name / "data"
    key_file = root / name / "keys" / "k.key"
    key_file.parent.mkdir(parents=True, mode=0o700)
    keys = keyfile.generate(os.urandom(16))
    keyfile.write_new(key_file, keys)
    initialise(data_dir, keys, pg)
    took = asyncio.run(ingest(data_dir, keys, n, batch))
    size = stored_bytes(data_dir)
    start = time.perf_counter()
    report = verify_log(data_dir, keys)
    verify_s = time.perf_counter() - start
    assert report.records == n + 2 and report.unsealed == 0
    eps, mbs = n / took, size / verify_s / 1e6
    print(
        f"{name:10s} ingest {eps:10.0f} events/s   verify {mbs:7.1f} MB/s ({size / 1e6:.0f} MB stored, {n} events)",
        flush=True,
    )
    return eps, mbs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one backend (no ratio)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the server (finally)
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        root = Path(tmp)
        server = PgServer(root / "pg-client")
        server.start()
        try:
            lite = one("sqlite", root, None, args.events, args.batch) if args.only != "postgresql" else None
            pg = (
                one("postgresql", root, server.new_log_target(), args.events, args.batch)
                if args.only != "sqlite"
                else None
            )
        finally:
            server.stop()
    if lite is not None and pg is not None:
        print(f"ratio postgresql/sqlite: ingest {pg[0] / lite[0]:.2f}, verify {pg[1] / lite[1]:.2f}")


if __name__ == "__main__":
    main()
