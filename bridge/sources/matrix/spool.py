"""Reading the sealed spool Chatarchief's Synapse module writes (docs/synapse-module.md, "The sealed spool").

The module seals every event of a room the archiver is joined to (in an end-to-end encrypted room: the Megolm
ciphertext as Synapse holds it, which the bot decrypts with its own room keys), at the moment Synapse persisted
it, and appends it with an fsync to files in a spool directory; the format is defined in
`synapse-module/chatarchief_synapse/spool.py` (header, sealed body, CRC-32 trailer; X25519 + HKDF-SHA256 +
AES-256-GCM, the clear header as additional data). This module is the reader:

- The bot's X25519 key is derived from the log's key material (`bridge.app.spool_private_key`, as nio's store
  key is): no key file to create, protect or back up separately; `spool_public_key_b64` is what the module's
  config takes (`chatarchief spool-key --config FILE` prints it).
- `read(directory, position, key)`: the frames after `position`, each opened (`Frame.event`) or flagged
  (`Frame.problem`: torn, garbled, foreign, out of sequence), and the position after them. A torn frame at the
  end of the newest file is still being written: not returned, the position stays before it. Never raises on
  spool content.
- `Position` is the reader's cursor (file, offset, seq), committed with the events of the frames before it
  (`SpoolTail` in `source.py`): a crash re-reads from the committed position, the log's dedup drops what was
  stored already.
- `problem_notice(...)`: the record of a frame that cannot be opened: `Kind.NOTICE`, `notice =
  "spool_frame_unreadable"`, the reason and the frame's bytes as they are (sealed: no plaintext), so nothing is
  silently skipped. The sync loop still brings every event of the room.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.clock import now_ms
from bridge.errors import DataError
from bridge.events import MATRIX, ConversationId, Event, notice
from bridge.sources import Sink
from bridge.sources.matrix.confirm import Spooled

log = logging.getLogger(__name__)

__all__ = [
    "Frame",
    "Position",
    "end_of",
    "more",
    "problem_notice",
    "read",
    "spool_public_key_b64",
    "tail",
]

MAGIC = b"CASP"
VERSION = 1
KIND_EVENT = 1
HEADER = struct.Struct(">4sBBHQQI")
TRAILER = struct.Struct(">I")
INFO = b"chatarchief/v1/spool-frame"
SUFFIX = ".spool"
_NONCE = bytes(12)
#: A frame longer than this is garbage (a length field gone wrong), not an event.
MAX_BODY = 64 * 1024 * 1024
#: How much of an unreadable stretch is kept in its notice (the rest is described by length and hash).
KEEP_BYTES = 64 * 1024
#: Bytes read per file per call (a backlog is read in steps; a bigger frame is read whole).
CHUNK = 256 * 1024
UNREADABLE = "spool_frame_unreadable"
#: How long the reader waits before it tries an unreadable spool again.
SPOOL_RETRY_SECONDS = 1.0


def spool_public_key_b64(key: X25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Position:
    """After the frame `seq` (0: none yet), which ends at `offset` in spool file `file` ("" before any file)."""

    file: str = ""
    offset: int = 0
    seq: int = 0

    def encode(self) -> str:
        return orjson.dumps({"v": 1, "file": self.file, "offset": self.offset, "seq": self.seq}).decode()

    @staticmethod
    def decode(text: str | None) -> Position:
        if text is None:
            return Position()
        d = orjson.loads(text)
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("not a spool position")
        return Position(str(d["file"]), int(d["offset"]), int(d["seq"]))


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame (or one unreadable stretch) of the spool."""

    file: str
    offset: int
    seq: int
    written_ms: int
    #: The event in client format (with `room_id`), or None when `problem` says why not.
    event: dict[str, Any] | None
    problem: str | None = None
    data: bytes = field(default=b"", repr=False)


def _open(key: X25519PrivateKey, header: bytes, body: bytes) -> bytes:
    ephemeral = X25519PublicKey.from_public_bytes(body[:32])
    shared = key.exchange(ephemeral)
    mine = key.public_key().public_bytes_raw()
    aead_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=body[:32] + mine, info=INFO).derive(shared)
    return AESGCM(aead_key).decrypt(_NONCE, body[32:], header)


def files(directory: Path) -> list[str]:
    """The spool's file names in order ([] while the module has not made the directory yet)."""
    try:
        return sorted(p.name for p in os.scandir(directory) if p.name.endswith(SUFFIX) and p.is_file())
    except FileNotFoundError:
        return []


def read(directory: Path, position: Position, key: X25519PrivateKey, limit: int = 1000) -> tuple[list[Frame], Position]:
    """Up to `limit` frames after `position`, and the position after them (see the module docstring)."""
    names = files(directory)
    out: list[Frame] = []
    pos = position
    if pos.file and pos.file not in names:
        later = [n for n in names if n > pos.file]
        if later:  # removed past the position: what it held after the position is lost to the spool path
            why = "spool file of the committed position is gone"
            pos = Position(later[0], 0, pos.seq)
        else:  # only older names, or none: the spool was reset (its seq starts again)
            why = "spool reset: the file of the committed position and everything after it are gone"
            pos = Position(names[0] if names else "", 0, 0)
        out.append(Frame(pos.file, 0, pos.seq, 0, None, why))
        if not pos.file:
            return out, pos
    elif not pos.file:
        if not names:
            return out, pos
        pos = Position(names[0], 0, pos.seq)
    while len(out) < limit and pos.file:
        newest = pos.file == names[-1] if names else True
        data = _chunk(directory / pos.file, pos.offset, CHUNK)
        frames, used, rest = _parse(pos.file, pos.offset, data, pos.seq, key, limit - len(out))
        if rest and not frames and len(data) == CHUNK:  # one frame bigger than a chunk
            data = _chunk(directory / pos.file, pos.offset, HEADER.size + MAX_BODY + TRAILER.size)
            frames, used, rest = _parse(pos.file, pos.offset, data, pos.seq, key, limit - len(out))
        out.extend(frames)
        seq = frames[-1].seq if frames and frames[-1].seq else pos.seq
        pos = Position(pos.file, pos.offset + used, max(seq, pos.seq))
        if len(out) >= limit:
            break
        if len(data) == CHUNK and used:
            continue  # a full chunk: the file may go on past it (read on from the first byte not used)
        if rest and newest:
            break  # a frame still being written (or a garbled tail the next read flags once a newer file exists)
        later = [n for n in names if n > pos.file]
        if not later:
            break
        if rest:
            out.append(_unreadable(pos.file, pos.offset, pos.seq, data[used:], "torn frame at the end of a spool file"))
        pos = Position(later[0], 0, pos.seq)
    return out, pos


def _chunk(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _parse(
    name: str, base: int, data: bytes, last_seq: int, key: X25519PrivateKey, limit: int
) -> tuple[list[Frame], int, bool]:
    """Frames in `data`; returns them, the bytes used, and whether bytes are left that make no whole frame."""
    out: list[Frame] = []
    at = 0
    while at < len(data) and len(out) < limit:
        if len(data) - at < HEADER.size:
            return out, at, True
        header = data[at : at + HEADER.size]
        magic, version, kind, _, seq, written_ms, length = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION or kind != KIND_EVENT or length > MAX_BODY or length < 48:
            # No trustworthy length: the rest of this file is one unreadable stretch.
            out.append(_unreadable(name, base + at, last_seq, data[at:], "garbled frame header"))
            return out, len(data), False
        end = at + HEADER.size + length + TRAILER.size
        if end > len(data):
            return out, at, True
        body = data[at + HEADER.size : end - TRAILER.size]
        (crc,) = TRAILER.unpack(data[end - TRAILER.size : end])
        frame_bytes = data[at:end]
        if crc != zlib.crc32(body, zlib.crc32(header)):
            out.append(Frame(name, base + at, seq, written_ms, None, "checksum mismatch", frame_bytes))
        else:
            out.append(_opened(name, base + at, seq, written_ms, key, header, body, frame_bytes, last_seq))
        last_seq = max(last_seq, seq)
        at = end
    return out, at, False


def _opened(
    name: str,
    offset: int,
    seq: int,
    written_ms: int,
    key: X25519PrivateKey,
    header: bytes,
    body: bytes,
    frame_bytes: bytes,
    last_seq: int,
) -> Frame:
    try:
        event = orjson.loads(_open(key, header, body))
    except (InvalidTag, ValueError) as exc:  # not for this key, or altered
        why = "cannot be opened with this bot's key (foreign or altered)" if isinstance(exc, InvalidTag) else str(exc)
        return Frame(name, offset, seq, written_ms, None, why, frame_bytes)
    if not isinstance(event, dict) or not isinstance(event.get("room_id"), str):
        return Frame(name, offset, seq, written_ms, None, "not an event with a room_id", frame_bytes)
    problem = None if seq == last_seq + 1 or last_seq == 0 else f"out of sequence: {seq} after {last_seq}"
    return Frame(name, offset, seq, written_ms, event, problem, frame_bytes)


def _unreadable(name: str, offset: int, seq: int, data: bytes, why: str) -> Frame:
    return Frame(name, offset, seq, 0, None, why, data)


def _spooled(frame: Frame) -> Spooled | None:
    event = frame.event
    if event is None or not isinstance(room_id := event.get("room_id"), str):
        return None
    if not isinstance(event_id := event.get("event_id"), str):
        return None
    return Spooled(room_id, event_id, frame.file, frame.offset, frame.written_ms)


def problem_notice(account: str, frame: Frame, at_ms: int) -> Event:
    """The record of an unreadable frame, or of a seq gap before a readable one (see the module docstring)."""
    kept = frame.data[:KEEP_BYTES]
    content: dict[str, Any] = {
        "notice": UNREADABLE,
        "reason": frame.problem,
        "file": frame.file,
        "offset": frame.offset,
        "seq": frame.seq,
        "length": len(frame.data),
        "crc32": zlib.crc32(frame.data),
        "data_b64": base64.b64encode(kept).decode("ascii"),
    }
    if frame.event is not None:
        content["event_id"] = frame.event.get("event_id")
        content["room_id"] = frame.event.get("room_id")
    conversation = ConversationId(f"notice:matrix-spool:{account}")
    return notice(MATRIX, conversation, f"spool:{frame.file}:{frame.offset}", at_ms, content)


def end_of(directory: Path) -> tuple[str, int]:
    """The spool's end as it is now: (newest file, its size); ("", 0) for an empty or missing spool."""
    names = files(directory)
    if not names:
        return ("", 0)
    try:
        return (names[-1], os.stat(directory / names[-1]).st_size)
    except FileNotFoundError:
        return (names[-1], 0)


def more(directory: Path, pos: Position) -> bool:
    """Cheap test (one stat, one listing) whether the spool holds anything after `pos`."""
    if pos.file:
        try:
            if os.stat(directory / pos.file).st_size > pos.offset:
                return True
        except FileNotFoundError:
            return True
    names = files(directory)
    return bool(names) and names[-1] > pos.file


async def tail(
    directory: Path,
    key: X25519PrivateKey,
    sink: Sink,
    account: str,
    to_events: Callable[[list[dict[str, Any]]], Awaitable[tuple[list[Event], dict[int, str]]]],
    stop: asyncio.Event,
    poll_seconds: float = 0.005,
    batch: int = 64,
    on_committed: Callable[[list[Spooled]], None] | None = None,
) -> None:
    """Append the spool's events to the log until `stop`, each batch with the position after it (ack after
    durable). `to_events` turns opened events into records exactly as the sync loop does (leaving out an encrypted
    event the bot holds no key for yet: the sync loop brings it with its key) and says which of them it
    refuses (their index, and why: a replayed ciphertext); unreadable and refused frames become
    `problem_notice` records and an ALERT. Wakes up every `poll_seconds` (a stat of the current file).
    `on_committed` is told the events of each committed batch (where their frames are: `confirm`)."""
    stored = await sink.load_cursor()
    try:
        pos = Position.decode(stored)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"the log's matrix spool position cannot be read ({exc})") from None
    log.info("matrix spool: reading", extra={"spool_dir": str(directory), "file": pos.file, "seq": pos.seq})
    failing: str | None = None
    while not stop.is_set():
        try:
            if not more(directory, pos):
                await asyncio.sleep(poll_seconds)
                continue
            frames, after = read(directory, pos, key, batch)
        except OSError as exc:  # unreadable spool (permissions, not a directory...): the sync loop goes on
            if failing != str(exc):
                failing = str(exc)
                log.error(
                    "ALERT matrix spool: cannot read the spool; plain-room events come by the sync loop only"
                    " until it can",
                    extra={"spool_dir": str(directory), "error": failing},
                )
            await asyncio.sleep(SPOOL_RETRY_SECONDS)
            continue
        if failing is not None:
            log.warning("matrix spool: readable again", extra={"spool_dir": str(directory)})
            failing = None
        if not frames and after == pos:
            await asyncio.sleep(poll_seconds)
            continue
        opened = [(i, f.event) for i, f in enumerate(frames) if f.event is not None]
        events, refused = await to_events([dict(event) for _, event in opened])
        for n, why in refused.items():  # opened, but `to_events` will not record it (a replay): a problem too
            i = opened[n][0]
            problem = why if frames[i].problem is None else f"{frames[i].problem}; {why}"
            frames[i] = dataclasses.replace(frames[i], problem=problem)
        at = now_ms()
        for frame in frames:
            if frame.problem is None:
                continue
            log.error(
                "ALERT matrix spool: frame cannot be used (kept as a notice; the sync loop still brings the room's"
                " events)",
                extra={"file": frame.file, "offset": frame.offset, "seq": frame.seq, "reason": frame.problem},
            )
            events.append(problem_notice(account, frame, at))
        await sink.commit(events, after.encode())
        pos = after
        if on_committed is not None:
            kept = {e.event_id for e in events}  # a frame `to_events` left to the sync loop waits for nothing
            on_committed([s for f in frames if (s := _spooled(f)) is not None and s.event_id in kept])
