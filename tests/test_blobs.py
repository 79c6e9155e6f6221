"""The encrypted media store: durable, content-addressed, tamper-evident, no plaintext at rest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.blobs import BlobStore, MediaKeys
from bridge.errors import LogIntegrityError


def make_store(root: Path, log_id: bytes | None = None) -> BlobStore:
    keys = MediaKeys(log_id or os.urandom(16), os.urandom(32), {1: os.urandom(32)}, 1)
    return BlobStore(root, keys)


async def test_put_get_round_trip_and_dedup(tmp_path: Path) -> None:
    """put returns the plaintext sha256 and an id; the same bytes twice are one file; get returns them."""
    store = make_store(tmp_path)
    data = b"%PDF-1.7 concept kamerbrief" * 100
    blob_id, digest = await store.put(data, "application/pdf")
    again, _ = await store.put(data, "application/pdf")
    assert digest == hashlib.sha256(data).hexdigest() and again == blob_id
    assert store.get(blob_id) == data
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and data[:20] not in files[0].read_bytes()
    assert digest not in blob_id  # the id does not reveal the content hash


async def test_altered_blob_is_detected(tmp_path: Path) -> None:
    """A flipped byte in a stored blob makes get raise LogIntegrityError."""
    store = make_store(tmp_path)
    blob_id, _ = await store.put(b"x" * 1000)
    path = store.path(blob_id)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(LogIntegrityError):
        store.get(blob_id)


async def test_swapped_blob_is_detected(tmp_path: Path) -> None:
    """A blob copied over another id fails: the id is bound into the associated data."""
    store = make_store(tmp_path)
    a, _ = await store.put(b"first")
    b, _ = await store.put(b"second")
    store.path(b).write_bytes(store.path(a).read_bytes())
    with pytest.raises(LogIntegrityError):
        store.get(b)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab/../../x", "A" * 40, "\x00" * 40, "ab" * 10_000])
def test_hostile_blob_ids_are_refused(tmp_path: Path, bad: str) -> None:
    """Only 40 lowercase hex characters are a blob id: traversal and junk never reach the filesystem."""
    with pytest.raises(ValueError):
        make_store(tmp_path).path(bad)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=5000))
def test_any_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """Property: any bytes put come back identical, and no temp file is left behind."""
    import asyncio

    root = tmp_path_factory.mktemp("blobs")
    store = make_store(root)
    blob_id, _ = asyncio.run(store.put(data))
    assert store.get(blob_id) == data
    assert not [p for p in root.rglob("*.tmp")]
