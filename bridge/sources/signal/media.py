"""Fetch the attachments of a Signal event into the blob store.

Contract: `fetch_attachments(event, channel, blobs, folder, max_bytes)` returns
the event with each "pending" attachment (signal-cli's attachment id in `url`)
resolved to one of:
- "stored": bytes read from signal-cli's attachments folder (when `folder` is
  configured and holds the file) or fetched over the connection (`getAttachment`
  / rest-api `GET /v1/attachments/{id}`), handed to `BlobSink.put` (encrypted
  at rest); `sha256`/`size` are of these bytes;
- "oversized": declared or actual size above `max_bytes`, nothing read past it;
- "failed": not found, refused, or the connection dropped; `error` says which
  (no content, no file names).
It never raises for a fetch problem: the message is committed either way (a
lost connection must not lose the envelope, which signal-cli will not resend).

Folder safety: the id is used only if it is a single plain file name (no path
separator, NUL, "." or "..", at most 255 bytes); the file is opened relative to
the folder with O_NOFOLLOW and must be a regular file. The envelope's
`filename` is metadata only, never a path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

from bridge.errors import SourceError
from bridge.events import Attachment, Event
from bridge.sources import BlobSink
from bridge.sources.signal.transport import AttachmentTooLarge, Channel, SignalRpcError, SignalUnavailable

log = logging.getLogger(__name__)


class _NotInFolder(SourceError):
    """The folder has no usable file for this id (fall back to the connection)."""


async def fetch_attachments(
    event: Event, channel: Channel | None, blobs: BlobSink | None, folder: Path | None, max_bytes: int
) -> Event:
    if blobs is None or not any(a.status == "pending" for a in event.attachments):
        return event
    resolved = []
    for attachment in event.attachments:
        if attachment.status == "pending":
            attachment = await _fetch_one(attachment, event, channel, blobs, folder, max_bytes)
        resolved.append(attachment)
    return replace(event, attachments=tuple(resolved))


async def _fetch_one(
    attachment: Attachment, event: Event, channel: Channel | None, blobs: BlobSink, folder: Path | None, max_bytes: int
) -> Attachment:
    attachment_id = attachment.url
    if not attachment_id:
        return replace(attachment, status="failed", error="no attachment id")
    if attachment.size is not None and attachment.size > max_bytes:
        return replace(attachment, status="oversized")
    body: bytes | None = None
    try:
        if folder is not None:
            try:
                body = await asyncio.to_thread(read_from_folder, folder, attachment_id, max_bytes)
            except _NotInFolder:
                body = None
        if body is None:
            if channel is None:
                return replace(attachment, status="failed", error="not in the attachments folder")
            body = await channel.fetch_attachment(attachment_id, event.conversation, max_bytes)
    except AttachmentTooLarge:
        return replace(attachment, status="oversized")
    except SignalRpcError as exc:
        log.warning("signal attachment not fetched", extra={"event_id": event.event_id, "code": str(exc.code)})
        return replace(attachment, status="failed", error=f"daemon refused: {exc.code}")
    except SignalUnavailable:
        log.warning("signal attachment not fetched: connection lost", extra={"event_id": event.event_id})
        return replace(attachment, status="failed", error="connection to signal-cli lost before the fetch")
    except OSError as exc:
        log.warning("signal attachment unreadable", extra={"event_id": event.event_id, "errno": exc.errno})
        return replace(attachment, status="failed", error=f"attachments folder: {errno.errorcode.get(exc.errno or 0)}")
    blob_id, sha256 = await blobs.put(body, attachment.media_type)
    return replace(attachment, status="stored", blob_id=blob_id, sha256=sha256, size=len(body))


def safe_name(attachment_id: str) -> bool:
    """True if `attachment_id` is one plain file name that cannot leave its folder."""
    if not attachment_id or attachment_id in (".", "..") or "\0" in attachment_id:
        return False
    if "/" in attachment_id or "\\" in attachment_id or os.sep in attachment_id:
        return False
    try:
        return len(attachment_id.encode("utf-8")) <= 255
    except UnicodeEncodeError:  # lone surrogates: not a name signal-cli writes
        return False


def read_from_folder(folder: Path, attachment_id: str, max_bytes: int) -> bytes:
    """The file `attachment_id` in `folder` (see module docstring); _NotInFolder if unusable."""
    if not safe_name(attachment_id):
        raise _NotInFolder
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(attachment_id, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            raise _NotInFolder from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: never followed
                raise _NotInFolder from None
            raise
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _NotInFolder
        if info.st_size > max_bytes:
            raise AttachmentTooLarge
        body = handle.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise AttachmentTooLarge
    return body
