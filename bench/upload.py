"""Benchmark: a package onto WORM object storage (upload + read back + verify) vs a plain local copy.

Run: `.venv/bin/python bench/upload.py [--events 20000] [--media 40] [--media-kib 512] [--repeat 3]`

A log of `--events` messages (~250 B of text each) and `--media` attachments of `--media-kib` KiB, all
appended in January 2024, is written once, and its January package made once. Then, best of `--repeat`:

- baseline: `shutil.copytree` of the package + `os.sync()` (what a folder destination costs);
- chatarchief: `WormDestination.publish` to moto's S3 server (a STAND-IN, not MinIO or AWS; run as its own
  process, `moto_server`, on 127.0.0.1, so it does not share our interpreter): serialise to tar, verify the
  PUT under object lock, download the version back, compare, unpack, verify-package.
  Its parts are timed too (serialise, the two verifications, the S3 round trip).

Prints MiB/s of both and the ratio. The stand-in keeps objects in memory in Python: a real MinIO or
RGW on local disks is faster on the wire, so the ratio is a ceiling of what the upload path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiobotocore.session import get_session  # noqa: E402

from bridge.archive.derive import package_name  # noqa: E402
from bridge.archive.mdto import Organisation  # noqa: E402
from bridge.archive.package import ArchiveOptions, snapshot  # noqa: E402
from bridge.archive.range import Month  # noqa: E402
from bridge.archive.verify_package import verify_package  # noqa: E402
from bridge.blobs import BlobStore  # noqa: E402
from bridge.dev.synapse import free_port  # noqa: E402
from bridge.events import MATRIX, Attachment, ConversationId, Event, EventId, Kind, SenderId  # noqa: E402
from bridge.log import keys as keyfile  # noqa: E402
from bridge.log import schema as schema_module  # noqa: E402
from bridge.log import store as store_module  # noqa: E402
from bridge.log.store import CheckpointPolicy, LogStore, initialise  # noqa: E402
from bridge.worm.bucket import Bucket, Connection, Credentials  # noqa: E402
from bridge.worm.publish import WormDestination, WormOptions  # noqa: E402
from bridge.worm.serial import serialise  # noqa: E402

APPENDED_MS = int(datetime(2024, 1, 15, 12, tzinfo=UTC).timestamp() * 1000)
MONTH = Month(2024, 1)
OPTIONS = ArchiveOptions(Organisation("Ministerie van Benchmarks", "https://organisaties.overheid.nl/1/Bench"))
CREDS = Credentials("bench-key-id", "bench-secret")  # the stand-in accepts any


def build(workdir: Path, events: int, media: int, media_kib: int) -> tuple[Path, keyfile.KeyMaterial]:
    data_dir = workdir / "data"
    keys = keyfile.generate(os.urandom(16))
    schema_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]
    initialise(data_dir, keys)
    store_module.now_ms = lambda: APPENDED_MS  # type: ignore[assignment]

    async def go() -> None:
        async with await LogStore.open(data_dir, keys, CheckpointPolicy(10_000, 10**9)) as store:
            blobs = BlobStore(data_dir / "blobs", store.media_keys())
            batch: list[Event] = []
            for i in range(events):
                atts: tuple[Attachment, ...] = ()
                if i < media:
                    data = os.urandom(media_kib * 1024)
                    blob_id, sha = await blobs.put(data, "image/jpeg")
                    atts = (Attachment("stored", "image/jpeg", f"foto{i}.jpg", len(data), sha, blob_id),)
                batch.append(
                    Event(
                        source=MATRIX,
                        conversation=ConversationId(f"!room{i % 10}:bench.example"),
                        event_id=EventId(f"$b{i}"),
                        kind=Kind.ATTACHMENT if atts else Kind.MESSAGE,
                        sender=SenderId(f"@user{i % 7}:bench.example"),
                        sent_at=APPENDED_MS + i,
                        received_at=APPENDED_MS + i + 40,
                        content={"msgtype": "m.text", "body": f"bericht {i} " + "overleg " * 30},
                        attachments=atts,
                    )
                )
                if len(batch) == 500:
                    await store.append_events(batch)
                    batch = []
            if batch:
                await store.append_events(batch)
            await store.checkpoint()

    asyncio.run(go())
    return data_dir, keys


def start_stand_in() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_bucket(endpoint: str, name: str) -> None:
    async def go() -> None:
        async with get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDS.access_key_id,
            aws_secret_access_key=CREDS.secret_access_key,
        ) as c:
            await c.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)

    asyncio.run(go())


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--media", type=int, default=40)
    parser.add_argument("--media-kib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    proc, endpoint = start_stand_in()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
            root = Path(tmp)
            data_dir, keys = build(root, args.events, args.media, args.media_kib)
            public = (keys.key_name, keys.public_key)
            name = package_name(keys.log_id, MONTH)
            package = root / "made" / name
            snapshot(data_dir, keys, MONTH, package, OPTIONS, seal=lambda size: _seal(data_dir, keys, size))
            mib = size_of(package) / 2**20
            t = time.perf_counter()
            tar = serialise(package, root / "probe.tar")
            t_tar = time.perf_counter() - t
            t = time.perf_counter()
            verify_package(package, public)
            t_verify = time.perf_counter() - t
            os.unlink(tar.path)
            base, ours = float("inf"), float("inf")
            for n in range(args.repeat):
                t = time.perf_counter()
                shutil.copytree(package, root / f"copy{n}")
                os.sync()
                base = min(base, time.perf_counter() - t)
                shutil.rmtree(root / f"copy{n}")
                bucket = f"bench-{n}-{os.urandom(3).hex()}"
                make_bucket(endpoint, bucket)
                conn = Connection(bucket, endpoint, "us-east-1", CREDS)
                dest = WormDestination(WormOptions(conn, "bench", 1, keep_local=True), data_dir, public)
                t = time.perf_counter()
                receipt = dest.publish_sync(package)
                ours = min(ours, time.perf_counter() - t)
            assert receipt.uploaded
            wire = s3_round_trip(endpoint, package, root)
            print(f"stand-in: moto_server at {endpoint} (in-memory, not MinIO/AWS)")
            print(f"package: {args.events} events, {args.media} media x {args.media_kib} KiB, {mib:.1f} MiB")
            print(f"baseline copytree + sync : {base:6.2f} s  {mib / base:7.1f} MiB/s")
            print(f"upload + verify (total)  : {ours:6.2f} s  {mib / ours:7.1f} MiB/s")
            print(
                f"  parts alone: tar {t_tar:.2f} s, verify-package {t_verify:.2f} s (on the copy read back),"
                f" S3 PUT+GET {wire:.2f} s"
            )
            print(f"ratio (upload+verify / local copy throughput): {base / ours:.3f}")
    finally:
        proc.terminate()
        proc.wait(10)


def s3_round_trip(endpoint: str, package: Path, root: Path) -> float:
    """The S3 part alone: PUT the tar under lock and GET it back, no verification."""
    bucket = f"wire-{os.urandom(3).hex()}"
    make_bucket(endpoint, bucket)
    tar = serialise(package, root / "wire.tar")

    async def go() -> float:
        async with Bucket(Connection(bucket, endpoint, "us-east-1", CREDS)) as b:
            t = time.perf_counter()
            until = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
            version = await b.put("wire.tar", tar.path, tar.sha256, "COMPLIANCE", until)
            assert version is not None
            await b.download("wire.tar", version, root / "wire-back.tar")
            return time.perf_counter() - t

    return asyncio.run(go())


def _seal(data_dir: Path, keys: keyfile.KeyMaterial, size: int) -> str:
    async def go() -> str:
        async with await LogStore.open(data_dir, keys) as store:
            return await store.seal_prefix(size)

    return asyncio.run(go())


if __name__ == "__main__":
    main()
