"""Benchmark: `chatarchief backup` against a plain folder copy of the same data dir, in the same run.

Run: `.venv/bin/python bench/backup.py [--events 50000] [--blobs 200] [--repeat 3]`

A log of `--events` synthetic messages (~1 KiB plaintext each) and `--blobs` encrypted media of 256 KiB is
written once. Then, best of `--repeat`:

- baselines: `shutil.copytree` of the data dir (what an operator might do by hand; NOT consistent beside a
  running writer, only a speed reference: it reads and writes the same bytes), without and with an `os.sync()`
  after it (the backup fsyncs every file, so the second is the fair one);
- chatarchief: `bridge.backup.backup` (SQLite backup API of the log, quick_check of the copy, fsync of every
  file, SHA-256 manifest).

Prints MiB/s of both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.backup import backup  # noqa: E402
from bridge.blobs import BlobStore  # noqa: E402
from bridge.events import ConversationId, Event, EventId, Kind, SenderId, SourceName  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore, initialise  # noqa: E402


def event(i: int) -> Event:
    return Event(
        source=SourceName("matrix"),
        conversation=ConversationId(f"!room{i % 20}:example.org"),
        event_id=EventId(f"$e{i}"),
        kind=Kind.MESSAGE,
        sender=SenderId("@minister:example.org"),
        sent_at=1_700_000_000_000 + i,
        received_at=1_700_000_000_100 + i,
        content={"msgtype": "m.text", "body": f"bericht {i} " + "tekst " * 160},
    )


async def fill(data_dir: Path, keys: keyfile.KeyMaterial, events: int, blobs: int) -> None:
    policy = CheckpointPolicy(every_records=10_000, every_seconds=3600)
    async with await LogStore.open(data_dir, keys, policy) as store:
        for start in range(0, events, 500):
            await store.append_events([event(i) for i in range(start, min(events, start + 500))])
        media = BlobStore(data_dir / "blobs", store.media_keys())
        for i in range(blobs):
            await media.put(os.urandom(256 * 1024 - 16) + i.to_bytes(16, "big"), "image/jpeg")
        await store.checkpoint()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--blobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        root = Path(tmp)
        keys = keyfile.generate(os.urandom(16))
        data_dir = root / "data"
        initialise(data_dir, keys)
        asyncio.run(fill(data_dir, keys, args.events, args.blobs))
        mib = size_of(data_dir) / 2**20
        base, synced, ours = float("inf"), float("inf"), float("inf")
        for n in range(args.repeat):
            t = time.perf_counter()
            shutil.copytree(data_dir, root / f"copy{n}")
            base = min(base, time.perf_counter() - t)
            t = time.perf_counter()
            shutil.copytree(data_dir, root / f"synced{n}")
            os.sync()
            synced = min(synced, time.perf_counter() - t)
            shutil.rmtree(root / f"synced{n}")
            t = time.perf_counter()
            report = backup(data_dir, root / f"backup{n}")
            ours = min(ours, time.perf_counter() - t)
            shutil.rmtree(root / f"copy{n}")
            shutil.rmtree(root / f"backup{n}")
        print(f"data dir: {args.events} events, {args.blobs} blobs, {mib:.1f} MiB ({report.files} files)")
        print(f"baseline copytree   : {base:6.2f} s  {mib / base:7.1f} MiB/s")
        print(f"baseline copy + sync: {synced:6.2f} s  {mib / synced:7.1f} MiB/s")
        print(f"chatarchief backup  : {ours:6.2f} s  {mib / ours:7.1f} MiB/s")
        print(f"ratio (backup / copy+sync throughput): {synced / ours:.2f}; (backup / copytree): {base / ours:.2f}")


if __name__ == "__main__":
    main()
