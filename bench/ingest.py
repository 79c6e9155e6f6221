"""Benchmark: `chatarchief import` against a raw SQLite + AES-GCM baseline, in the same run.

Run: `.venv/bin/python bench/ingest.py [--events 100000] [--repeat 2]`

Both pipelines read the same file of synthetic Matrix events (~600 bytes each)
and each runs in a fresh subprocess so its peak RSS is its own:

- baseline: read line, AES-256-GCM encrypt, SHA-256 the ciphertext, aiosqlite
  executemany in batches of 256 (WAL, synchronous=FULL). No parsing, no tree.
- chatarchief: the real import path (parse, normalise, canonical encoding, salted
  commitment, AEAD with bound header, hash chain, Merkle frontier, dedup index
  looked up on its own connection, group commit of 4096, signed checkpoints), with
  its pure stage in worker processes when the file is large enough (`--workers`:
  `auto` as `chatarchief import` chooses, or a number; 0 keeps it in process).
- in-process (with `--in-process`): the same import with no worker, for the
  before/after in one run.

Timed, as in bench/scale.py: each pipeline's own work, not the interpreter's start-up, the imports of
its modules or (chatarchief) making a new log's keys (`set_up`); until issue 15's import change the
imports were inside the clock (~0.4 s for chatarchief's modules: 4 us/event at 10^5). CPU is every thread
of the import process ("main") plus its worker processes ("workers", RUSAGE_CHILDREN once they are
reaped), set-up included.

Prints events/s of both, the ratio at each size (goal >= 0.7, issue 15), µs per
event at both sizes (linear: the larger within 10% of the smaller), peak RSS
at both sizes to show memory stays flat, and bytes on disk per event (every file
the pipeline left, after it closed) against the input's bytes per event (goal:
not more, issue 15). Best of `--repeat` runs, since this
machine is noisy. `--events 1000000` compares 10^5 with 10^6.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peak import peak_rss_mb  # noqa: E402  (bench/ is the script's own directory on sys.path)

WORDS = (
    "kamerbrief",
    "overleg",
    "minister",
    "concept",
    "begroting",
    "wetsvoorstel",
    "morgen",
    "akkoord",
    "vergadering",
    "stuk",
    "graag",
    "dank",
    "besluit",
    "nota",
    "reactie",
    "planning",
)


def make_events(path: Path, n: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    size = 0
    with path.open("w") as fh:
        for i in range(n):
            body = " ".join(rng.choice(WORDS) for _ in range(38))
            event = {
                "type": "m.room.message",
                "room_id": f"!room{i % 20}:ministerie.example",
                "event_id": f"${i:012d}abcdefghijklmnopqrstuvwx",
                "sender": f"@official{i % 7}:ministerie.example",
                "origin_server_ts": 1_764_000_000_000 + i * 1000,
                "content": {"msgtype": "m.text", "body": body},
                "unsigned": {"age": rng.randint(1, 9999)},
            }
            line = json.dumps(event, ensure_ascii=False)
            size += len(line) + 1
            fh.write(line + "\n")
    return size


async def baseline(path: Path, work: Path) -> int:
    import hashlib

    import aiosqlite
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(256))
    async with aiosqlite.connect(work / "baseline.sqlite3", isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE r (seq INTEGER PRIMARY KEY, nonce BLOB, body BLOB, hash BLOB)")
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        n = 0
        with path.open("rb") as fh:
            for line in fh:
                nonce = os.urandom(12)
                body = aead.encrypt(nonce, line, None)
                rows.append((n, nonce, body, hashlib.sha256(body).digest()))
                n += 1
                if len(rows) == 256:
                    await _insert(db, rows)
                    rows = []
        if rows:
            await _insert(db, rows)
    return n


async def _insert(db: object, rows: list[tuple[int, bytes, bytes, bytes]]) -> None:
    await db.execute("BEGIN")  # type: ignore[attr-defined]
    await db.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)  # type: ignore[attr-defined]
    await db.execute("COMMIT")  # type: ignore[attr-defined]


def set_up(which: str, work: Path) -> None:
    """What is not timed, as in bench/scale.py: the modules each pipeline imports and, for chatarchief, a new
    log (key material and `initialise`). The baseline's work itself is unchanged: this only imports its
    modules before the clock starts."""
    if which == "baseline":
        import hashlib  # noqa: F401

        import aiosqlite  # noqa: F401
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401

        return
    import bridge.importer  # noqa: F401
    from bridge.log import keys as keyfile
    from bridge.log.store import initialise

    material = keyfile.generate(os.urandom(16))
    _KEYS[work] = material
    initialise(work / "data", material)


async def chatarchief(path: Path, work: Path, workers: int | None = None) -> int:
    """The timed part: open the writer on the log `set_up` made, import the file, close."""
    from bridge.importer import import_file
    from bridge.log.store import LogStore

    async with await LogStore.open(work / "data", _KEYS[work]) as store:  # type: ignore[arg-type]
        counts = await import_file(store, path, workers=workers)
    return counts.appended


_KEYS: dict[Path, object] = {}  # each work folder's key material, from `set_up` (for `chatarchief` and `reopen`)


async def reopen(work: Path) -> float:
    """Seconds to open the writer on the imported log again (what a bot or command pays at start: the tail
    authenticated, the dedup filter loaded from the index), then close it."""
    from bridge.log.store import LogStore

    start = time.perf_counter()
    store = await LogStore.open(work / "data", _KEYS[work])  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    await store.close()
    return elapsed


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (the database, its WAL if one is left, key records, ...)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def written_bytes() -> int:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes: WAL, database, checkpoints
    of the WAL into the database), or 0 where the kernel does not report it."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(which: str, path: Path, workers: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        set_up(which, Path(tmp))
        start = time.perf_counter()
        if which == "baseline":
            n = asyncio.run(baseline(path, Path(tmp)))
        else:
            count = 0 if which == "in-process" else None if workers == "auto" else int(workers)
            n = asyncio.run(chatarchief(path, Path(tmp), count))
        elapsed = time.perf_counter() - start
        disk = disk_bytes(Path(tmp))
        written = written_bytes()  # before the temporary directory goes (its unwritten pages are cancelled)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: the CPU it cost
        cpu = usage.ru_utime + usage.ru_stime
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the import workers, reaped by now
        worker_cpu = kids.ru_utime + kids.ru_stime
        reopened = asyncio.run(reopen(Path(tmp))) if which != "baseline" else 0.0
    print(
        json.dumps(
            {
                "events": n,
                "seconds": elapsed,
                "cpu": cpu,
                "worker_cpu": worker_cpu,
                "rss_mb": peak_rss_mb(),
                "disk": disk,
                "written": written,
                "reopen": reopened,
            }
        )
    )


def run_child(which: str, path: Path, workers: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", which, "--file", str(path), "--workers", workers],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", default="auto", help="import workers: auto (as the CLI) or a number")
    ap.add_argument("--in-process", action="store_true", help="also run the import with no worker (before/after)")
    ap.add_argument("--child")
    ap.add_argument("--file")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.file), args.workers)
        return
    pipelines = ("baseline", "chatarchief", "in-process") if args.in_process else ("baseline", "chatarchief")
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        results: dict[tuple[str, int], dict[str, float]] = {}
        inputs: dict[int, int] = {}
        for n in sorted({args.events // 10, args.events}):
            path = Path(tmp) / f"events-{n}.jsonl"
            size = make_events(path, n)
            inputs[n] = size
            print(f"input: {n} events, {size / n:.0f} bytes/event average")
            for which in pipelines:
                best: dict[str, float] | None = None
                for _ in range(args.repeat):
                    r = run_child(which, path, args.workers)
                    if best is None or r["seconds"] < best["seconds"]:
                        best = r
                assert best is not None and best["events"] == n, best
                results[(which, n)] = best
                rate = n / best["seconds"]
                print(
                    f"  {which:12s} {rate:10,.0f} events/s  {best['seconds']:6.2f} s  peak RSS {best['rss_mb']:.0f} MB"
                    f"  CPU {(best['cpu'] + best.get('worker_cpu', 0)) / n * 1e6:5.1f} us/event"
                    f" (main {best['cpu'] / n * 1e6:5.1f} + workers {best.get('worker_cpu', 0) / n * 1e6:5.1f})"
                    f"  on disk {best['disk'] / n:6.0f} bytes/event"
                    f"  written {best.get('written', 0) / n:7.0f} bytes/event"
                )
        sizes = sorted({args.events // 10, args.events})
        for n in sizes:
            ours, base = results[("chatarchief", n)], results[("baseline", n)]
            ratio = base["seconds"] / ours["seconds"]
            print(
                f"at {n}: ratio chatarchief/baseline {ratio:.2f} (goal >= 0.7);"
                f" chatarchief {ours['seconds'] / n * 1e6:.1f} us/event,"
                f" baseline {base['seconds'] / n * 1e6:.1f} us/event;"
                f" on disk {ours['disk'] / n:.0f} bytes/event against {inputs[n] / n:.0f} of input"
                f" (x{ours['disk'] / inputs[n]:.2f}, goal <= 1)"
            )
            if ("in-process", n) in results:
                before = results[("in-process", n)]
                print(
                    f"at {n}: ratio in-process/baseline {base['seconds'] / before['seconds']:.2f}"
                    f" (the import with no worker, same run); workers x{before['seconds'] / ours['seconds']:.2f}"
                )
        small, large = sizes[0], sizes[-1]
        growth = (results[("chatarchief", large)]["seconds"] / large) / (
            results[("chatarchief", small)]["seconds"] / small
        )
        print(f"chatarchief us/event at {large} / at {small}: {growth:.2f} (linear: <= 1.10)")
        # On a shared machine the wall time swings with the load: the CPU time per event (every thread of the
        # import process) and the wall growth divided by the baseline's own growth in the same run say more.
        ours_cpu = [
            (results[("chatarchief", n)]["cpu"] + results[("chatarchief", n)].get("worker_cpu", 0)) / n
            for n in (small, large)
        ]
        base_wall = [results[("baseline", n)]["seconds"] / n for n in (small, large)]
        print(
            f"chatarchief CPU us/event at {large} / at {small}: {ours_cpu[1] / ours_cpu[0]:.2f};"
            f" wall growth over the baseline's own: {growth / (base_wall[1] / base_wall[0]):.2f} (linear: <= 1.10)"
        )
        written = [results[("chatarchief", n)].get("written", 0) / n for n in (small, large)]
        print(f"chatarchief bytes written per event: {written[0]:.0f} at {small}, {written[1]:.0f} at {large}")
        reopen = [results[("chatarchief", n)].get("reopen", 0) for n in (small, large)]
        print(
            f"chatarchief writer open on the imported log: {reopen[0]:.2f} s at {small}, {reopen[1]:.2f} s at {large}"
        )
        print(
            f"chatarchief peak RSS: {results[('chatarchief', small)]['rss_mb']:.0f} MB at {small},"
            f" {results[('chatarchief', large)]['rss_mb']:.0f} MB at {large}"
        )


if __name__ == "__main__":
    main()
