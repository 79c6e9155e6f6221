"""Benchmark: the scale curve (issue 15, item 5): import, snapshot and verify at 10^4, 10^5 and 10^6 events.

Run: `.venv/bin/python bench/scale.py [--events 10000 100000 1000000] [--workers N]` (`make bench`; 10^6 takes
many minutes).

For each size, one file of synthetic Matrix events (`bench/ingest.py`'s, ~600 bytes a line) is imported with
the real `import` path (appended in January 2024, so the month has ended), then each measurement runs in its
own subprocess (its own peak RSS), beside its same-run baseline:

- import: `import_file` into a fresh log, against ingest.py's baseline (read line, AES-GCM, SHA-256,
  aiosqlite batches) over the same file;
- bytes on disk per event: the data dir after import, against the input's bytes per line;
- verify (keyless) and verify --key-file: `verify_log`, against a bare read + decrypt + hash loop over the same
  log (SQLite rows in order, the leaf's SHA-256s, AES-GCM open, SHA-256 of the plaintext: the least a check
  with the key must do);
- snapshot and verify-package: the month's package (`--workers` rendering processes, default the usable
  CPUs), against the same bare loop.

MB/s count the log's stored bytes (header + commitment + ciphertext of every record). Prints one table; the
README quotes it. Figures swing between runs on a shared machine: compare each row with its baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import make_events  # noqa: E402  (bench/ is the script's own directory on sys.path)
from peak import peak_rss_mb  # noqa: E402

APPENDED_MS = 1_705_320_000_000  # 2024-01-15: every record in January 2024, a month that has ended


# -- children (each in its own process) -------------------------------------------------------------------


Timed = Callable[[], object]


def child_import_baseline(work: Path, events: Path, workers: int) -> Timed:
    from ingest import baseline

    return lambda: asyncio.run(baseline(events, work))


def child_import(work: Path, events: Path, workers: int) -> Timed:
    from bridge.importer import import_file
    from bridge.log import keys as keyfile
    from bridge.log import schema as schema_module
    from bridge.log import store as store_module
    from bridge.log.store import LogStore, initialise

    key_file = work / "keys" / "bench.key"
    key_file.parent.mkdir(mode=0o700, parents=True)
    material = keyfile.generate(os.urandom(16))
    keyfile.write_new(key_file, material)
    schema_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]
    store_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]
    initialise(work / "data", material)

    async def go() -> int:
        async with await LogStore.open(work / "data", material) as store:
            counts = await import_file(store, events)
            await store.checkpoint()
        return counts.appended

    def run() -> None:
        if asyncio.run(go()) == 0:
            raise SystemExit("nothing imported")

    return run


def child_read(work: Path, events: Path, workers: int) -> Timed:
    """The bare loop: rows in order, leaf hashes, AES-GCM open of encrypted records, SHA-256 of the plaintext."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from bridge.log import format
    from bridge.log import keys as keyfile
    from bridge.log.schema import unwrap_keys

    material = keyfile.load(work / "keys" / "bench.key")

    def run() -> None:
        conn = sqlite3.connect(f"file:{work / 'data' / 'log.sqlite3'}?mode=ro", uri=True)
        rows = list(conn.execute("SELECT key_id, purpose, wrapped FROM keys ORDER BY key_id"))
        aead = {k: AESGCM(v) for k, v in unwrap_keys(rows, material)[1].items()}
        prefix = format.ad_prefix(material.log_id)
        nonce = slice(format.NONCE_OFFSET, format.NONCE_OFFSET + 12)
        sha = hashlib.sha256
        for header, commit, body in conn.execute("SELECT header, commitment, body FROM records ORDER BY seq"):
            sha(b"\x00" + header + commit + sha(body).digest()).digest()
            if header[1] not in format.CLEAR_TYPES:
                key = aead[int.from_bytes(header[18:22], "big")]
                sha(key.decrypt(header[nonce], body, prefix + header + commit)).digest()
        conn.close()

    return run


def child_verify(work: Path, events: Path, workers: int) -> Timed:
    from bridge.log.verify import verify_log

    return lambda: verify_log(work / "data")


def child_verify_key(work: Path, events: Path, workers: int) -> Timed:
    from bridge.log import keys as keyfile
    from bridge.log.verify import verify_log

    material = keyfile.load(work / "keys" / "bench.key")
    return lambda: verify_log(work / "data", material)


def child_snapshot(work: Path, events: Path, workers: int) -> Timed:
    from bridge.archive.mdto import Organisation
    from bridge.archive.package import ArchiveOptions, snapshot
    from bridge.archive.range import Month
    from bridge.log import keys as keyfile

    options = ArchiveOptions(Organisation("Benchmark-ministerie", "bench"))
    material = keyfile.load(work / "keys" / "bench.key")
    return lambda: snapshot(work / "data", material, Month(2024, 1), work / "package", options, workers=workers)


def child_verify_package(work: Path, events: Path, workers: int) -> Timed:
    from bridge.archive.verify_package import verify_package
    from bridge.log import keys as keyfile

    public = keyfile.load_public(keyfile.public_path(work / "keys" / "bench.key"))
    return lambda: verify_package(work / "package", public, workers=workers)


CHILDREN = {
    "import-baseline": child_import_baseline,
    "import": child_import,
    "read": child_read,
    "verify": child_verify,
    "verify-key": child_verify_key,
    "snapshot": child_snapshot,
    "verify-package": child_verify_package,
}


def run_child(name: str, work: Path, events: Path, workers: int) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one measurement in a fresh process."""
    cmd = [sys.executable, __file__, "--child", name, str(work), str(events), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), float(result["rss_mb"])


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def log_bytes(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'log.sqlite3'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT sum(length(header) + length(commitment) + length(body)) FROM records").fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()


def measure(n: int, workers: int, tmp: Path) -> dict[str, float]:
    events = tmp / f"events-{n}.jsonl"
    input_bytes = make_events(events, n)
    out: dict[str, float] = {"events": n, "input_b": input_bytes / n}
    for name in ("import-baseline", "import", "read", "verify", "verify-key", "snapshot", "verify-package"):
        work = tmp / f"base-{n}" if name == "import-baseline" else tmp / f"log-{n}"
        work.mkdir(exist_ok=True)
        out[name], out[name + "_rss"] = run_child(name, work, events, workers)
        if name == "import-baseline":
            shutil.rmtree(work)
        elif name == "import":
            out["disk_b"] = disk_bytes(work / "data") / n
            out["log_mb"] = log_bytes(work / "data") / 1e6
        print(f"  {n:>9,} {name:15} {out[name]:8.2f} s  peak RSS {out[name + '_rss']:6.1f} MB", flush=True)
    shutil.rmtree(tmp / f"log-{n}")
    events.unlink()
    return out


def _cell(r: dict[str, float], step: str, width: int) -> str:
    """Seconds, MB/s of log and x of the bare read + decrypt + hash loop, for one step."""
    seconds = r[step]
    return f"{seconds:>{width}.2f} {r['log_mb'] / seconds:>6.1f} {r['read'] / seconds:>5.2f}"


def table(rows: list[dict[str, float]], workers: int) -> str:
    """The scale table: seconds, MB/s of log and x of the same-run baseline for each step."""
    head = (
        f"{'events':>9} | {'in B/ev':>7} | {'disk B/ev':>9} | {'import s':>8} {'(base)':>7} {'x':>5} |"
        f" {'read+dec s':>10} {'MB/s':>6} | {'verify s':>8} {'MB/s':>6} {'x':>5} | {'verify key s':>12} {'MB/s':>6}"
        f" {'x':>5} | {'snapshot s':>10} {'MB/s':>6} {'x':>5} | {'verify-pkg s':>12} {'MB/s':>6} {'x':>5} |"
        f" {'peak RSS':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mb, base = r["log_mb"], r["read"]
        rss = max(v for k, v in r.items() if k.endswith("_rss") and not k.startswith("import-baseline"))

        lines.append(
            f"{int(r['events']):>9,} | {r['input_b']:>7.0f} | {r['disk_b']:>9.0f} | {r['import']:>8.2f}"
            f" {r['import-baseline']:>7.2f} {r['import-baseline'] / r['import']:>5.2f} |"
            f" {base:>10.2f} {mb / base:>6.1f} | {_cell(r, 'verify', 8)} | {_cell(r, 'verify-key', 12)} |"
            f" {_cell(r, 'snapshot', 10)} | {_cell(r, 'verify-package', 12)} | {rss:>5.0f} MB"
        )
    lines.append(
        f"x: the same-run baseline's time over this step's (import: ingest.py's baseline; the others: the bare"
        f" read + decrypt + hash loop). MB/s of log bytes. snapshot and verify-package with {workers} process(es)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: usable CPUs)")
    parser.add_argument("--child", nargs=4, metavar=("NAME", "WORK", "EVENTS", "WORKERS"))
    args = parser.parse_args()
    if args.child:
        name, work, events, workers = args.child
        timed = CHILDREN[name](Path(work), Path(events), int(workers))  # imports and set-up: not timed
        t0 = time.perf_counter()
        timed()
        print(json.dumps({"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}))
        return
    from bridge.archive.render import default_workers

    workers = args.workers or default_workers()
    rows = []
    with tempfile.TemporaryDirectory(prefix="chatarchief-scale-") as tmp:
        for n in args.events:
            rows.append(measure(n, workers, Path(tmp)))
    print()
    print(table(rows, workers))


if __name__ == "__main__":
    main()
