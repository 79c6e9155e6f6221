"""A STAND-IN for WORM object storage in tests: moto's S3 server (PyPI `moto[server]`) on 127.0.0.1.

It is not MinIO, Ceph RGW or AWS. What it enforces, as tests/test_worm.py pins
(so a moto upgrade that changes it fails loudly): a DELETE of a version under
compliance retention is refused (AccessDenied), also with the governance bypass
header; If-None-Match: * on PUT; GetObjectLockConfiguration on a bucket without
object lock fails. What it does NOT do or enforce (real S3 does, docs/operations.md):
apply the lock given to CreateMultipartUpload; shortening a compliance retention or turning it into governance mode is
accepted; suspending versioning on an object-lock bucket is accepted; the
bucket policy, IAM and the retention clock against the server's own time are
not modelled. Our code never relies on those refusals for its own checks: it
verifies what it reads back.

The server runs in this process (ThreadedMotoServer), so a test can also play
the storage operator who rewrites stored bytes underneath the API
(`tamper_stored`), which no S3 API call can do on a locked version.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiobotocore.session import get_session
from moto.backends import get_backend
from moto.server import ThreadedMotoServer

from bridge.worm.bucket import Connection, Credentials

ACCOUNT = "123456789012"  # moto's default account
#: Dummy credentials for the stand-in (moto accepts any); never real ones.
CREDENTIALS = Credentials("testing-key-id", "testing-secret")


@dataclass(frozen=True)
class StandIn:
    endpoint: str

    def connection(self, bucket: str) -> Connection:
        return Connection(bucket=bucket, endpoint=self.endpoint, region="us-east-1", credentials=CREDENTIALS)

    def make_bucket(self, name: str | None = None, *, object_lock: bool = True) -> str:
        """A fresh bucket (with object lock unless told otherwise); returns its name."""
        bucket = name or f"worm-{os.urandom(5).hex()}"

        async def go() -> None:
            async with self.client() as c:
                await c.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)

        asyncio.run(go())
        return bucket

    def client(self) -> Any:
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS.access_key_id,
            aws_secret_access_key=CREDENTIALS.secret_access_key,
        )


def start_stand_in() -> Iterator[StandIn]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield StandIn(f"http://{host}:{port}")
    finally:
        server.stop()


def tamper_stored(bucket: str, key: str, version_id: str, flip_at: int, *, and_checksum: bool = False) -> None:
    """The storage operator's attack: flip one stored byte of a version, below the S3 API (and its lock).

    `and_checksum`: a careful operator also rewrites the stored SHA-256 checksum to match, so the client
    library's response-checksum check passes and only our own comparison with the local package is left.
    """
    backend = get_backend("s3")[ACCOUNT]["global"]
    for fake in backend.buckets[bucket].keys.getlist(key):
        if fake.version_id == version_id:
            data = bytearray(fake.value)
            data[flip_at] ^= 0x01
            fake.value = bytes(data)
            if and_checksum:
                fake.checksum_value = base64.b64encode(hashlib.sha256(bytes(data)).digest()).decode()
            return
    raise AssertionError(f"no version {version_id} of {key} in the stand-in")
