"""An S3 bucket with Object Lock, as the few calls packages need (I/O, aiobotocore).

Contract: `Bucket` is an async context manager around one aiobotocore client.
`check_lock` refuses (ConfigError) a bucket without object lock enabled, a
missing bucket or refused credentials. `put` writes a new object only if none
is there (If-None-Match: *), with its SHA-256 for the server to check on
receipt and the object lock mode and retain-until date on the same request (the
object is never unlocked, not for a moment); it returns the version id. `head`
and `download` read one version. Transient failures (connection, 5xx, throttling)
raise `TransientStorageError`: the caller retries; other refusals raise
`StorageError` (or `ConfigError` for a missing bucket or refused credentials).
Credentials are never logged or put in an error message.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError, NoCredentialsError

from bridge.errors import Check, ConfigError, LogIntegrityError, StorageError
from bridge.log.keys import check_permissions

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

CHUNK = 1024 * 1024
#: Above this a package goes up as a multipart upload (one PUT carries at most 5 GiB), in parts of PART_BYTES.
MULTIPART_BYTES = 256 * 1024**2
PART_BYTES = 64 * 1024**2
LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
#: Codes no retry mends: a configuration or permission problem.
_FATAL = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName"}
#: 4xx codes that a later attempt may not meet (5xx are all retried).
_TRANSIENT = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}


class UploadIntegrityError(LogIntegrityError):
    """What the bucket gives back is not the package uploaded (or not an intact package): exit 1, never retried."""

    def __init__(self, reason: str, expected: str | None = None, found: str | None = None) -> None:
        super().__init__(None, reason, expected, found, check=Check.UPLOAD)


class TransientStorageError(StorageError):
    """The object store failed in a way a later attempt may not (network, 5xx, throttling): retried."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def read_credentials(path: Path) -> Credentials:
    """An AWS shared-credentials file (INI): `[default]`, or its only profile; refused if others may read it."""
    check_permissions(path, "S3 credentials file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        # never quote the content: it holds the secret
        raise ConfigError(f"S3 credentials file {path} cannot be read as an INI file ({type(exc).__name__})") from None
    sections = parser.sections()
    name = "default" if "default" in sections else (sections[0] if len(sections) == 1 else None)
    if name is None:
        raise ConfigError(f"S3 credentials file {path} needs a [default] section (or exactly one profile)")
    sec = parser[name]
    key, secret = sec.get("aws_access_key_id"), sec.get("aws_secret_access_key")
    if not key or not secret:
        raise ConfigError(f"S3 credentials file {path} [{name}] needs aws_access_key_id and aws_secret_access_key")
    return Credentials(key.strip(), secret.strip(), (sec.get("aws_session_token") or "").strip() or None)


@dataclass(frozen=True)
class Connection:
    """Where the bucket is and how to sign (None: botocore's standard chain, e.g. AWS_* environment variables)."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    credentials: Credentials | None = None


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    size: int
    lock_mode: str | None
    retain_until: datetime | None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


class Bucket:
    """See the module docstring."""

    def __init__(
        self, conn: Connection, *, multipart_bytes: int = MULTIPART_BYTES, part_bytes: int = PART_BYTES
    ) -> None:
        self.conn = conn
        self._multipart_bytes = multipart_bytes
        self._part_bytes = max(part_bytes, 5 * 1024**2)  # S3's smallest part (but the last)
        self._client: S3Client | None = None
        self._ctx: Any = None

    async def __aenter__(self) -> Self:
        c = self.conn.credentials
        kwargs: dict[str, Any] = {}
        if c is not None:
            kwargs = {
                "aws_access_key_id": c.access_key_id,
                "aws_secret_access_key": c.secret_access_key,
                "aws_session_token": c.session_token,
            }
        config = AioConfig(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # MinIO and Ceph RGW are addressed by path (http://host:9000/bucket/key)
            s3={"addressing_style": "path" if self.conn.endpoint else "auto"},
        )
        self._ctx = get_session().create_client(
            "s3", endpoint_url=self.conn.endpoint, region_name=self.conn.region, config=config, **kwargs
        )
        self._client = await self._ctx.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(et, e, tb)
        self._client = self._ctx = None

    @property
    def client(self) -> S3Client:
        assert self._client is not None, "use `async with Bucket(...)`"
        return self._client

    def _fail(self, exc: Exception, doing: str) -> Exception:
        where = f"s3://{self.conn.bucket}" + (f" at {self.conn.endpoint}" if self.conn.endpoint else "")
        if isinstance(exc, NoCredentialsError):
            return ConfigError(
                f"no S3 credentials for {where}: set archive.s3_credentials_file or AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return ConfigError(
                    f"{where}: the bucket does not exist; create it with object lock (docs/operations.md)"
                )
            if code in _FATAL:
                return ConfigError(f"{where}: {doing} refused ({code}); check the credentials and bucket policy")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status >= 500 or code in _TRANSIENT:
                return TransientStorageError(f"{where}: {doing} failed ({code}); retried later")
            message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
            return StorageError(f"{where}: {doing} refused ({code}: {message})")
        return TransientStorageError(f"{where}: {doing} failed ({type(exc).__name__}: {exc}); retried later")

    async def check_lock(self) -> str:
        """The bucket's object lock state; ConfigError unless it is "Enabled"."""
        try:
            got = await self.client.get_object_lock_configuration(Bucket=self.conn.bucket)
        except ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                raise ConfigError(
                    f"bucket {self.conn.bucket} has no object lock: packages would be deletable. Create a bucket"
                    " with object lock enabled (docs/operations.md, 'WORM object storage'); refused"
                ) from None
            raise self._fail(exc, "reading the object lock configuration") from None
        except BotoCoreError as exc:
            raise self._fail(exc, "reading the object lock configuration") from None
        state = got.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled", "")
        if state != "Enabled":
            raise ConfigError(f"bucket {self.conn.bucket}: object lock is not enabled ({state or 'absent'}); refused")
        return state

    async def head(self, key: str, version_id: str | None = None) -> Version | None:
        """The current version of `key` (or the one named); None if there is none (or a delete marker)."""
        extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
        try:
            got = await self.client.head_object(Bucket=self.conn.bucket, Key=key, **extra)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, f"reading {key}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"reading {key}") from None
        return Version(
            key,
            str(got.get("VersionId", "")),
            int(got.get("ContentLength", 0)),
            got.get("ObjectLockMode"),
            got.get("ObjectLockRetainUntilDate"),
        )

    async def put(self, key: str, path: Path, sha256_hex: str, mode: LockMode, retain_until: datetime) -> str | None:
        """Create `key` from the file; its version id, or None when an object is there already (not written)."""
        size = os.stat(path).st_size
        if size > self._multipart_bytes:
            return await self._put_multipart(key, path, sha256_hex, mode, retain_until)
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        try:
            with path.open("rb") as body:
                got = await self.client.put_object(
                    Bucket=self.conn.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    ContentType="application/x-tar",
                    ChecksumAlgorithm="SHA256",  # object lock PUTs need a checksum (or Content-MD5)
                    ChecksumSHA256=checksum,  # the server refuses a body that does not hash to it
                    ObjectLockMode=mode,
                    ObjectLockRetainUntilDate=retain_until,
                    IfNoneMatch="*",  # never a second version over a package: create only
                    Metadata={"sha256": sha256_hex},
                )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            raise self._fail(exc, f"uploading {key}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"uploading {key}") from None
        return str(got.get("VersionId", "")) or None

    async def _put_multipart(
        self, key: str, path: Path, sha256_hex: str, mode: LockMode, retain_until: datetime
    ) -> str | None:
        """`put` in parts (each with its SHA-256, memory bounded by one part); aborted on any failure."""
        c = self.client
        try:
            created = await c.create_multipart_upload(
                Bucket=self.conn.bucket,
                Key=key,
                ContentType="application/x-tar",
                ChecksumAlgorithm="SHA256",
                ObjectLockMode=mode,
                ObjectLockRetainUntilDate=retain_until,
                Metadata={"sha256": sha256_hex},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"starting the upload of {key}") from None
        upload_id = created["UploadId"]
        parts: list[Any] = []
        try:
            with path.open("rb") as fh:
                number = 1
                while data := fh.read(self._part_bytes):
                    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
                    got = await c.upload_part(
                        Bucket=self.conn.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                    )
                    parts.append({"PartNumber": number, "ETag": got["ETag"], "ChecksumSHA256": checksum})
                    number += 1
            done = await c.complete_multipart_upload(
                Bucket=self.conn.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            # if the abort fails too, the bucket's lifecycle rule for incomplete uploads cleans up
            with contextlib.suppress(ClientError, BotoCoreError):
                await c.abort_multipart_upload(Bucket=self.conn.bucket, Key=key, UploadId=upload_id)
            if isinstance(exc, ClientError) and _code(exc) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
            ):
                return None
            if isinstance(exc, OSError):
                raise StorageError(f"{path}: cannot be read for the upload: {exc}") from None
            raise self._fail(exc, f"uploading {key}") from None
        return str(done.get("VersionId", "")) or None

    async def ensure_lock(
        self, key: str, version_id: str, mode: LockMode, until: datetime, minimum: datetime
    ) -> Version:
        """The version, locked in `mode` until at least `minimum`: set to `until` if the server did not (a
        store that ignores lock headers on some requests), then read back; StorageError if it still is not."""
        got = await self.head(key, version_id)
        if got is None:
            raise TransientStorageError(f"{key} version {version_id} is not there right after its upload")
        if got.lock_mode == mode and got.retain_until is not None and got.retain_until >= minimum:
            return got
        try:
            await self.client.put_object_retention(
                Bucket=self.conn.bucket,
                Key=key,
                VersionId=version_id,
                Retention={"Mode": mode, "RetainUntilDate": until},
                ChecksumAlgorithm="SHA256",
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"locking {key}") from None
        got = await self.head(key, version_id)
        if got is None or got.lock_mode != mode or got.retain_until is None or got.retain_until < minimum:
            raise StorageError(
                f"s3://{self.conn.bucket}/{key} version {version_id} is not locked ({mode} until {until:%Y-%m-%d})"
                " after the upload: the store does not apply object lock; refused"
            )
        return got

    async def download(self, key: str, version_id: str, dest: Path) -> tuple[str, int]:
        """Write that version of `key` to the new file `dest`; its (sha256 hex, size)."""
        sha = hashlib.sha256()
        size = 0
        try:
            got = await self.client.get_object(Bucket=self.conn.bucket, Key=key, VersionId=version_id)
            with dest.open("xb") as fh:
                async with got["Body"] as stream:
                    while chunk := await stream.read(CHUNK):
                        fh.write(chunk)
                        sha.update(chunk)
                        size += len(chunk)
        except FlexibleChecksumError as exc:  # the stored bytes are not those the server took in at upload
            raise UploadIntegrityError(
                f"s3://{self.conn.bucket}/{key} version {version_id} does not match the checksum stored with it: {exc}"
            ) from None
        except ClientError as exc:
            raise self._fail(exc, f"downloading {key}") from None
        except (BotoCoreError, OSError) as exc:
            raise self._fail(exc, f"downloading {key}") from None
        return sha.hexdigest(), size
