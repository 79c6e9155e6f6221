"""Late decryption of events stored as undecryptable, once their room key has arrived.

Contract: `late_decryptions(client, pending)` returns, for each pending event
whose Megolm session nio now holds (checked locally, no request otherwise), a
`Late`: either the decrypted event (its envelope as the homeserver gives it
again, type and content replaced by the decrypted ones, plus the decryption
evidence) or `given_up` when it cannot decrypt with the key that arrived, the
server no longer gives it, or its ciphertext is not the one stored (digest
mismatch: the late record must decrypt exactly what the first record holds).
Every returned event leaves the pending list, so each is fetched at most once
after its key arrives. An unreachable homeserver raises
`MatrixUnavailableError` (the batch is retried).

The raw event is fetched again (`GET /rooms/{room}/event/{event}`) instead of
being kept in the source's state: it is already in the log, and the state
stays small (see `state`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nio import AsyncClient

from bridge.sources.matrix import crypto
from bridge.sources.matrix.client import fetch_event
from bridge.sources.matrix.state import PendingEvent, ciphertext_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Late:
    """The outcome for one pending event whose key arrived."""

    pending: PendingEvent
    #: The server's envelope with the decrypted type and content; None when given up.
    merged: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None

    @property
    def given_up(self) -> bool:
        return self.merged is None


def has_key(client: AsyncClient, item: PendingEvent) -> bool:
    """Whether nio holds the inbound Megolm session `item` was encrypted with."""
    if client.olm is None:
        return False
    return client.olm.inbound_group_store.get(item.room_id, item.sender_key, item.session_id) is not None


async def late_decryptions(client: AsyncClient, pending: Iterable[PendingEvent]) -> list[Late]:
    """Outcomes for the pending events whose key arrived (see module docstring)."""
    found = []
    for item in pending:
        if has_key(client, item):
            found.append(await _retry(client, item))
    return found


async def _retry(client: AsyncClient, item: PendingEvent) -> Late:
    raw = await fetch_event(client, item.room_id, item.event_id)
    content = raw.get("content") if raw is not None else None
    ciphertext = content.get("ciphertext") if isinstance(content, dict) else None
    if raw is None or not isinstance(ciphertext, str):
        log.warning("late decryption given up: event not available", extra={"event_id": item.event_id})
        return Late(item)
    if not hmac.compare_digest(ciphertext_digest(ciphertext), item.digest):
        log.warning("late decryption given up: ciphertext differs from the stored one", extra={
            "event_id": item.event_id})  # fmt: skip
        return Late(item)
    envelope = {k: v for k, v in raw.items() if k != "room_id"}  # as a sync timeline carries it
    decrypted, why = crypto.decrypt_one(client, item.room_id, envelope)
    if decrypted is None:
        log.warning("late decryption given up", extra={"event_id": item.event_id, "reason": why})
        return Late(item)
    proof = crypto.evidence(client, {**envelope, "room_id": item.room_id}, decrypted)
    return Late(item, crypto.merge_decrypted(envelope, decrypted), proof)
