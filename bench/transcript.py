"""Benchmark: transcript rendering (first pass + `write_transcript`) against a bare-escape baseline.

Run: `.venv/bin/python bench/transcript.py [--entries 100000] [--senders 50]`

One conversation-month of synthetic events, built in memory: mostly text messages, with every 50th entry a
call event (start / answer / hangup of one call), every 100th a sticker, a few look-alike senders (a homoglyph
id and a display name copying another's). Measured, best of `--repeat` runs each, in the same process:

- baseline: for every entry, `html.escape` the sender id and the body into one `<li>` and encode (the least a
  transcript must do);
- transcript: `Lookahead.of(events)` (polls, edits, calls, participants and their look-alikes) and
  `write_transcript` with it (names, marks, per-kind bodies, the look-alike notice).

Prints entries/s, MB of HTML, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import html
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.archive.lookahead import Lookahead  # noqa: E402
from bridge.archive.transcript import TranscriptEntry, write_transcript  # noqa: E402
from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId  # noqa: E402

T0 = 1_705_320_000_000
WORDS = ("kamerbrief", "overleg", "minister", "concept", "begroting", "wetsvoorstel", "morgen", "akkoord", "nota")


def make_events(n: int, senders: int) -> list[Event]:
    ids = [f"@user{i}:bench.example" for i in range(senders)] + ["@user0:bench.exаmple"]  # Cyrillic а
    out: list[Event] = []
    for i in range(n):
        sender = ids[i % len(ids)]
        content: dict[str, object] = {"msgtype": "m.text", "body": " ".join(WORDS[(i + k) % 9] for k in range(30))}
        kind = Kind.MESSAGE
        if i % 50 == 0:
            action = ("invite", "answer", "hangup")[i // 50 % 3]
            kind, content = (
                Kind.STATE,
                {"type": f"m.call.{action}", "call": {"action": action, "call_id": f"c{i // 150}"}},
            )
        elif i % 100 == 1:
            content = {"sticker": True, "body": "duim"}
            kind = Kind.ATTACHMENT
        elif i == 2:
            kind, content = Kind.MEMBERSHIP, {"membership": "join", "target": sender, "displayname": "user1"}
        event = Event(
            MATRIX, ConversationId("!r:bench"), EventId(f"$b{i}"), kind, SenderId(sender), T0 + i, T0 + i, content
        )
        out.append(event)
    return out


def baseline(events: list[Event]) -> bytes:
    out = io.BytesIO()
    batch = []
    for i, ev in enumerate(events):
        body = ev.content.get("body")
        text = html.escape(body if isinstance(body, str) else "", quote=True)
        batch.append(f'<li id="e{i}"><b>{html.escape(ev.sender or "", quote=True)}</b> {text}</li>\n')
        if len(batch) == 256:
            out.write("".join(batch).encode("utf-8"))
            batch.clear()
    out.write("".join(batch).encode("utf-8"))
    return out.getvalue()


def transcript(events: list[Event]) -> bytes:
    out = io.BytesIO()
    entries = (TranscriptEntry(i, ev) for i, ev in enumerate(events))
    write_transcript(
        out, title="bench", conversation="!r:bench", month="2024-01", entries=entries, lookahead=Lookahead.of(events)
    )
    return out.getvalue()


def best(fn: object, events: list[Event], repeat: int) -> tuple[float, int]:
    assert callable(fn)
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = len(fn(events))
        times.append(time.perf_counter() - start)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    events = make_events(args.entries, args.senders)
    base_s, base_size = best(baseline, events, args.repeat)
    full_s, full_size = best(transcript, events, args.repeat)
    n = args.entries
    print(f"{n:,} entries, {args.senders + 1} senders (one look-alike), calls and stickers; best of {args.repeat}")
    print(f"  baseline (escape only)   {base_s:6.2f} s  {n / base_s:>10,.0f} entries/s  {base_size / 1e6:6.1f} MB")
    print(f"  transcript (2 passes)    {full_s:6.2f} s  {n / full_s:>10,.0f} entries/s  {full_size / 1e6:6.1f} MB")
    print(f"  transcript / baseline throughput: {base_s / full_s:.2f}")


if __name__ == "__main__":
    main()
