"""Spooled events the homeserver must confirm: a frame anyone could have sealed is checked against the sync loop.

The spool's frames are sealed *to* the bot's public key (docs/synapse-module.md): confidential, but not
authenticated: whoever can write to the spool directory and read the module's config (the public key is in
it) can seal a frame the bot opens like Synapse's own. Such a frame would be archived as a message the
homeserver never carried. The sync loop is the check: it brings every event of every room the bot is in,
so an event that came through the spool and that the sync loop never brings did not come from the
homeserver (or the homeserver lost it). `Confirmations` keeps the spooled events the sync loop has not yet
brought; `overdue` gives those that stayed unconfirmed for `grace` seconds and two sync batches, and the
source records each as a `spool_event_unconfirmed` notice in its room, beside the record it questions, with
an ALERT (the record itself stays: nothing is removed from the log).

Which frames are checked: only those the spool held *after* the position that was its end when this
connection started (`boundary`). Those events were persisted after the sync token the connection resumed
from, so this connection's sync loop will bring them. Frames before it may belong to events the sync loop
stored before a restart (it resumes after them), so they are not checked: a forger who wants to escape the
check must write into the spool's past, which shifts or replaces frames Synapse wrote and is flagged by the
reader as out of sequence. Not kept across a restart of the bot: a frame still unconfirmed when the bot
stops is not checked again (said in docs/synapse-module.md).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.clock import now_ms
from bridge.events import MATRIX, SPOOL_UNCONFIRMED, ConversationId, Event, notice

__all__ = ["UNCONFIRMED", "Confirmations", "Spooled", "unconfirmed_notice"]

UNCONFIRMED = SPOOL_UNCONFIRMED
#: How long a spooled event may wait for the sync loop before it is questioned (a long-poll sync returns at
#: least every `sync_timeout_ms`; backfilling a gap can take longer).
GRACE_SECONDS = 120.0
#: How many event ids the sync loop brought are remembered (a spool frame read after the sync loop brought its
#: event needs no confirmation): the newest ones, for `RECENT_SECONDS`.
RECENT_MAX = 100_000
RECENT_SECONDS = 600.0
#: Unconfirmed events kept at the most (beyond it the oldest are no longer checked, with an ALERT).
PENDING_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Spooled:
    """An event the spool brought (and the log committed)."""

    room_id: str
    event_id: str
    #: Where its frame is in the spool (file name, offset) and when the module says it wrote it.
    file: str
    offset: int
    written_ms: int


@dataclass(frozen=True, slots=True)
class _Pending:
    item: Spooled
    since: float
    batches: int


class Confirmations:
    """The spooled events the sync loop has not brought yet (see the module docstring). One per source,
    kept across reconnects; `connected(boundary)` at every connect."""

    def __init__(self, grace: float = GRACE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._boundary: tuple[str, int] | None = None
        self._pending: dict[str, _Pending] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._batches = 0

    def connected(self, boundary: tuple[str, int] | None) -> None:
        """A connection starts; `boundary` is the spool's end (newest file, its size) as it was then (None: the
        spool could not be read then; nothing this connection spools is checked)."""
        self._boundary = boundary

    def synced(self, event_ids: Iterable[str]) -> None:
        """The sync loop brought these (about to be committed, or deduplicated against the log)."""
        now = self._clock()
        recent = self._recent
        for event_id in event_ids:
            self._pending.pop(event_id, None)
            recent[event_id] = now
            recent.move_to_end(event_id)
        while recent and (len(recent) > RECENT_MAX or next(iter(recent.values())) < now - RECENT_SECONDS):
            recent.popitem(last=False)

    def spooled(self, items: Iterable[Spooled]) -> None:
        """The spool brought these and they are committed: each from past the boundary waits for the sync loop,
        unless it brought the event already."""
        boundary = self._boundary
        if boundary is None:
            return
        now = self._clock()
        for item in items:
            if (item.file, item.offset) < boundary or item.event_id in self._recent:
                continue
            self._pending.setdefault(item.event_id, _Pending(item, now, self._batches))

    def batch_done(self) -> None:
        """The sync loop handled one more batch (its events given to `synced` first)."""
        self._batches += 1

    def overdue(self) -> list[tuple[Spooled, float]]:
        """The spooled events unconfirmed for `grace` seconds and two sync batches, with how long each waited
        (oldest first), forgotten once given out."""
        now = self._clock()
        out = [
            (p.item, now - p.since)
            for p in self._pending.values()
            if now - p.since >= self.grace and self._batches - p.batches >= 2
        ]
        for item, _ in out:
            del self._pending[item.event_id]
        return out

    def shed(self) -> int:
        """Past `PENDING_MAX` waiting events, forget the oldest (they are no longer checked); how many."""
        excess = len(self._pending) - PENDING_MAX
        for event_id in list(itertools.islice(self._pending, max(excess, 0))):
            del self._pending[event_id]
        return max(excess, 0)

    def waiting(self) -> int:
        """How many spooled events wait for the sync loop."""
        return len(self._pending)


def unconfirmed_notice(item: Spooled, waited_s: float, at_ms: int | None = None) -> Event:
    """The record questioning a spooled event the sync loop never brought, in the event's own room."""
    content: dict[str, Any] = {
        "notice": UNCONFIRMED,
        "event_id": item.event_id,
        "room_id": item.room_id,
        "spool_file": item.file,
        "spool_offset": item.offset,
        "spool_written_ms": item.written_ms,
        "waited_s": round(waited_s),
        "meaning": "came only through the spool: the homeserver's sync never brought this event",
    }
    at = now_ms() if at_ms is None else at_ms
    return notice(MATRIX, ConversationId(item.room_id), f"spool-unconfirmed:{item.event_id}", at, content)
