"""The sealed spool: room events appended at persistence time, readable only with the bot's private key.

Format (version 1). A spool directory holds append-only files named `<first seq, 20 digits>.spool`; a writer
starts a new file when it starts and when the current one passes `MAX_FILE_BYTES`, and never rewrites a byte.
Each file is a sequence of frames:

    header  (28 bytes, clear)  magic b"CASP", version u8 = 1, kind u8 = 1, reserved u16 = 0,
                               seq u64 (1, 2, 3... over the whole spool), written_ms u64, body length u32
    body    (sealed)           ephemeral X25519 public key (32) || AES-256-GCM ciphertext and tag
    trailer (4 bytes)          CRC-32 of header and body (tells a torn or garbled frame from a wrong key)

all integers big-endian. Sealing (ECIES composed of `cryptography`'s primitives, nothing hand-rolled): a fresh
X25519 key pair per frame; the shared secret with the bot's public key goes through HKDF-SHA256 (salt: the
ephemeral public key then the bot's, info `INFO`) to a 256-bit AES-GCM key used for this one frame only, so its
nonce is fixed (zero); the clear header is the additional data, so a frame's seq, time and length cannot be
changed without the bot noticing. The plaintext is the event in client format as UTF-8 JSON. No plaintext is
ever written: the clear header holds only the seq, the time and the length. PyNaCl's SealedBox would do the same,
but the bot's venv does not have PyNaCl and both sides have `cryptography`.

`SpoolWriter.append` is called from worker threads (Synapse's `defer_to_thread`); frames that arrive together
share one write and one fsync (group commit): a caller returns once its own frame is durable. Only the standard
library and `cryptography` are imported here, so the bot's tests can write spools without Synapse.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "HEADER",
    "INFO",
    "MAGIC",
    "MAX_FILE_BYTES",
    "SUFFIX",
    "TRAILER",
    "SpoolWriter",
    "client_event",
    "encode_frame",
    "file_name",
    "prune",
]

logger = logging.getLogger(__name__)

MAGIC = b"CASP"
VERSION = 1
KIND_EVENT = 1
HEADER = struct.Struct(">4sBBHQQI")
TRAILER = struct.Struct(">I")
INFO = b"chatarchief/v1/spool-frame"
SUFFIX = ".spool"
MAX_FILE_BYTES = 64 * 1024 * 1024
_NONCE = bytes(12)
#: The `unsigned` keys a client sees for a new event (age is left out: it is the time of the request).
_UNSIGNED = ("prev_content", "prev_sender", "replaces_state", "redacted_because")


def file_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def _frame_key(recipient: X25519PublicKey) -> tuple[bytes, AESGCM]:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(recipient)
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + recipient.public_bytes_raw(), info=INFO
    ).derive(shared)
    return ephemeral_public, AESGCM(key)


def encode_frame(recipient: X25519PublicKey, seq: int, written_ms: int, plaintext: bytes) -> bytes:
    """One whole frame (header, sealed body, trailer) for `plaintext`."""
    return _encode(_frame_key(recipient), seq, written_ms, plaintext)


def _encode(key: tuple[bytes, AESGCM], seq: int, written_ms: int, plaintext: bytes) -> bytes:
    ephemeral_public, aead = key
    header = HEADER.pack(MAGIC, VERSION, KIND_EVENT, 0, seq, written_ms, 32 + len(plaintext) + 16)
    body = ephemeral_public + aead.encrypt(_NONCE, plaintext, header)
    return header + body + TRAILER.pack(zlib.crc32(body, zlib.crc32(header)))


def client_event(
    event_dict: Mapping[str, Any], event_id: str, unsigned: Mapping[str, Any], membership: str | None = None
) -> bytes:
    """The event as the client-server API's sync gives the archiver it (without `unsigned.age`), as UTF-8 JSON.

    `membership`: the archiver's membership at the event, which Synapse adds to `unsigned` for the requesting
    user (MSC4115); the module spools only while it is "join"."""
    out: dict[str, Any] = {"event_id": event_id}
    for key in ("type", "sender", "origin_server_ts", "content", "room_id", "state_key", "redacts"):
        if key in event_dict:
            out[key] = event_dict[key]
    content = out.get("content")
    # Room v11 keeps a redaction's target in content; the client API also gives it top-level.
    if out.get("type") == "m.room.redaction" and isinstance(content, Mapping) and "redacts" in content:
        out.setdefault("redacts", content["redacts"])
    kept = {k: unsigned[k] for k in _UNSIGNED if k in unsigned}
    if membership is not None:
        kept["membership"] = membership
    if kept:
        out["unsigned"] = kept
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=_plain).encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | list):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def last_seq(directory: Path) -> int:
    """The highest seq used in the spool: that of the newest file's last complete frame; a newest file holding
    only a torn frame counts its first seq as used (the bot flags that frame); 0 for an empty spool."""
    files = sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    if not files:
        return 0
    path = files[-1]
    first = int(path.name[: -len(SUFFIX)])
    seq = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            magic, _, _, _, frame_seq, _, length = HEADER.unpack(header)
            if magic != MAGIC or f.tell() + length + TRAILER.size > size:
                break
            f.seek(length + TRAILER.size, os.SEEK_CUR)
            seq = frame_seq
    if seq:
        return seq
    return first if size else first - 1


def prune(directory: Path, keep_seconds: float, now: float, keep: str = "") -> list[str]:
    """Remove the spool files last written more than `keep_seconds` before `now` (never `keep`, the file about
    to be written); returns their names. The bot's sync loop is the complete record of every room, so a frame
    removed before the bot read it loses nothing (the bot records the missing file as a notice). Never raises:
    a file that cannot be removed is logged and left."""
    removed: list[str] = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        logger.exception("chatarchief: ALERT listing the spool for pruning failed")
        return removed
    for entry in entries:
        if not entry.name.endswith(SUFFIX) or entry.name == keep:
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < now - keep_seconds:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            logger.exception("chatarchief: ALERT removing old spool file %s failed", entry.name)
    if removed:
        logger.info("chatarchief: removed %d spool file(s) older than the configured keep_days", len(removed))
    return removed


class SpoolWriter:
    """Appends sealed frames to the spool in `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        public_key: bytes,
        max_file_bytes: int = MAX_FILE_BYTES,
        keep_days: int | None = None,
    ):
        self._dir = Path(directory)
        self._keep_seconds = None if keep_days is None else keep_days * 86400
        self._dir.mkdir(parents=True, exist_ok=True)
        self._recipient = X25519PublicKey.from_public_bytes(public_key)
        self._max = max_file_bytes
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[tuple[int, bytes]] = []
        self._next_seq = last_seq(self._dir) + 1
        self._fd: int | None = None
        self._size = 0
        #: Seqs of a batch whose write failed (and why), until their callers have been told.
        self._lost: dict[int, str] = {}

    def append(self, plaintext: bytes) -> int:
        """Seal and append one event; returns its seq once its frame is fsynced (blocking: call in a thread)."""
        key = _frame_key(self._recipient)  # the costly part (X25519), outside the locks
        with self._queue_lock:
            seq = self._next_seq
            self._next_seq += 1
            self._queue.append((seq, _encode(key, seq, int(time.time() * 1000), plaintext)))
        with self._write_lock:
            with self._queue_lock:
                batch, self._queue = self._queue, []
            if batch:  # else an earlier holder of the lock wrote and fsynced ours with its own (or failed to)
                try:
                    self._write(batch)
                except Exception as exc:
                    logger.exception("chatarchief: ALERT writing %d spool frame(s) failed", len(batch))
                    self._lost.update((s, str(exc)) for s, _ in batch)
            if seq in self._lost:
                raise OSError(f"spool write of frame {seq} failed: {self._lost.pop(seq)}")
        return seq

    def _write(self, batch: list[tuple[int, bytes]]) -> None:
        first_seq = batch[0][0]
        data = b"".join(frame for _, frame in batch)
        try:
            if self._fd is None or self._size >= self._max:
                self._open(first_seq)
            assert self._fd is not None
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self._size += len(data)
        except BaseException:
            # A torn frame stays at the end of this file only: the next frame starts a new file.
            self._close()
            raise

    def _open(self, first_seq: int) -> None:
        self._close()
        path = self._dir / file_name(first_seq)
        if self._keep_seconds is not None:
            prune(self._dir, self._keep_seconds, time.time(), keep=path.name)
        # Never an existing file with content (last_seq counts a torn frame's seq as used); an empty one is reused.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = os.fstat(self._fd).st_size
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                logger.exception("chatarchief: closing a spool file failed")

    def close(self) -> None:
        with self._write_lock:
            self._close()
