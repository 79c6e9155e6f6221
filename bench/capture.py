"""Benchmark: is a message durable in the archive before its sender sees the tick? (issue 15, item 4)

Run: `.venv/bin/python bench/capture.py [--messages 60] [--senders 1 8]`

One throwaway Synapse (bridge.dev.synapse) on 127.0.0.1 holds, side by side:
- chatarchief: the real `chatarchief run --config` as a subprocess (sync, decrypt, normalise, encrypt, hash,
  commit with fsync, cursor); a message counts when its record is in the log, seen through a read-only SQLite
  view polled every `POLL` seconds by its dedup tag (no decryption);
- peer module: `bench/peer/peer_archive.py` loaded into the same Synapse, a server-side archiver that stores
  each plain-room message from `on_new_event` in its own SQLite file with an fsync (it cannot read encrypted
  rooms); polled the same way, in the same loop;
- spool (unless `--no-spool`): Chatarchief's own Synapse module (`synapse-module/`) loaded into the same Synapse
  with `spool:`, which seals each event of the bot's rooms from `on_new_event` to the bot's key (encrypted rooms
  as their Megolm ciphertext) and appends it to its spool with an fsync; a message counts when its frame is in
  the spool (the bench holds the bot's key and polls the spool in the same loop). `chatarchief run` then has
  `matrix.spool_dir` and reads the spool too (decrypting encrypted rooms with its own room keys), so its own
  column is the spool path end to end, or the sync loop where that is first;
- listener: a bare nio client in its own sync loop (decrypts, stores nothing): the floor of any sync client;
- push (with `--push`): `bench/peer/appservice_receiver.py`, an application service registered with the same
  Synapse for the bot's rooms, which stores each plain-room message pushed to it with an fsync before it answers
  (Synapse retries until then): what receiving plain rooms by push instead of sync would cost, before building
  it in. Off by default: Synapse's own bookkeeping of each push transaction (database writes) slows the syncs
  of everyone else on the server, so it is measured in a run of its own.

With `--receipts` the traffic is like real clients': each sender sends typing notices around its message and the
listener a read receipt for what it saw (Synapse pushes both to every member's sync).

Each case (1 and 8 senders, a plain and an encrypted room) sends `--messages` messages one at a time per sender:
a sender sends its next message once the previous one is durable in chatarchief's log and seen by the others
(8 senders do this concurrently). Latency runs from just before the sender's `room_send`; "send round trip" is
that `room_send` call itself (the tick). Prints p50/p95/p99 per observer and case, whether the goal holds
(chatarchief p50 <= send round trip p50, and <= the peer module's in plain rooms; with the spool, the same
for the spool's own column), and where chatarchief's
time goes per message from the bot's debug timing (`bridge.sources.matrix.timing`), beside a bare SQLite
commit with fsync on the same disk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

import orjson
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.app import spool_private_key  # noqa: E402
from bridge.dev.officials import Official, make_official, ok  # noqa: E402
from bridge.dev.synapse import SynapseServer, archiver_module_config, free_port  # noqa: E402
from bridge.events import MATRIX  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log.keys import KeyMaterial  # noqa: E402
from bridge.log.store import dedup_tag, unwrap_keys  # noqa: E402
from bridge.sources.matrix.spool import Position, more, read, spool_public_key_b64  # noqa: E402
from bridge.sources.matrix.timing import ENV as TRACE_ENV  # noqa: E402

PEER_DIR = ROOT / "bench" / "peer"
#: How often the log and the peer's database are polled (both in one loop: the same lag for both).
POLL = 0.002
STAGES = ("sync", "http", "parsed", "received", "normalised", "queued", "durable")


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Observed:
    """When each event id was seen by one observer, with waiters woken on arrival."""

    at: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)

    def mark(self, event_id: str, now: float) -> None:
        if event_id not in self.at:
            self.at[event_id] = now
            if (waiter := self.waiters.pop(event_id, None)) is not None:
                waiter.set()

    async def wait(self, event_id: str, timeout: float = 60) -> None:
        if event_id in self.at:
            return
        waiter = self.waiters.setdefault(event_id, asyncio.Event())
        await asyncio.wait_for(waiter.wait(), timeout)


async def listen(
    listener: Official, rooms: set[str], seen: Observed, stop: asyncio.Event, receipts: set[asyncio.Task[Any]] | None
) -> None:
    """The floor: a bare nio sync loop (nio decrypts); notes when each event id shows up. With `receipts` it
    also sends a read receipt for what it saw, in the background, as a reader's client does."""
    while not stop.is_set():
        response = await listener.sync(timeout_ms=5000)
        now = time.monotonic()
        for room_id, room in response.rooms.join.items():
            if room_id in rooms:
                for event in room.timeline.events:
                    seen.mark(event.event_id, now)
                if receipts is not None and room.timeline.events:
                    last = room.timeline.events[-1].event_id
                    task = asyncio.create_task(listener.client.room_read_markers(room_id, last, last))
                    receipts.add(task)
                    task.add_done_callback(receipts.discard)


class Watch:
    """Polls the bot's log (by dedup tag) and the peer module's database (by event id), read-only, in one loop."""

    def __init__(
        self,
        data_dir: Path,
        keys: KeyMaterial,
        peer_db: Path,
        push_db: Path | None,
        spool: tuple[Path, X25519PrivateKey] | None = None,
    ) -> None:
        self.log = sqlite3.connect(f"file:{data_dir / 'log.sqlite3'}?mode=ro", uri=True)
        rows = [(int(k), str(p), bytes(w)) for k, p, w in self.log.execute("SELECT key_id, purpose, wrapped FROM keys")]
        self.index_key, _ = unwrap_keys(rows, keys)
        self.peers = {"peer": sqlite3.connect(f"file:{peer_db}?mode=ro", uri=True)}
        if push_db is not None:
            self.peers["push"] = sqlite3.connect(f"file:{push_db}?mode=ro", uri=True)
        self.in_log: dict[bytes, str] = {}
        self.waiting: dict[str, set[str]] = {name: set() for name in self.peers}
        #: event id -> CLOCK_MONOTONIC when the peer module's callback ran (Synapse had persisted it).
        self.persisted: dict[str, float] = {}
        self.spool = spool
        self.spool_at = Position()

    def expect(self, room_id: str, event_id: str, peer: bool) -> None:
        self.in_log[dedup_tag(self.index_key, MATRIX, room_id, event_id)] = event_id
        if peer:
            for waiting in self.waiting.values():
                waiting.add(event_id)

    def cursor_set(self) -> bool:
        return bool(self.log.execute("SELECT count(*) FROM cursors").fetchone()[0] > 0)

    async def run(self, stored: Observed, others: dict[str, Observed], stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.in_log:
                tags = list(self.in_log)
                sql = f"SELECT dedup FROM records WHERE dedup IN ({','.join('?' * len(tags))})"
                now = time.monotonic()
                for (tag,) in self.log.execute(sql, tags):
                    stored.mark(self.in_log.pop(bytes(tag)), now)
            for name, conn in self.peers.items():
                if not (ids := list(self.waiting[name])):
                    continue
                sql = f"SELECT event_id, seen FROM messages WHERE event_id IN ({','.join('?' * len(ids))})"
                now = time.monotonic()
                for event_id, seen in conn.execute(sql, ids):
                    self.waiting[name].discard(event_id)
                    if name == "peer":
                        self.persisted[event_id] = seen
                    others[name].mark(event_id, now)
            if self.spool is not None and more(self.spool[0], self.spool_at):
                frames, self.spool_at = read(self.spool[0], self.spool_at, self.spool[1], 10_000)
                now = time.monotonic()
                for frame in frames:
                    if frame.event is not None:
                        others["spool"].mark(str(frame.event.get("event_id")), now)
            await asyncio.sleep(POLL)


@dataclass(frozen=True)
class Sample:
    case: str
    room: str
    event_id: str
    t0: float
    rtt: float


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_config(work: Path, url: str, bot_id: str, inviter: str, spool_dir: Path | None) -> Path:
    secrets_dir = work / "secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "bot.password").write_text("pw-archivebot")
    (secrets_dir / "bot.password").chmod(0o600)
    config = work / "chatarchief.toml"
    config.write_text(
        '[organisation]\nname = "Ministerie van Benchzaken"\narchive_creator_id = "bench"\n\n'
        f'[storage]\ndata_dir = "{work / "data"}"\nkey_file = "{secrets_dir / "bench.key"}"\n\n'
        f'[matrix]\nhomeserver = "{url}"\nuser_id = "{bot_id}"\n'
        f'password_file = "{secrets_dir / "bot.password"}"\nallowed_inviters = ["{inviter}"]\n'
        + (f'spool_dir = "{spool_dir}"\n' if spool_dir is not None else "")
        + 'sync_timeout_ms = 30000\n\n[logging]\nlevel = "WARNING"\n'
    )
    return config


def fsync_baseline(work: Path, n: int = 200) -> list[float]:
    """A bare one-row SQLite commit (WAL, synchronous=FULL) on the bench's disk, in ms."""
    conn = sqlite3.connect(work / "fsync.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (v BLOB)")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(1500),))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1000)
    conn.close()
    return times


def start_receiver(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The push receiver, and an application-service registration for Synapse that sends it the bot's rooms."""
    port, hs_token = free_port(), os.urandom(16).hex()
    receiver = subprocess.Popen(
        [sys.executable, str(PEER_DIR / "appservice_receiver.py"), str(port), hs_token, str(work / "push.sqlite3")],
        stdin=subprocess.DEVNULL,
    )
    registration = work / "appservice.yaml"
    registration.write_text(
        yaml.safe_dump(
            {
                "id": "chatarchief-push",
                "url": f"http://127.0.0.1:{port}",
                "as_token": os.urandom(16).hex(),
                "hs_token": hs_token,
                "sender_localpart": "archivepush",
                "namespaces": {"users": [{"exclusive": False, "regex": "@archivebot:localhost"}]},
                "rate_limited": False,
            }
        )
    )
    return receiver, registration


def start_synapse(work: Path, registration: Path | None, port: int, ours: dict[str, Any] | None) -> SynapseServer:
    """The bench's Synapse on `port` with the peer module, and Chatarchief's own module (`ours`) if given."""
    peer = {"module": "peer_archive.PeerArchive", "config": {"database": str(work / "peer.sqlite3")}}
    extra: dict[str, Any] = {"modules": [peer, *([ours] if ours is not None else [])]}
    if registration is not None:
        extra["app_service_config_files"] = [str(registration)]
    server = SynapseServer(work / "synapse", port=port, extra_config=extra, archiver_module=ours)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PEER_DIR), old) if p)
    try:
        server.start()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return server


async def bench(
    work: Path, senders_cases: list[int], messages: int, with_push: bool, with_receipts: bool, with_spool: bool
) -> None:
    # The bot's key first: Chatarchief's module seals the spool to the public key derived from it.
    port, bot_id, inviter = free_port(), "@archivebot:localhost", "@sender0:localhost"
    spool_dir = work / "spool" if with_spool else None
    config = write_config(work, f"http://127.0.0.1:{port}", bot_id, inviter, spool_dir)
    cli = [sys.executable, "-m", "bridge.cli"]
    init = [*cli, "init", "--config", str(config)]
    await asyncio.to_thread(subprocess.run, init, check=True, capture_output=True, cwd=ROOT)
    keys = keyfile.load(work / "secrets" / "bench.key")
    spool_key = spool_private_key(keys)
    ours = None
    if spool_dir is not None:
        ours = archiver_module_config(bot_id, officials=(inviter,))
        ours["config"]["spool"] = {"path": str(spool_dir), "public_key": spool_public_key_b64(spool_key)}
    receiver, registration = start_receiver(work) if with_push else (None, None)
    try:
        server = await asyncio.to_thread(start_synapse, work, registration, port, ours)
    except BaseException:
        if receiver is not None:
            receiver.terminate()
        raise
    bot_proc: subprocess.Popen[bytes] | None = None
    people: list[Official] = []
    trace = work / "trace.jsonl"
    samples: list[Sample] = []
    try:
        registered, _ = await server.register_user_async("archivebot", "pw-archivebot")
        senders = [await make_official(server, work / "stores", name=f"sender{i}") for i in range(max(senders_cases))]
        listener = await make_official(server, work / "stores", name="listener")
        people = [*senders, listener]
        assert (registered, senders[0].user_id) == (bot_id, inviter), (registered, senders[0].user_id)
        bot_log = (work / "bot.stderr").open("wb")
        bot_proc = await asyncio.to_thread(
            subprocess.Popen,
            [*cli, "run", "--config", str(config)],
            stdout=bot_log,
            stderr=bot_log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, TRACE_ENV: str(trace)},
        )
        owner = senders[0]
        invitees = [bot_id, *(p.user_id for p in people[1:])]
        plain = str(ok(await owner.client.room_create(invite=invitees)).room_id)
        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        secret = str(ok(await owner.client.room_create(invite=invitees, initial_state=[encryption])).room_id)
        rooms = {"plain": plain, "encrypted": secret}
        for p in people[1:]:
            for room_id in rooms.values():
                ok(await p.client.join(room_id))
        watch: Watch | None = None

        async def bot_ready() -> bool:
            nonlocal watch
            if bot_proc is not None and bot_proc.poll() is not None:
                raise RuntimeError(f"bot exited: {(work / 'bot.stderr').read_text()[-2000:]}")
            push_db = work / "push.sqlite3" if with_push else None
            dbs = [work / "data" / "log.sqlite3", work / "peer.sqlite3", *([push_db] if push_db else [])]
            if watch is None and all(db.exists() for db in dbs):
                watch = Watch(work / "data", keys, dbs[1], push_db, (spool_dir, spool_key) if spool_dir else None)
            return watch is not None and watch.cursor_set()

        await until(bot_ready, 90, "the bot's first sync")
        assert watch is not None

        async def all_joined() -> bool:
            for p in people:
                await p.sync()
            members = {p.user_id for p in people} | {bot_id}
            return all(
                (room := p.client.rooms.get(r)) is not None and members <= set(room.users) - set(room.invited_users)
                for p in people
                for r in rooms.values()
            )

        await until(all_joined, 90, "everyone to join")
        stop = asyncio.Event()
        heard, stored, peer, push, spooled = Observed(), Observed(), Observed(), Observed(), Observed()
        receipts: set[asyncio.Task[Any]] | None = set() if with_receipts else None
        tasks = [
            asyncio.create_task(listen(listener, set(rooms.values()), heard, stop, receipts)),
            asyncio.create_task(watch.run(stored, {"peer": peer, "push": push, "spool": spooled}, stop)),
        ]

        async def one(s: Official, room: str, body: str, case: str | None) -> None:
            assert watch is not None
            room_id = rooms[room]
            content = {"msgtype": "m.text", "body": body}
            if with_receipts:  # composing: the sender's client says it is typing
                ok(await s.client.room_typing(room_id, True))
            t0 = time.monotonic()
            response = ok(await s.client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True))
            rtt = time.monotonic() - t0
            event_id = str(response.event_id)
            if with_receipts:
                ok(await s.client.room_typing(room_id, False))
            watch.expect(room_id, event_id, peer=room == "plain")
            plain_only = [peer, *([push] if with_push else [])]
            observers = [stored, heard, *([spooled] if with_spool else []), *(plain_only if room == "plain" else [])]
            await asyncio.gather(*(o.wait(event_id) for o in observers))
            if case is not None:
                samples.append(Sample(case, room, event_id, t0, rtt))

        # Warm-up: shares the Megolm sessions and wakes every path outside the measurement.
        for s in senders:
            for room in rooms:
                for i in range(3):
                    await one(s, room, f"warm {i}", None)
        for n in senders_cases:
            for room in rooms:
                case = f"{n} sender{'s' if n > 1 else ''}, {room}"

                async def sender(s: Official, case: str = case, room: str = room) -> None:
                    for i in range(messages):
                        await one(s, room, f"bench {s.user_id} {i}", case)

                await asyncio.gather(*(sender(s) for s in senders[:n]))
        stop.set()
        await asyncio.gather(*tasks, *(receipts or ()))
    finally:
        if bot_proc is not None and bot_proc.poll() is None:
            bot_proc.send_signal(signal.SIGTERM)
            bot_proc.wait(30)
        for p in people:
            await p.client.close()
        await asyncio.to_thread(server.stop)
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
    assert watch is not None
    report(samples, heard, stored, peer, push, spooled, watch.persisted, trace, fsync_baseline(work), messages)


def row(label: str, values: list[float]) -> str:
    return f"    {label:<34} p50 {pct(values, 0.5):6.1f}  p95 {pct(values, 0.95):6.1f}  p99 {pct(values, 0.99):6.1f} ms"


def report(
    samples: list[Sample],
    heard: Observed,
    stored: Observed,
    peer: Observed,
    push: Observed,
    spooled: Observed,
    persisted: dict[str, float],
    trace: Path,
    fsync_ms: list[float],
    messages: int,
) -> None:
    print(f"One message at a time per sender ({messages} per sender and case); from just before room_send:")
    verdicts = []
    cases: dict[str, list[Sample]] = {}
    for s in samples:
        cases.setdefault(s.case, []).append(s)
    for case, group in cases.items():
        print(f"  {case} ({len(group)} messages)")
        rtt = [s.rtt * 1000 for s in group]
        durable = [(stored.at[s.event_id] - s.t0) * 1000 for s in group]
        print(row("send round trip (the tick)", rtt))
        print(row("listener (bare nio sync loop)", [(heard.at[s.event_id] - s.t0) * 1000 for s in group]))
        goal = f"p50 {pct(durable, 0.5):.1f} <= send {pct(rtt, 0.5):.1f}"
        met = pct(durable, 0.5) <= pct(rtt, 0.5)
        mod: list[float] | None = None
        if group[0].room == "plain":
            mod = [(peer.at[s.event_id] - s.t0) * 1000 for s in group]
            print(row("peer module in Synapse (durable)", mod))
            if push.at:
                print(row("push: app service (durable)", [(push.at[s.event_id] - s.t0) * 1000 for s in group]))
            goal += f", <= peer {pct(mod, 0.5):.1f}"
            met = met and pct(durable, 0.5) <= pct(mod, 0.5)
        if spooled.at:  # plain rooms in clear, encrypted ones as their ciphertext (the bot decrypts)
            spool = [(spooled.at[s.event_id] - s.t0) * 1000 for s in group]
            print(row("spool: our module (durable)", spool))
            lag = [(stored.at[s.event_id] - spooled.at[s.event_id]) * 1000 for s in group]
            print(row("  spool frame -> chatarchief log", lag))
            ok_spool = pct(spool, 0.5) <= pct(rtt, 0.5) and (mod is None or pct(spool, 0.5) <= pct(mod, 0.5))
            verdict = f"  {case}: spool p50 {pct(spool, 0.5):.1f} <= send {pct(rtt, 0.5):.1f}"
            if mod is not None:
                verdict += f", <= peer {pct(mod, 0.5):.1f}"
            verdicts.append(f"{verdict} -> {'met' if ok_spool else 'NOT met'}")
        print(row("chatarchief (durable)", durable))
        verdicts.append(f"  {case}: {goal} -> {'met' if met else 'NOT met'}")
    print(
        "Goal (chatarchief p50 <= send round trip p50, and <= the peer module's in plain rooms; the spool's own"
        " line: its frame durable):"
    )
    print("\n".join(verdicts))
    breakdown(samples, stored, persisted, trace)
    print(row("bare SQLite commit + fsync, this disk", fsync_ms).replace("    ", "  ", 1))


def breakdown(samples: list[Sample], stored: Observed, persisted: dict[str, float], trace: Path) -> None:
    """Where chatarchief's time goes, per message, from the bot's debug timing (see `timing`)."""
    batches: dict[str, dict[str, float]] = {}
    if trace.exists():
        for line in trace.read_bytes().splitlines():
            entry = orjson.loads(line)
            marks = {name: at for name, at in entry["marks"]}
            for event_id in entry["events"]:
                batches.setdefault(event_id, marks)
    print(
        "Where chatarchief's sync loop's time goes (p50 of each step, ms; 'persisted' is the peer module's callback;"
        " a negative 'durable -> observed': the spool had stored it before the sync batch):"
    )
    for case in dict.fromkeys(s.case for s in samples):
        group = [s for s in samples if s.case == case and s.event_id in batches]
        if not group:
            continue
        steps: dict[str, list[float]] = {}
        late = 0
        for s in group:
            marks = batches[s.event_id]
            points = [("sent", s.t0)]
            if s.event_id in persisted:
                points.append(("persisted", persisted[s.event_id]))
            if marks["sync"] > s.t0:
                late += 1  # the bot was between syncs when the message was sent
            points += [(name, marks[name]) for name in STAGES[1:] if name in marks]
            points.append(("observed", stored.at[s.event_id]))
            for (a, ta), (b, tb) in itertools.pairwise(points):
                steps.setdefault(f"{a} -> {b}", []).append((tb - ta) * 1000)
        parts = "  ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps.items())
        print(f"  {case}: {parts}  (sync sent after the message: {late}/{len(group)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=60, help="per sender and case")
    ap.add_argument("--senders", type=int, nargs="+", default=[1, 8], help="sender counts, one case each")
    ap.add_argument("--push", action="store_true", help="also measure an application service's push (see above)")
    ap.add_argument(
        "--receipts",
        action="store_true",
        help="traffic like real clients: senders send typing notices, the listener read receipts",
    )
    ap.add_argument(
        "--no-spool", dest="spool", action="store_false", help="without Chatarchief's module and its sealed spool"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (trace, logs) and print its path")
    args = ap.parse_args()
    logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device": nio claims them itself
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="chatarchief-bench-"))
        print(f"work dir (kept: the bot's trace.jsonl, logs): {work}")
        asyncio.run(bench(work, args.senders, args.messages, args.push, args.receipts, args.spool))
        return
    with tempfile.TemporaryDirectory(prefix="chatarchief-bench-") as tmp:
        asyncio.run(bench(Path(tmp), args.senders, args.messages, args.push, args.receipts, args.spool))


if __name__ == "__main__":
    main()
