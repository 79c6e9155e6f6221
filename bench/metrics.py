"""Benchmark: capture with the metrics observer against capture without it, in the same run.

Run: `.venv/bin/python bench/metrics.py [--events 20000] [--batch 100] [--repeat 3]`

Both arms commit the same synthetic Matrix events through `LogSink.commit` into a fresh log (real store,
WAL, synchronous=FULL, group commit per batch); one with `observer=None`, one with `CaptureMetrics` (per
event: a counter by source and kind, a histogram observation; per batch: a gauge and two counters). Prints
events/s of both (best of `--repeat`, arms alternating) and the ratio, plus the observer's own cost per
event measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.capture import LogSink  # noqa: E402
from bridge.events import ConversationId, Event, EventId, Kind, SenderId, SourceName  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore, initialise  # noqa: E402
from bridge.metrics import CaptureMetrics  # noqa: E402


def event(i: int) -> Event:
    return Event(
        source=SourceName("matrix"),
        conversation=ConversationId(f"!room{i % 20}:example.org"),
        event_id=EventId(f"$e{i}"),
        kind=Kind.MESSAGE,
        sender=SenderId("@minister:example.org"),
        sent_at=1_700_000_000_000 + i,
        received_at=1_700_000_000_100 + i,
        content={"msgtype": "m.text", "body": f"bericht {i} " + "tekst " * 60},
    )


async def arm(root: Path, events: list[Event], batch: int, observer: CaptureMetrics | None) -> float:
    keys = keyfile.generate(os.urandom(16))
    data_dir = root / os.urandom(4).hex()
    initialise(data_dir, keys)
    policy = CheckpointPolicy(every_records=10_000, every_seconds=3600)
    async with await LogStore.open(data_dir, keys, policy) as store:
        sink = LogSink(store, "matrix:@archief:example.org", observer=observer)
        t = time.perf_counter()
        for start in range(0, len(events), batch):
            await sink.commit(events[start : start + batch], f"token-{start}")
        return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    events = [event(i) for i in range(args.events)]
    plain, observed = float("inf"), float("inf")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        for _ in range(args.repeat):
            plain = min(plain, asyncio.run(arm(Path(tmp), events, args.batch, None)))
            observed = min(observed, asyncio.run(arm(Path(tmp), events, args.batch, CaptureMetrics("bench"))))
    metrics = CaptureMetrics("bench")
    t = time.perf_counter()
    for start in range(0, len(events), args.batch):
        metrics.committed("matrix", events[start : start + args.batch], args.batch, 0, 1_700_000_001_000)
    alone = time.perf_counter() - t
    n = args.events
    print(f"{n} events in batches of {args.batch}")
    print(f"capture without observer: {n / plain:9.0f} events/s")
    print(f"capture with metrics    : {n / observed:9.0f} events/s")
    print(f"ratio (with / without)  : {plain / observed:.2f}")
    print(f"observer alone          : {alone / n * 1e6:.1f} us/event ({n / alone:.0f} events/s)")


if __name__ == "__main__":
    main()
