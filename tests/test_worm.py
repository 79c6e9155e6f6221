"""Packages onto WORM object storage (bridge.worm), against moto's S3 server as a STAND-IN (tests/support/s3.py).

The stand-in is not MinIO, Ceph or AWS: the tests pin what it enforces and what
it does not (docs/operations.md lists the gap), and our own guarantees rest on
what we read back, not on the server's refusals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bridge.archive.derive import package_name
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import verify_package
from bridge.errors import ConfigError, LogIntegrityError, StorageError, UsageError
from bridge.worm import bucket as bucket_module
from bridge.worm.bucket import Bucket, Connection
from bridge.worm.publish import Receipt, UploadIntegrityError, WormDestination, WormOptions, object_key
from bridge.worm.serial import serialise, unpack
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, archive_log_two_months, seal_for
from tests.support.s3 import StandIn, start_stand_in, tamper_stored

JANUARY = Month(2024, 1)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    yield from start_stand_in()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> LogDir:
    return archive_log_two_months(tmp_path_factory.mktemp("log"))


@pytest.fixture(autouse=True)
def fresh_outbox(log_dir: LogDir) -> Iterator[None]:
    """Each test starts without receipts or staged packages (the log itself is shared: it is only read)."""
    yield
    for folder in ("uploads", "outbox"):
        shutil.rmtree(log_dir.data_dir / folder, ignore_errors=True)


def destination(log: LogDir, stand_in: StandIn, bucket: str, **kw: object) -> WormDestination:
    opts = WormOptions(stand_in.connection(bucket), "chatarchief/ministerie", 30, backoff_seconds=0.01)
    return WormDestination(dataclasses.replace(opts, **kw), log.data_dir, (log.keys.key_name, log.keys.public_key))  # type: ignore[arg-type]


def stage(log: LogDir, dest: WormDestination, month: Month = JANUARY) -> Path:
    """The month's package written into the outbox, as the scheduler and `snapshot --out s3://` do."""
    out = dest.staging(package_name(log.keys.log_id, month))
    snapshot(log.data_dir, log.keys, month, out, OPTIONS, seal=seal_for(log))
    return out


def versions(stand_in: StandIn, bucket: str, key: str) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        async with stand_in.client() as c:
            got = await c.list_object_versions(Bucket=bucket, Prefix=key)
            return list(got.get("Versions", []))

    return asyncio.run(go())


def fetch(stand_in: StandIn, bucket: str, key: str, version_id: str) -> bytes:
    async def go() -> bytes:
        async with stand_in.client() as c:
            got = await c.get_object(Bucket=bucket, Key=key, VersionId=version_id)
            async with got["Body"] as body:
                return bytes(await body.read())

    return asyncio.run(go())


def client_error(stand_in: StandIn, call: str, **kw: object) -> str:
    """The S3 error code the stand-in answers `call` with ("" if it accepted it)."""

    async def go() -> str:
        async with stand_in.client() as c:
            try:
                await getattr(c, call)(**kw)
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            return ""

    return asyncio.run(go())


def test_publish_uploads_under_compliance_lock_verifies_and_then_removes_the_local_copy(
    log_dir: LogDir, stand_in: StandIn
) -> None:
    """The package becomes one locked object (COMPLIANCE, retain-until = now + retention_days), the receipt
    names its version, and only then is the local package gone; the object is a package an archivist verifies."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    package = stage(log_dir, dest)
    before = datetime.now(UTC)
    receipt = dest.publish_sync(package)
    assert receipt.uploaded and receipt.lock_mode == "COMPLIANCE"
    until = datetime.fromisoformat(receipt.retain_until)
    assert before + timedelta(days=30) - timedelta(minutes=5) <= until <= datetime.now(UTC) + timedelta(days=30)
    assert not package.exists()
    assert dest.done(package.name)
    stored = Receipt(**json.loads(dest.receipt_path(package.name).read_text()))
    assert stored == receipt
    assert [v["VersionId"] for v in versions(stand_in, bucket, receipt.key)] == [receipt.version_id]
    # the archivist: download, unpack, verify-package with the public key only
    tar = log_dir.data_dir.parent / "archivist.tar"
    tar.write_bytes(fetch(stand_in, bucket, receipt.key, receipt.version_id))
    bag = unpack(tar, log_dir.data_dir.parent / "archivist", package.name)
    report = verify_package(bag, (log_dir.keys.key_name, log_dir.keys.public_key))
    assert report.month == "2024-01"


def test_keep_local_keeps_the_package_after_a_verified_upload(log_dir: LogDir, stand_in: StandIn) -> None:
    """keep_local = true: uploaded and verified, the local copy stays."""
    dest = destination(log_dir, stand_in, stand_in.make_bucket(), keep_local=True)
    package = stage(log_dir, dest)
    dest.publish_sync(package)
    assert (package / "bag-info.txt").is_file()


def test_a_bucket_without_object_lock_is_refused_and_nothing_is_uploaded(log_dir: LogDir, stand_in: StandIn) -> None:
    """GetObjectLockConfiguration finds no lock: ConfigError (exit 2), the local package stays, the bucket empty."""
    bucket = stand_in.make_bucket(object_lock=False)
    dest = destination(log_dir, stand_in, bucket, keep_local=False)
    package = stage(log_dir, dest)
    with pytest.raises(ConfigError, match="has no object lock"):
        dest.publish_sync(package)
    assert (package / "bag-info.txt").is_file()
    assert not dest.done(package.name)
    assert versions(stand_in, bucket, "") == []
    with pytest.raises(ConfigError, match="does not exist"):
        destination(log_dir, stand_in, "no-such-bucket-here").publish_sync(package)


def test_re_upload_of_the_same_month_is_idempotent(log_dir: LogDir, stand_in: StandIn) -> None:
    """The same bytes again: success, the existing locked version stands, no second version is made."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    first = dest.publish_sync(stage(log_dir, dest))
    again = dest.publish_sync(stage(log_dir, dest))  # rebuilt from the log: deterministic, the same bytes
    assert not again.uploaded
    assert again.version_id == first.version_id and again.sha256 == first.sha256
    assert len(versions(stand_in, bucket, first.key)) == 1


def test_a_different_package_at_the_key_is_refused_and_the_local_one_kept(log_dir: LogDir, stand_in: StandIn) -> None:
    """Another object already at the month's key: refused (UsageError), never a second version over it."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    package = stage(log_dir, dest)
    key = object_key(dest.options.prefix, package.name)
    assert client_error(stand_in, "put_object", Bucket=bucket, Key=key, Body=b"someone else's bytes") == ""
    with pytest.raises(UsageError, match="a different package is already at"):
        dest.publish_sync(package)
    assert (package / "bag-info.txt").is_file()
    assert not dest.done(package.name)
    assert len(versions(stand_in, bucket, key)) == 1


def test_attack_deleting_an_uploaded_package_before_retention_ends_is_refused(
    log_dir: LogDir, stand_in: StandIn
) -> None:
    """An insider with the bucket's credentials deletes the locked version, with and without the governance
    bypass: the stand-in refuses (AccessDenied) and the package is still there byte for byte. A plain DELETE
    only adds a delete marker; the locked version stays readable by its id."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    r = dest.publish_sync(stage(log_dir, dest))
    original = fetch(stand_in, bucket, r.key, r.version_id)
    kw = {"Bucket": bucket, "Key": r.key, "VersionId": r.version_id}
    assert client_error(stand_in, "delete_object", **kw) == "AccessDenied"
    assert client_error(stand_in, "delete_object", BypassGovernanceRetention=True, **kw) == "AccessDenied"
    assert client_error(stand_in, "delete_object", Bucket=bucket, Key=r.key) == ""  # a delete marker
    assert fetch(stand_in, bucket, r.key, r.version_id) == original
    assert client_error(stand_in, "delete_bucket", Bucket=bucket) == "BucketNotEmpty"


def test_attack_overwriting_an_uploaded_package_leaves_the_locked_version(log_dir: LogDir, stand_in: StandIn) -> None:
    """An insider PUTs other bytes over the key: S3 makes a new version (it cannot replace a locked one); the
    receipt's version is unchanged and still verifies; our own uploader never writes over a key (If-None-Match)."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    r = dest.publish_sync(stage(log_dir, dest))
    original = fetch(stand_in, bucket, r.key, r.version_id)
    assert client_error(stand_in, "put_object", Bucket=bucket, Key=r.key, Body=b"forged") == ""
    assert len(versions(stand_in, bucket, r.key)) == 2
    assert fetch(stand_in, bucket, r.key, r.version_id) == original
    assert client_error(stand_in, "put_object", Bucket=bucket, Key=r.key, Body=b"x", IfNoneMatch="*") in (
        "PreconditionFailed",
        "412",
    )


@pytest.mark.parametrize(
    ("and_checksum", "caught_by"),
    [(False, "does not match the checksum stored with it"), (True, "is not the package uploaded")],
)
def test_attack_tampered_stored_bytes_are_caught_by_the_post_upload_verification(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch, and_checksum: bool, caught_by: str
) -> None:
    """The storage operator flips one stored byte right after the upload (below the API, where no lock
    applies): the read-back fails the stored checksum, or (the operator rewrote that too) differs from the
    local package; UploadIntegrityError (exit 1, not retried), no receipt, the local package is kept."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    package = stage(log_dir, dest)
    real_put = Bucket.put

    async def put_then_tamper(self: Bucket, key: str, *args: object, **kw: object) -> str | None:
        version = await real_put(self, key, *args, **kw)  # type: ignore[arg-type]
        assert version is not None
        tamper_stored(bucket, key, version, flip_at=5000, and_checksum=and_checksum)
        return version

    monkeypatch.setattr(Bucket, "put", put_then_tamper)
    with pytest.raises(UploadIntegrityError, match=caught_by) as caught:
        dest.publish_sync(package)
    assert caught.value.check.value == "upload"
    assert (package / "bag-info.txt").is_file()
    assert not dest.done(package.name)


def test_attack_a_tampered_copy_that_hashes_right_is_still_verified(
    log_dir: LogDir, stand_in: StandIn, tmp_path: Path
) -> None:
    """verify_copy does not stop at the hash: a local tar and bucket copy that agree but hold an altered
    package (a file of the bag changed, manifests untouched) fail verify-package, named."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket, keep_local=True)
    package = stage(log_dir, dest)
    local = verify_package(package, (log_dir.keys.key_name, log_dir.keys.public_key))
    altered = tmp_path / package.name
    shutil.copytree(package, altered)
    target = next(p for p in sorted((altered / "data").rglob("events.jsonl")))
    target.write_bytes(target.read_bytes().replace(b'"', b"'", 1))
    tar = serialise(altered, tmp_path / f"{package.name}.tar")

    async def go() -> None:
        async with Bucket(dest.options.conn) as b:
            until = datetime.now(UTC) + timedelta(days=1)
            version = await b.put(
                object_key(dest.options.prefix, package.name), tar.path, tar.sha256, "COMPLIANCE", until
            )
            assert version is not None
            work = tmp_path / "work"
            work.mkdir()
            await dest.verify_copy(b, tar, version, work, local)

    with pytest.raises(UploadIntegrityError, match="not intact"):
        asyncio.run(go())


def test_transient_failures_are_retried_with_backoff(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two failed PUTs (StorageError) then success: published; the attempts are counted."""
    dest = destination(log_dir, stand_in, stand_in.make_bucket(), attempts=3)
    package = stage(log_dir, dest)
    real_put = Bucket.put
    calls: list[int] = []

    async def flaky(self: Bucket, *args: object, **kw: object) -> str | None:
        calls.append(1)
        if len(calls) < 3:
            raise bucket_module.TransientStorageError("s3://x: uploading failed (InternalError); retried later")
        return await real_put(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Bucket, "put", flaky)
    assert dest.publish_sync(package).uploaded
    assert len(calls) == 3


def test_an_unreachable_endpoint_fails_after_the_attempts_and_keeps_the_package(log_dir: LogDir) -> None:
    """Nothing listens at the endpoint: StorageError after `attempts`, the package stays, no receipt."""
    conn = Connection("worm-gone", "http://127.0.0.1:9", "us-east-1", bucket_module.Credentials("k", "s"))
    opts = WormOptions(conn, "", 30, attempts=2, backoff_seconds=0.01)
    dest = WormDestination(opts, log_dir.data_dir, (log_dir.keys.key_name, log_dir.keys.public_key))
    package = stage(log_dir, dest)
    with pytest.raises(StorageError, match="retried later"):
        dest.publish_sync(package)
    assert (package / "bag-info.txt").is_file()
    assert not dest.done(package.name)


def test_stand_in_gaps_pinned(log_dir: LogDir, stand_in: StandIn) -> None:
    """What the STAND-IN does NOT enforce (AWS, MinIO and Ceph refuse these; docs/operations.md): shortening a
    compliance retention, switching it to governance, suspending versioning on an object-lock bucket. If a moto
    upgrade starts refusing them, this test fails: update the list in tests/support/s3.py and the docs."""
    bucket = stand_in.make_bucket()
    dest = destination(log_dir, stand_in, bucket)
    r = dest.publish_sync(stage(log_dir, dest))
    now = datetime.now(UTC)
    kw = {"Bucket": bucket, "Key": r.key, "VersionId": r.version_id}
    assert (
        client_error(stand_in, "put_object_retention", Retention={"Mode": "COMPLIANCE", "RetainUntilDate": now}, **kw)
        == ""
    )
    assert (
        client_error(stand_in, "put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
        == ""
    )


def test_unpack_refuses_members_outside_the_bag(tmp_path: Path) -> None:
    """A hostile tar from the bucket (a `..` path, a symlink, another top folder) is refused before extraction."""
    for name, kind in (
        ("bag/../escape.txt", tarfile.REGTYPE),
        ("bag/link", tarfile.SYMTYPE),
        ("other/x", tarfile.REGTYPE),
    ):
        tar = tmp_path / f"{abs(hash(name))}.tar"
        with tarfile.open(tar, "w") as t:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            t.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        into = tmp_path / f"into-{abs(hash(name))}"
        into.mkdir()
        with pytest.raises(LogIntegrityError, match="is not a file of the bag"):
            unpack(tar, into, "bag")
        assert not (tmp_path / "escape.txt").exists()


def test_multipart_upload_is_locked_read_back_and_create_only(stand_in: StandIn, tmp_path: Path) -> None:
    """A large package goes up in parts (each with its SHA-256): the object reads back byte for byte, ends up
    locked in COMPLIANCE mode (the stand-in ignores the lock on CreateMultipartUpload, a gap pinned here:
    `ensure_lock` sets it with PutObjectRetention and reads it back), and a second upload to the key is refused."""
    bucket = stand_in.make_bucket()
    data = os.urandom(11 * 1024 * 1024 + 123)
    src = tmp_path / "big.tar"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    until = datetime.now(UTC) + timedelta(days=2)

    async def go() -> tuple[str | None, str | None, str | None, object]:
        async with Bucket(stand_in.connection(bucket), multipart_bytes=1, part_bytes=5 * 1024 * 1024) as b:
            version = await b.put("big.tar", src, sha, "COMPLIANCE", until)
            assert version is not None
            before = await b.head("big.tar", version)
            assert before is not None
            locked = await b.ensure_lock("big.tar", version, "COMPLIANCE", until, until - timedelta(minutes=1))
            got, size = await b.download("big.tar", version, tmp_path / "back.tar")
            assert (got, size) == (sha, len(data))
            again = await b.put("big.tar", src, sha, "COMPLIANCE", until)
            return version, before.lock_mode, again, locked

    version, before, again, locked = asyncio.run(go())
    assert before is None  # the stand-in's gap: no lock from CreateMultipartUpload
    assert locked.lock_mode == "COMPLIANCE" and locked.retain_until is not None  # type: ignore[attr-defined]
    assert again is None
    assert client_error(stand_in, "delete_object", Bucket=bucket, Key="big.tar", VersionId=version) == "AccessDenied"


def test_publish_through_the_multipart_path(log_dir: LogDir, stand_in: StandIn) -> None:
    """The whole publish with multipart forced: uploaded, locked, read back and verified, receipt written."""
    dest = destination(log_dir, stand_in, stand_in.make_bucket(), multipart_bytes=1)
    receipt = dest.publish_sync(stage(log_dir, dest))
    assert receipt.uploaded and receipt.lock_mode == "COMPLIANCE" and receipt.retain_until
