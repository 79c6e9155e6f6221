"""Recover the original of events redacted before the bot saw them (MSC2815).

When the bot is down, an event sent and redacted meanwhile reaches it with its
content stripped. Synapse with `experimental_features.msc2815_enabled` lets a
user with redact power (a moderator; or a server admin) read the original
through `GET /rooms/{room}/event/{event}?fi.mau.msc2815.include_unredacted_content=true`,
until `redaction_retention_period` (default 7 days) purges it.

Contract: `recover_original(client, event)` returns `event` unchanged unless it
is a redacted-before-capture copy whose original the server gives back: then the
normalised original, marked `redacted_before_capture` (with `redacted_by`) and
`recovered_via: "msc2815"`. `fetch_unredacted(client, room_id, event_id)` returns the original
event JSON (decrypted where nio can; see `crypto`) and the decryption
evidence, or None when the server will not or cannot give it (no MSC2815, no
power, purged): the event then stays recorded as redacted-before-capture.
An unreachable server raises `MatrixUnavailableError` (the batch is retried).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from bridge.events import Event
from bridge.sources.matrix import crypto
from bridge.sources.matrix.client import fetch_event
from bridge.sources.matrix.normalise import normalise

log = logging.getLogger(__name__)

MSC2815_PARAM = "fi.mau.msc2815.include_unredacted_content"


async def fetch_unredacted(
    client: Any, room_id: str, event_id: str
) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(original event, decryption evidence or None), or None (see module docstring)."""
    original = await fetch_event(client, room_id, event_id, {MSC2815_PARAM: "true"})
    if original is None or not original.get("content"):
        return None  # server without MSC2815 answers with the redacted event
    if original.get("type") != crypto.ENCRYPTED_TYPE:
        return original, None
    decrypted, _ = crypto.decrypt_one(client, room_id, {k: v for k, v in original.items() if k != "room_id"})
    if decrypted is None:
        return original, None  # the ciphertext is still worth keeping
    envelope = {**original, "room_id": room_id}
    return crypto.merge_decrypted(original, decrypted), crypto.evidence(client, envelope, decrypted)


async def recover_original(client: Any, event: Event) -> Event:
    """The original of an event redacted before capture, where the server allows (MSC2815)."""
    if not event.content.get("redacted_before_capture") or event.raw.get("content"):
        return event
    found = await fetch_unredacted(client, event.conversation, event.event_id)
    if found is None:
        return event
    raw, proof = found
    original = normalise(raw, room_id=event.conversation, received_at=event.received_at, decryption=proof)
    log.info("recovered original redacted before capture", extra={"event_id": event.event_id})
    # Keep what the stripped copy told us (who redacted it): the server's
    # unredacted copy may lack `unsigned.redacted_because`.
    marker = {k: v for k, v in event.content.items() if k in ("redacted_before_capture", "redacted_by")}
    return replace(original, content={**original.content, **marker, "recovered_via": "msc2815"})
