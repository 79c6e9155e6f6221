"""A package onto WORM object storage, proven there before the local copy goes (I/O).

Theory of operation
-------------------
`WormDestination.publish(package)` for a package directory written locally
(under the data dir, `outbox/`, 0700):

1. serialise it (`serial.py`: one deterministic tar) into a private temp folder
   under `<data_dir>/tmp/` (removed afterwards, or at the next start after a crash);
2. `check_lock`: a bucket without object lock enabled is refused (ConfigError);
3. `put` with If-None-Match: * and the lock (mode, retain-until = now +
   retention_days) on the same request (a multipart upload above
   `multipart_bytes`); the lock is then read back (`ensure_lock`: set by
   PutObjectRetention if the store did not apply it, refused if it still is not). If an object is already at the key (a
   re-run, or a crash after the upload), its current version is downloaded
   and compared: the same bytes are success (idempotent, the existing lock
   stands); different bytes are refused (UsageError), as `snapshot` refuses a
   different package at its folder, and nothing is written;
4. verify: that version is downloaded again (by version id: a later version put
   over the key changes nothing) into the temp folder, its SHA-256 and size
   compared to the local tar's (so it is the local package byte for byte), then
   unpacked and checked by `verify_package` as the archivist would. A failure is
   `UploadIntegrityError` (exit 1) and the local package stays;
5. a receipt `<data_dir>/uploads/<name>.json` (bucket, key, version id, sha256,
   retain-until) is written atomically, and only then is the local package
   removed (unless `keep_local`).

Transient failures (network, 5xx) are retried `attempts` times with doubling
backoff; after that the error propagates (the scheduler logs an ALERT and
retries later). The local package is never removed before step 5.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.archive.package import private_workdir
from bridge.archive.verify_package import PackageReport, verify_package
from bridge.durable import fsync_dir, write_atomic
from bridge.errors import LogIntegrityError, UsageError
from bridge.worm import OUTBOX, RECEIPTS
from bridge.worm.bucket import (
    MULTIPART_BYTES,
    PART_BYTES,
    Bucket,
    Connection,
    LockMode,
    TransientStorageError,
    UploadIntegrityError,
    Version,
)
from bridge.worm.serial import Serialised, serialise, unpack

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class WormOptions:
    conn: Connection
    prefix: str
    retention_days: int
    mode: LockMode = "COMPLIANCE"
    keep_local: bool = False
    attempts: int = 5
    backoff_seconds: float = 2.0
    multipart_bytes: int = MULTIPART_BYTES
    part_bytes: int = PART_BYTES


@dataclass(frozen=True)
class Receipt:
    url: str
    bucket: str
    key: str
    version_id: str
    sha256: str
    size: int
    lock_mode: str
    retain_until: str
    uploaded: bool  # False: the same bytes were there already

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode() + b"\n"


def object_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}.tar" if prefix else f"{name}.tar"


class WormDestination:
    """See the module docstring."""

    def __init__(self, options: WormOptions, data_dir: Path, public_key: tuple[str, Ed25519PublicKey]) -> None:
        self.options = options
        self._data_dir = data_dir
        self._public_key = public_key

    @property
    def url(self) -> str:
        return f"s3://{self.options.conn.bucket}/{self.options.prefix}".rstrip("/")

    def staging(self, name: str) -> Path:
        """Where the package `name` is written before its upload (created 0700)."""
        outbox = self._data_dir / OUTBOX
        outbox.mkdir(mode=0o700, exist_ok=True)
        os.chmod(outbox, 0o700)  # plaintext packages wait here
        return outbox / name

    def receipt_path(self, name: str) -> Path:
        return self._data_dir / RECEIPTS / f"{name}.json"

    def done(self, name: str) -> bool:
        """Whether `name` was uploaded and verified (its receipt exists)."""
        return self.receipt_path(name).is_file()

    def confirm_sync(self, name: str) -> bool:
        """Whether the bucket holds the version `name`'s receipt names, locked (the bucket is the truth, a
        receipt only its note: a forged or stale one must not hide a month that is not there). False also for
        a receipt that does not parse; TransientStorageError when the bucket cannot be asked now."""
        try:
            receipt = Receipt(**json.loads(self.receipt_path(name).read_bytes()))
        except (OSError, ValueError, TypeError):
            return False

        async def ask() -> bool:
            async with Bucket(self.options.conn) as bucket:
                if receipt.bucket != bucket.conn.bucket:
                    return False
                got = await bucket.head(receipt.key, receipt.version_id)
            return got is not None and got.lock_mode is not None and got.size == receipt.size

        return asyncio.run(ask())

    def set_aside(self, name: str) -> Path:
        """Move a receipt that the bucket contradicts out of the way (kept as evidence); returns its new path."""
        path = self.receipt_path(name)
        aside = path.with_name(f"{path.name}.contradicted-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        path.rename(aside)
        return aside

    async def check(self) -> None:
        """Refuse (ConfigError) a bucket without object lock; StorageError when it cannot be reached."""
        async with Bucket(self.options.conn) as bucket:
            await bucket.check_lock()

    def publish_sync(self, package: Path) -> Receipt:
        """`publish` from a thread with no event loop (the scheduler's worker, the CLI)."""
        return asyncio.run(self.publish(package))

    async def publish(self, package: Path) -> Receipt:
        """Upload, verify, record, then remove the local package; see the module docstring."""
        name = package.name
        work = private_workdir(self._data_dir)
        temp = work / f".{name}-upload.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        temp.mkdir(mode=0o700)
        try:
            tar = await asyncio.to_thread(serialise, package, temp / f"{name}.tar")
            o = self.options
            async with Bucket(o.conn, multipart_bytes=o.multipart_bytes, part_bytes=o.part_bytes) as bucket:
                await self._retry(bucket.check_lock, "checking object lock")
                head, uploaded = await self._retry(lambda: self._upload(bucket, tar, temp), "uploading")
                version_id = head.version_id
                tar.path.unlink()  # disk: the package, the copy read back and its unpacked bag are enough
                await self._retry(lambda: self.verify_copy(bucket, tar, version_id, temp), "verifying")
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        receipt = Receipt(
            url=f"s3://{self.options.conn.bucket}/{object_key(self.options.prefix, name)}",
            bucket=self.options.conn.bucket,
            key=object_key(self.options.prefix, name),
            version_id=version_id,
            sha256=tar.sha256,
            size=tar.size,
            lock_mode=head.lock_mode or "",
            retain_until=head.retain_until.isoformat() if head.retain_until else "",
            uploaded=uploaded,
        )
        self._write_receipt(name, receipt)
        if not self.options.keep_local:
            shutil.rmtree(package)
            fsync_dir(package.parent)
        log.info(
            "package uploaded and verified",
            extra={
                "already_there": not uploaded,
                "url": receipt.url,
                "version_id": version_id,
                "sha256": tar.sha256,
                "kept_local": self.options.keep_local,
            },
        )
        return receipt

    async def _upload(self, bucket: Bucket, tar: Serialised, temp: Path) -> tuple[Version, bool]:
        key = object_key(self.options.prefix, tar.path.stem)
        now = datetime.now(UTC)
        until = now + timedelta(days=self.options.retention_days)
        mode = self.options.mode
        version = await bucket.put(key, tar.path, tar.sha256, mode, until)
        if version is not None:
            return await bucket.ensure_lock(key, version, mode, until, until - timedelta(minutes=10)), True
        there = await bucket.head(key)
        if there is None:  # gone between our PUT and HEAD (a delete marker): try again
            raise TransientStorageError(f"{key}: the PUT was refused as existing, yet no object is there; retried")
        copy = temp / f"existing-{os.urandom(4).hex()}.tar"
        sha, _ = await bucket.download(key, there.version_id, copy)
        copy.unlink()
        if sha != tar.sha256:
            raise UsageError(
                f"a different package is already at s3://{bucket.conn.bucket}/{key} (version {there.version_id},"
                f" sha256 {sha}, ours {tar.sha256}); nothing uploaded, the local package is kept at {tar.path.stem}"
                " in the outbox. Find out who wrote it: under object lock it cannot be replaced"
            )
        return await bucket.ensure_lock(key, there.version_id, mode, until, now), False

    async def verify_copy(
        self, bucket: Bucket, tar: Serialised, version_id: str, temp: Path, local: PackageReport | None = None
    ) -> PackageReport:
        """Download `version_id`, compare it to the local tar, unpack and verify it as the archivist would.

        The same SHA-256 as the local tar makes it the local package byte for byte, so the local package
        need not be verified too (it would double the cost: bench/upload.py); `local`, when given, is a
        report it must match as well."""
        name = tar.path.stem
        key = object_key(self.options.prefix, name)
        check = temp / f"check-{os.urandom(4).hex()}"
        check.mkdir(mode=0o700)
        try:
            copy = check / f"{name}.tar"
            sha, size = await bucket.download(key, version_id, copy)
            if sha != tar.sha256 or size != tar.size:
                raise UploadIntegrityError(
                    f"s3://{bucket.conn.bucket}/{key} version {version_id} is not the package uploaded",
                    f"sha256 {tar.sha256}, {tar.size} bytes",
                    f"sha256 {sha}, {size} bytes",
                )
            bag = await asyncio.to_thread(unpack, copy, check / "bag", name)
            try:
                report = await asyncio.to_thread(verify_package, bag, self._public_key)
            except LogIntegrityError as exc:
                raise UploadIntegrityError(
                    f"the copy of {name} read back from the bucket is not intact: {exc}"
                ) from None
            if local is not None and (report.month, report.start, report.end, report.root) != (
                local.month,
                local.start,
                local.end,
                local.root,
            ):
                raise UploadIntegrityError(
                    f"the copy of {name} read back from the bucket is another package",
                    f"{local.month} [{local.start}, {local.end}) root {local.root.hex()}",
                    f"{report.month} [{report.start}, {report.end}) root {report.root.hex()}",
                )
            return report
        finally:
            shutil.rmtree(check, ignore_errors=True)

    async def _retry(self, step: Callable[[], Awaitable[T]], doing: str) -> T:
        delay = self.options.backoff_seconds
        for attempt in range(1, self.options.attempts + 1):
            try:
                return await step()
            except TransientStorageError as exc:  # integrity, usage, config and refusals are not retried
                if attempt == self.options.attempts:
                    raise
                log.warning(
                    "object storage failed; retrying",
                    extra={"doing": doing, "attempt": attempt, "error": str(exc), "retry_in_seconds": delay},
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _write_receipt(self, name: str, receipt: Receipt) -> None:
        folder = self._data_dir / RECEIPTS
        folder.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.receipt_path(name), receipt.to_json())
