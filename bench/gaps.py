"""Benchmark: what gap detection and the package's liveness listing cost, against the work beside them, same run.

Run: `.venv/bin/python bench/gaps.py [--events 100000] [--rooms 50]`

1. Matrix hole detection (`bridge.sources.matrix.holes.Holes.see`) per event, against the source's own per-event
   work it sits next to (`normalise`), over the same raw events (a linear history per room, interleaved), plus
   the cost of the committed heads (`Holes.heads` + `state.encode`) per sync batch against `encode` without heads.
2. The package's `proof/liveness.json` (`bridge.archive.gaps.Listing`): `add` per event plus `to_json`, for a month
   of heartbeats every 15 minutes among `--events` chat events, against decoding those events (`Event.from_json`
   of their canonical JSON, which the package writer does for each record anyway).

Prints ns per event for each side and the ratio. Pure CPU, no I/O: the figures are the overhead, not a throughput.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.archive.gaps import Listing  # noqa: E402
from bridge.archive.range import Month, window  # noqa: E402
from bridge.events import Event  # noqa: E402
from bridge.liveness import heartbeat_notice  # noqa: E402
from bridge.sources.matrix.holes import Holes  # noqa: E402
from bridge.sources.matrix.normalise import normalise  # noqa: E402
from bridge.sources.matrix.state import SourceState, encode  # noqa: E402


def raws(events: int, rooms: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(events):
        room, n = f"!room{i % rooms}:example.org", i // rooms
        out.append(
            (
                room,
                {
                    "type": "m.room.message",
                    "event_id": f"${room}-{n}",
                    "sender": "@minister:example.org",
                    "origin_server_ts": 1_700_000_000_000 + i,
                    "content": {"msgtype": "m.text", "body": f"bericht {n} over het besluit"},
                    "prev_events": [f"${room}-{n - 1}"] if n else [],
                },
            )
        )
    return out


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=50)
    args = parser.parse_args()
    n = args.events
    data = raws(n, args.rooms)

    def detect() -> None:
        holes = Holes(user_id="@bot:example.org")
        for room, raw in data:
            holes.see(room, raw)
        assert all(not holes.take(f"!room{r}:example.org") for r in range(args.rooms))

    def norm() -> None:
        for room, raw in data:
            normalise(raw, room_id=room, received_at=0)

    t_holes, t_norm = timed(detect), timed(norm)
    print(f"matrix hole detection: {t_holes / n * 1e9:,.0f} ns/event; normalise: {t_norm / n * 1e9:,.0f} ns/event;"
          f" ratio {t_holes / t_norm:.3f}")  # fmt: skip

    holes = Holes()
    for room, raw in data:
        holes.see(room, raw)
    batches = 1000
    t_heads = timed(lambda: [encode(SourceState(token="s", heads=holes.heads())) for _ in range(batches)])
    t_plain = timed(lambda: [encode(SourceState(token="s")) for _ in range(batches)])
    size = len(encode(SourceState(token="s", heads=holes.heads())))
    print(f"committed heads ({args.rooms} rooms): {t_heads / batches * 1e6:,.1f} us/batch vs"
          f" {t_plain / batches * 1e6:,.1f} us without; cursor document {size:,} bytes")  # fmt: skip

    win = window(Month(2024, 3), "Europe/Amsterdam")
    quarter = 15 * 60 * 1000
    beats = [heartbeat_notice(at, quarter, win.start_ms) for at in range(win.start_ms, win.end_ms, quarter)]
    events = [normalise(raw, room_id=room, received_at=0) for room, raw in data] + beats
    lines = [orjson.dumps(e.to_json()) for e in events]

    def listing() -> None:
        listing = Listing()
        for seq, e in enumerate(events):
            listing.add(seq, e)
        listing.to_json(win, win.end_ms)

    def decode() -> None:
        for line in lines:
            Event.from_json(orjson.loads(line))

    t_list, t_dec = timed(listing), timed(decode)
    m = len(events)
    print(f"liveness listing ({len(beats)} heartbeats among {m:,} records): {t_list / m * 1e9:,.0f} ns/record;"
          f" decoding the record: {t_dec / m * 1e9:,.0f} ns/record; ratio {t_list / t_dec:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
