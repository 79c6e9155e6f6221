"""Benchmark: `snapshot` (monthly package) throughput and peak memory, against a bare-decrypt baseline.

Run: `.venv/bin/python bench/snapshot.py [--events 100000 1000000] [--rooms 100]`

For each size a fresh log is built through the public API (LogStore.append_events,
~600-byte synthetic Matrix messages spread over `--rooms` conversations, all
appended in one past month), then each measurement runs in its own subprocess
so its peak RSS is its own:

- baseline: read the month's records from SQLite, AES-GCM decrypt, SHA-256 the
  ciphertext, write the plaintext to one file (the least any package must do);
- snapshot: the real `snapshot` (plan pass, decrypt, per-dossier JSONL, leaves,
  consistency proof, transcripts, MDTO, pakbon, BagIt, fsync, rename);
- verify-package: the real verifier with the public key only (re-derives every file).

Prints MB/s of log processed (stored header + commitment + ciphertext bytes of
the range), events/s, CPU time per event (the process and its workers: what
the cores spent, whatever else loads the machine), peak RSS, and the ratio to
the same run's baseline, for each number of processes in `--workers` (default
1 and 2: the curve by process count; pass 2 and rendering use that many; "workers
RSS" is the largest peak of a worker process, 0 inline). `--before DIR` also runs snapshot and
verify-package with the code of another checkout (e.g. `git worktree add /tmp/before <commit>`) on the same log,
alternating with this code, each in its own process: a before/after comparison within one run. `--phases`
also prints, for each snapshot of this code, where its wall time went: plan, record pass (pass 2), rendering,
publishing (the fsyncs and the rename) and the rest, each with the CPU seconds of the main process and of the
worker processes that ended in it, and the cores that kept busy on average ((main + workers) / wall; workers
started ahead are counted where they end).
Goal: >= 100 MB/s and peak RSS < 150 MB at both sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peak import peak_rss_mb  # noqa: E402  (bench/ is the script's own directory on sys.path)

from bridge.archive.mdto import Organisation  # noqa: E402
from bridge.archive.package import ArchiveOptions, snapshot  # noqa: E402
from bridge.archive.range import Month  # noqa: E402
from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log import schema as schema_module  # noqa: E402
from bridge.log import store as store_module  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore, initialise  # noqa: E402

MONTH = Month(2024, 1)
APPENDED_MS = 1_705_320_000_000  # 2024-01-15, Amsterdam
WORDS = ("kamerbrief", "overleg", "minister", "concept", "begroting", "wetsvoorstel", "morgen", "akkoord", "nota")
OPTIONS = ArchiveOptions(Organisation("Benchmark-ministerie", "bench"))


def make_event(i: int, rooms: int, rng: random.Random) -> Event:
    body = " ".join(rng.choice(WORDS) for _ in range(38))
    room = f"!room{i % rooms}:bench.example"
    return Event(
        source=MATRIX,
        conversation=ConversationId(room),
        event_id=EventId(f"$bench{i}"),
        kind=Kind.MESSAGE,
        sender=SenderId(f"@user{i % 7}:bench.example"),
        sent_at=APPENDED_MS + i,
        received_at=APPENDED_MS + i + 40,
        content={"msgtype": "m.text", "body": body},
        raw={"type": "m.room.message", "event_id": f"$bench{i}", "content": {"msgtype": "m.text", "body": body}},
    )


def build_log(workdir: Path, n: int, rooms: int) -> tuple[Path, Path]:
    data_dir, key_file = workdir / "data", workdir / "keys" / "bench.key"
    key_file.parent.mkdir(mode=0o700, parents=True)
    material = keyfile.generate(os.urandom(16))
    keyfile.write_new(key_file, material)
    schema_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]  # the log's KEY records too
    initialise(data_dir, material)
    store_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]  # every record in January 2024
    rng = random.Random(7)

    async def go() -> None:
        policy = CheckpointPolicy(every_records=10_000, every_seconds=10**9)
        async with await LogStore.open(data_dir, material, policy) as store:
            for start in range(0, n, 1000):
                await store.append_events([make_event(i, rooms, rng) for i in range(start, min(n, start + 1000))])
            await store.checkpoint()

    asyncio.run(go())
    return data_dir, key_file


def range_bytes(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "log.sqlite3")
    try:
        row = conn.execute("SELECT sum(length(header) + length(commitment) + length(body)) FROM records").fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()


# -- children (each in its own process: its own peak RSS) ------------------------------------------


def child_baseline(data_dir: Path, key_file: Path, out: Path, workers: int | None = None) -> None:
    from bridge.log.view import LogView

    material = keyfile.load(key_file)
    with LogView(data_dir, material) as view, out.open("wb") as fh:
        for rec in view.records(0, view.size()):
            fh.write(rec.payload + b"\n")


#: (label, module, attribute) of each phase `--phases` times in a snapshot child.
PHASES = (
    ("plan", "bridge.archive.package", "plan"),
    ("record pass", "bridge.archive.package", "_write_records"),
    ("render", "bridge.archive.package", "render_package"),
    ("publish", "bridge.archive.bag", "BagBuilder.publish"),
)
phase_times: list[tuple[str, float, float, float]] = []  # (label, wall, main CPU, CPU of workers ended in it)


def _timed(label: str, fn: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0, c0, w0 = _clocks()
        try:
            return fn(*args, **kwargs)
        finally:
            t1, c1, w1 = _clocks()
            phase_times.append((label, t1 - t0, c1 - c0, w1 - w0))

    return timed


def _clocks() -> tuple[float, float, float]:
    mine = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time(), mine.ru_utime + mine.ru_stime


def _time_phases() -> None:
    """Wrap each phase of `snapshot` (this process's modules) in a timer."""
    import importlib

    for label, module, attr in PHASES:
        owner: Any = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, _timed(label, getattr(owner, name)))


def child_snapshot(data_dir: Path, key_file: Path, out: Path, workers: int | None = None) -> None:
    _time_phases()
    snapshot(data_dir, keyfile.load(key_file), MONTH, out, OPTIONS, workers=workers)


def child_verify(data_dir: Path, key_file: Path, out: Path, workers: int | None = None) -> None:
    from bridge.archive.verify_package import verify_package

    verify_package(out, keyfile.load_public(keyfile.public_path(key_file)), workers=workers)


CHILDREN = {
    "baseline": child_baseline,
    "snapshot": child_snapshot,
    "verify": child_verify,
}


def run_child(
    name: str, data_dir: Path, key_file: Path, out: Path, workers: int = 1, code: Path | None = None
) -> tuple[float, float, float, float, float]:
    """(seconds, peak RSS MB, largest worker peak RSS MB, CPU seconds of it and its workers, CPU seconds of it
    alone) of one measurement in a fresh process (`code`: the checkout whose bench/snapshot.py and bridge/ run
    it; default this one). Its phases (a snapshot child of this code) go to `last_phases`."""
    script = str(code / "bench" / "snapshot.py") if code is not None else __file__
    cmd = [sys.executable, script, "--child", name, str(data_dir), str(key_file), str(out), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    last_phases[:] = result.get("phases", [])
    main = float(result.get("cpu_main", result["cpu"]))  # an older checkout's child gives only the sum
    seconds, rss, workers_rss, cpu = (float(result[k]) for k in ("seconds", "rss_mb", "workers_rss_mb", "cpu"))
    return seconds, rss, workers_rss, cpu, main


last_phases: list[list[Any]] = []


def print_phases(seconds: float, phases: list[list[Any]]) -> None:
    """The phases of one snapshot (`--phases`) and what is left of its wall time."""
    rest = seconds - sum(float(p[1]) for p in phases)
    for label, wall, main, workers in [*phases, ["rest", rest, None, None]]:
        if main is None:
            print(f"      {label:14} {wall:6.2f} s")
            continue
        busy = (main + workers) / wall if wall > 0 else 0.0
        print(
            f"      {label:14} {wall:6.2f} s  CPU main {main:6.2f} s, workers {workers:6.2f} s: {busy:4.2f} cores busy"
        )


def bench(n: int, rooms: int, workers: list[int], before: Path | None = None, phases: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="chatarchief-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data_dir, key_file = build_log(work, n, rooms)
        built = time.perf_counter() - t0
        size = range_bytes(data_dir)
        mb = size / 1e6
        print(f"\n{n:,} events in {rooms} conversations: log range {mb:.0f} MB (built in {built:.0f} s)")
        base_s, base_rss, _, base_cpu, _ = run_child("baseline", data_dir, key_file, work / "plain.jsonl")
        print(f"  {'baseline (decrypt only)':32} {base_s:7.1f} s  {mb / base_s:7.1f} MB/s  {n / base_s:9,.0f} events/s"
              f"  CPU {base_cpu / n * 1e6:6.1f} us/event  peak RSS {base_rss:6.1f} MB")  # fmt: skip
        for w in workers:
            for code, tag in ((before, " (before)"), (None, "")) if before is not None else ((None, ""),):
                snap = run_child("snapshot", data_dir, key_file, work / "package", w, code)
                last_phases_of_snap = list(last_phases)
                pkg_mb = sum(p.stat().st_size for p in (work / "package").rglob("*") if p.is_file()) / 1e6
                ver = run_child("verify", data_dir, key_file, work / "package", w, code)
                for label, (s, rss, wrss, cpu, main_cpu) in (
                    (f"snapshot, {w} process(es){tag}", snap),
                    (f"verify-package, {w} process(es){tag}", ver),
                ):
                    print(
                        f"  {label:41} {s:7.1f} s  {mb / s:7.1f} MB/s  {n / s:9,.0f} events/s"
                        f"  CPU {cpu / n * 1e6:6.1f} us/event (main {main_cpu / n * 1e6:5.1f})"
                        f"  peak RSS {rss:6.1f} MB  workers RSS {wrss:6.1f} MB"
                        f"  x{base_s / s:.2f} of baseline"
                    )
                    if phases and label.startswith("snapshot") and code is None and last_phases_of_snap:
                        print_phases(s, last_phases_of_snap)
                print(f"  package {pkg_mb:.0f} MB on disk")
                shutil.rmtree(work / "package", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--before", type=Path, help="another checkout to measure on the same log (before/after)")
    parser.add_argument("--phases", action="store_true", help="where each snapshot's wall time went, by phase")
    parser.add_argument("--child", nargs=5, metavar=("NAME", "DATA", "KEY", "OUT", "WORKERS"))
    args = parser.parse_args()
    if args.child:
        name, data, key, out, workers = args.child
        t0, c0 = time.perf_counter(), time.process_time()
        CHILDREN[name](Path(data), Path(key), Path(out), int(workers))
        seconds = time.perf_counter() - t0
        mine = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, all waited for by now
        main_cpu = time.process_time() - c0
        cpu = main_cpu + mine.ru_utime + mine.ru_stime
        rss_mb = peak_rss_mb()
        # the pool's processes, once they are gone; an upper bound (Linux keeps a spawned child's pre-exec peak)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = {
            "seconds": seconds, "rss_mb": rss_mb, "workers_rss_mb": children, "cpu": cpu, "cpu_main": main_cpu,
            "phases": phase_times,
        }  # fmt: skip
        print(json.dumps(result))
        return
    for n in args.events:
        bench(n, args.rooms, args.workers, args.before, args.phases)


if __name__ == "__main__":
    main()
