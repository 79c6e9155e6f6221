"""Benchmark: live capture by `chatarchief run` against a bare nio listener, in the same run.

Run: `.venv/bin/python bench/capture.py [--senders 4] [--messages 50]`

A throwaway Synapse (bridge.dev.synapse) on 127.0.0.1. `--senders` officials (nio
clients with E2EE) each send `--messages` messages, alternating between a plain
and an encrypted room, all senders at once. Two observers are members of both
rooms:

- baseline: a bare nio listener (own sync loop, decrypts, does nothing else);
  an event counts when it appears in the listener's sync;
- chatarchief: the real `chatarchief run --config` as a subprocess (sync,
  decrypt, normalise, encrypt, hash, group commit, fsync, cursor); an event
  counts when its record is durable in the log, seen through a read-only SQLite
  view polled every 10 ms by its dedup tag (no decryption).

Latency is from just before the sender's `room_send` to the observation; both
observers run (or are polled) from this process, so scheduling noise hits both.
Throughput is messages / (first send -> last observation). Bot CPU is user+sys
of the bot process (from /proc) over the send window. The issue's goal:
p99 overhead <= 250 ms over the listener, throughput >= 90% of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.dev.officials import Official, make_official, ok  # noqa: E402
from bridge.dev.synapse import SynapseServer  # noqa: E402
from bridge.events import MATRIX  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log.keys import KeyMaterial  # noqa: E402
from bridge.log.store import dedup_tag, unwrap_keys  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


Person = Official


async def person(server: SynapseServer, store: Path, name: str) -> Person:
    return await make_official(server, store, name=name)


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Observed:
    at: dict[str, float] = field(default_factory=dict)


async def listen(listener: Person, rooms: set[str], seen: Observed, stop: asyncio.Event) -> None:
    """The baseline: sync, let nio decrypt, note when each event id shows up."""
    while not stop.is_set():
        response = await listener.sync(timeout_ms=1000)
        now = time.monotonic()
        for room_id, room in response.rooms.join.items():
            if room_id in rooms:
                for event in room.timeline.events:
                    seen.at.setdefault(event.event_id, now)


class DurableWatch:
    """Polls the bot's log read-only for records of the expected events (by dedup tag)."""

    def __init__(self, data_dir: Path, keys: KeyMaterial) -> None:
        self.conn = sqlite3.connect(f"file:{data_dir / 'log.sqlite3'}?mode=ro", uri=True)
        rows = [
            (int(k), str(p), bytes(w)) for k, p, w in self.conn.execute("SELECT key_id, purpose, wrapped FROM keys")
        ]
        self.index_key, _ = unwrap_keys(rows, keys)
        self.waiting: dict[bytes, str] = {}

    def expect(self, room_id: str, event_id: str) -> None:
        self.waiting[dedup_tag(self.index_key, MATRIX, room_id, event_id)] = event_id

    def cursor_set(self) -> bool:
        return self.conn.execute("SELECT count(*) FROM cursors").fetchone()[0] > 0

    async def run(self, seen: Observed, stop: asyncio.Event) -> None:
        while not stop.is_set():
            tags = list(self.waiting)
            for i in range(0, len(tags), 500):
                chunk = tags[i : i + 500]
                sql = f"SELECT dedup FROM records WHERE dedup IN ({','.join('?' * len(chunk))})"
                now = time.monotonic()
                for (tag,) in self.conn.execute(sql, chunk):
                    seen.at.setdefault(self.waiting.pop(bytes(tag)), now)
            await asyncio.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_config(work: Path, server: SynapseServer, bot_id: str, inviter: str) -> Path:
    secrets_dir = work / "secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "bot.password").write_text("pw-archivebot")
    (secrets_dir / "bot.password").chmod(0o600)
    config = work / "chatarchief.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{work / "data"}"\nkey_file = "{secrets_dir / "bench.key"}"\n\n'
        f'[matrix]\nhomeserver = "{server.url}"\nuser_id = "{bot_id}"\n'
        f'password_file = "{secrets_dir / "bot.password"}"\nallowed_inviters = ["{inviter}"]\n'
        'sync_timeout_ms = 30000\n\n[logging]\nlevel = "WARNING"\n'
    )
    return config


async def bench(work: Path, senders_n: int, per_sender: int) -> None:
    server = SynapseServer(work / "synapse")
    await asyncio.to_thread(server.start)
    bot_proc: subprocess.Popen[bytes] | None = None
    people: list[Person] = []
    try:
        bot_id, _ = await server.register_user_async("archivebot", "pw-archivebot")
        senders = [await person(server, work / "stores", f"sender{i}") for i in range(senders_n)]
        listener = await person(server, work / "stores", "listener")
        people = [*senders, listener]
        config = write_config(work, server, bot_id, senders[0].user_id)
        cli = [sys.executable, "-m", "bridge.cli"]
        init = [*cli, "init", "--config", str(config)]
        await asyncio.to_thread(subprocess.run, init, check=True, capture_output=True, cwd=ROOT)
        keys = keyfile.load(work / "secrets" / "bench.key")
        bot_log = (work / "bot.stderr").open("wb")
        bot_proc = await asyncio.to_thread(
            subprocess.Popen,
            [*cli, "run", "--config", str(config)],
            stdout=bot_log,
            stderr=bot_log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        watch = DurableWatch(work / "data", keys)

        async def bot_ready() -> bool:
            if bot_proc is not None and bot_proc.poll() is not None:
                raise RuntimeError(f"bot exited: {(work / 'bot.stderr').read_text()[-2000:]}")
            return watch.cursor_set()

        await until(bot_ready, 60, "the bot's first sync")
        owner = senders[0]
        invitees = [bot_id, *(p.user_id for p in people[1:])]
        plain = str(ok(await owner.client.room_create(invite=invitees)).room_id)
        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        secret = str(ok(await owner.client.room_create(invite=invitees, initial_state=[encryption])).room_id)
        rooms = (plain, secret)
        for p in people[1:]:
            for room_id in rooms:
                ok(await p.client.join(room_id))

        async def all_joined() -> bool:
            for p in people:
                await p.sync()
            members = {p.user_id for p in people} | {bot_id}
            return all(
                (room := p.client.rooms.get(r)) is not None and members <= set(room.users) - set(room.invited_users)
                for p in people
                for r in rooms
            )

        await until(all_joined, 60, "everyone to join")
        # Warm up: one encrypted message per sender shares the Megolm sessions outside the measurement.
        warm = []
        for s in senders:
            response = ok(
                await s.client.room_send(
                    secret, "m.room.message", {"msgtype": "m.text", "body": "warm"}, ignore_unverified_devices=True
                )
            )
            warm.append(response.event_id)
            watch.expect(secret, response.event_id)
        stop = asyncio.Event()
        heard, stored = Observed(), Observed()
        tasks = [
            asyncio.create_task(listen(listener, set(rooms), heard, stop)),
            asyncio.create_task(watch.run(stored, stop)),
        ]
        await until(lambda: asyncio.sleep(0, all(w in heard.at and w in stored.at for w in warm)), 60, "warm-up")

        sent_at: dict[str, float] = {}

        async def send(s: Person) -> None:
            for i in range(per_sender):
                room_id = rooms[i % 2]
                t0 = time.monotonic()
                content = {"msgtype": "m.text", "body": f"bench {s.user_id} {i}"}
                response = ok(
                    await s.client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)
                )
                sent_at[response.event_id] = t0
                watch.expect(room_id, response.event_id)

        cpu0, wall0 = cpu_seconds(bot_proc.pid), time.monotonic()
        await asyncio.gather(*(send(s) for s in senders))
        total = senders_n * per_sender
        await until(
            lambda: asyncio.sleep(0, all(e in heard.at and e in stored.at for e in sent_at)), 120, "all observed"
        )
        cpu1, wall1 = cpu_seconds(bot_proc.pid), time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        if bot_proc is not None and bot_proc.poll() is None:
            bot_proc.send_signal(signal.SIGTERM)
            bot_proc.wait(30)
        for p in people:
            await p.client.close()
        await asyncio.to_thread(server.stop)

    first = min(sent_at.values())
    report = {}
    for name, seen in (("listener", heard), ("chatarchief", stored)):
        lat = [(seen.at[e] - t0) * 1000 for e, t0 in sent_at.items()]
        span = max(seen.at[e] for e in sent_at) - first
        report[name] = (statistics.median(lat), percentile(lat, 0.99), max(lat), total / span)
        p50, p99, worst, rate = report[name]
        print(f"{name:12s} p50 {p50:6.0f} ms  p99 {p99:6.0f} ms  max {worst:6.0f} ms  throughput {rate:5.1f} msg/s")
    (lp50, lp99, _, lrate), (bp50, bp99, _, brate) = report["listener"], report["chatarchief"]
    print(f"messages: {total} ({senders_n} senders, half in an encrypted room); bot exit code {bot_proc.returncode}")
    print(f"overhead: p50 +{bp50 - lp50:.0f} ms, p99 +{bp99 - lp99:.0f} ms (goal <= 250 ms)")
    print(f"throughput ratio chatarchief/listener: {brate / lrate:.2f} (goal >= 0.90)")
    busy = cpu1 - cpu0
    print(
        f"bot CPU: {busy:.2f} s over {wall1 - wall0:.1f} s = {100 * busy / (wall1 - wall0):.0f}% of one core,"
        f" {1000 * busy / total:.1f} ms per message"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--messages", type=int, default=50, help="per sender")
    args = ap.parse_args()
    logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device": nio claims them itself
    with tempfile.TemporaryDirectory(prefix="chatarchief-bench-") as tmp:
        asyncio.run(bench(Path(tmp), args.senders, args.messages))


if __name__ == "__main__":
    main()
