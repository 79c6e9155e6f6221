"""Backfill of a room's history gap through /messages, one bounded page at a time.

Contract: `gap_pages(client, room_id, since, until, limit)` yields the events
of the gap between the tokens `since` (exclusive; None = the start of the
history the bot may see) and `until` (the sync timeline's `prev_batch`), as
`Page`s of at most `limit` events, **oldest first**, paging forwards
(`dir=f`). Each page carries the server's raw JSON and what nio decrypted or
could not decrypt in it (nio decrypts /messages chunks as it parses them).

The caller commits each page as it comes (without advancing its sync cursor)
and the sync batch's own events last, with `next_batch`: memory is bounded by
the page size, not by the length of the history or the outage, and log order
follows the room's order. A crash part way leaves the cursor where it was, so
the next run fetches the whole gap again; the log's idempotency key drops what
was already stored.

Why forwards: paging backwards from `prev_batch` (the usual direction) yields
the newest events first, so bounded commits would store history in reverse
page order, and reversing needs the whole gap in memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nio import MegolmEvent, MessageDirection

from bridge.sources.matrix import crypto
from bridge.sources.matrix.client import RawKeepingClient, checked

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    """One /messages page of a gap, oldest event first."""

    events: list[dict[str, Any]]
    decrypted: dict[str, Any]
    undecrypted: dict[str, MegolmEvent]


async def gap_pages(
    client: RawKeepingClient, room_id: str, since: str | None, until: str, limit: int
) -> AsyncIterator[Page]:
    """Pages of the gap (`since`, `until`] in room order (see module docstring)."""
    token = since
    while True:
        page = await checked(
            client.room_messages(room_id, start=token, end=until, direction=MessageDirection.front, limit=limit),
            "messages",
        )
        chunk: list[dict[str, Any]] = (getattr(page, "raw_body", None) or {}).get("chunk") or []
        if chunk:
            yield Page(chunk, crypto.decrypted_by_id(page.chunk), crypto.undecrypted_by_id(page.chunk))
        if not chunk or not page.end or page.end == token:
            return
        token = page.end
