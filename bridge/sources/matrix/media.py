"""Fetch the media of a Matrix event into the blob store.

Contract: `fetch_attachments(fetcher, event, blobs, max_bytes)` returns the event
with every "pending" attachment resolved to one of:
- "stored": downloaded through the authenticated media API
  (`/_matrix/client/v1/media/download`), decrypted when the event carried an
  encrypted `file`, handed to `BlobSink.put` (which encrypts at rest); `sha256`
  and `size` are of the plaintext;
- "oversized": actual size above `max_bytes` (the server's Content-Length, or
  the bytes streamed so far); nothing fetched past the limit, never silently
  skipped, `error` names the limit. The size a sender declares (`info.size`) is
  not trusted: a false one would otherwise keep any file out of the archive;
- "failed": the server refused (404, 403...) or the bytes did not decrypt or
  match their hash; `error` says which, without content.
An unreachable homeserver raises `MatrixUnavailableError` instead, so the sync
batch is retried rather than recording a transient outage as a permanent failure.

The download is our own streaming GET through nio's HTTP session (same bearer
token, same endpoint nio's `download()` uses) because nio reads the whole body
into memory with no limit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlparse

import aiohttp
from nio.crypto.attachments import decrypt_attachment
from nio.exceptions import EncryptionError

from bridge.errors import SourceError
from bridge.events import Attachment, Event
from bridge.sources import BlobSink
from bridge.sources.matrix.client import MatrixUnavailableError

log = logging.getLogger(__name__)

MEDIA_DOWNLOAD_PATH = "/_matrix/client/v1/media/download"
_CHUNK = 64 * 1024


class Oversized(SourceError):
    """The body grew past the limit while streaming."""


class MediaFetcher:
    """Streams mxc:// media from one homeserver with one access token."""

    def __init__(self, session: aiohttp.ClientSession, homeserver: str, access_token: str) -> None:
        self._session = session
        self._homeserver = homeserver.rstrip("/")
        self._token = access_token

    async def get(self, mxc: str, max_bytes: int) -> tuple[bytes, str | None]:
        """Return (body, content type); raise Oversized, MediaRefused or MatrixUnavailableError."""
        parsed = urlparse(mxc)
        if parsed.scheme != "mxc" or not parsed.netloc or not parsed.path.strip("/"):
            raise MediaRefused("not an mxc:// URL")
        url = (
            f"{self._homeserver}{MEDIA_DOWNLOAD_PATH}/{quote(parsed.netloc, safe='')}"
            f"/{quote(parsed.path.strip('/'), safe='')}"
        )
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as resp:
                if resp.status != 200:
                    raise MediaRefused(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise Oversized
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body.extend(chunk)
                    if len(body) > max_bytes:
                        raise Oversized
                return bytes(body), resp.content_type
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise MatrixUnavailableError(f"media download: homeserver unreachable ({type(exc).__name__})") from exc


class MediaRefused(SourceError):
    """The homeserver answered but would not give the media."""


async def fetch_attachments(fetcher: MediaFetcher, event: Event, blobs: BlobSink | None, max_bytes: int) -> Event:
    """Resolve the event's pending attachments (see module docstring)."""
    if blobs is None or not any(a.status == "pending" for a in event.attachments):
        return event
    file_info = _encrypted_file(event.raw)
    resolved = []
    for attachment in event.attachments:
        if attachment.status == "pending":
            attachment = await _fetch_one(fetcher, attachment, file_info, blobs, max_bytes)
        resolved.append(attachment)
    return replace(event, attachments=tuple(resolved))


def _encrypted_file(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The `file` object (key, iv, hashes) of an encrypted attachment, from the event or its edit."""
    content = raw.get("content")
    if not isinstance(content, dict):
        return None
    for candidate in (content, content.get("m.new_content")):
        if isinstance(candidate, dict) and isinstance(candidate.get("file"), dict):
            return dict(candidate["file"])
    return None


async def _fetch_one(
    fetcher: MediaFetcher,
    attachment: Attachment,
    file_info: dict[str, Any] | None,
    blobs: BlobSink,
    max_bytes: int,
) -> Attachment:
    if attachment.url is None:
        return replace(attachment, status="failed", error="no media url")
    try:
        body, content_type = await fetcher.get(attachment.url, max_bytes)
    except Oversized:
        return replace(attachment, status="oversized", error=f"larger than max_media_bytes ({max_bytes} bytes)")
    except MediaRefused as exc:
        log.warning("media not fetched", extra={"url": attachment.url, "error": str(exc)})
        return replace(attachment, status="failed", error=f"download refused: {exc}")
    if file_info is not None:
        try:
            body = await asyncio.to_thread(_decrypt, body, file_info)
        except (EncryptionError, KeyError, TypeError, ValueError) as exc:
            log.warning("media did not decrypt", extra={"url": attachment.url, "error": type(exc).__name__})
            return replace(attachment, status="failed", error=f"decryption failed: {type(exc).__name__}")
    media_type = attachment.media_type or content_type
    blob_id, sha256 = await blobs.put(body, media_type)
    return replace(attachment, status="stored", blob_id=blob_id, sha256=sha256, size=len(body), media_type=media_type)


def _decrypt(ciphertext: bytes, file_info: dict[str, Any]) -> bytes:
    """AES-CTR decrypt after checking the ciphertext's sha256 (nio does both)."""
    plaintext: bytes = decrypt_attachment(
        ciphertext, file_info["key"]["k"], file_info["hashes"]["sha256"], file_info["iv"]
    )
    return plaintext
