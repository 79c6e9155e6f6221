"""Chat sources: protocol clients (I/O) and the pure normalisers that turn their events into `Event`s.

The two contracts every live source shares with the capture pipeline live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.events import Event


class Sink(Protocol):
    """Where captured events go (the capture pipeline provides it)."""

    async def commit(self, events: Sequence[Event], cursor: str | None) -> None:
        """Make `events` durable and store `cursor` in the same transaction; return when durable.

        `cursor=None` leaves the stored cursor as it is (a backfill page of a gap).
        """
        ...

    async def load_cursor(self) -> str | None:
        """The cursor of the last commit, or None before the first."""
        ...


class BlobSink(Protocol):
    """Encrypted content-addressed media store (the capture pipeline provides it)."""

    async def put(self, data: bytes, media_type: str | None) -> tuple[str, str]:
        """Store `data` encrypted; return (blob_id, plaintext sha256 hex)."""
        ...
