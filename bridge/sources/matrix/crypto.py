"""End-to-end encryption glue: what nio decrypted, the evidence to keep, late keys.

nio decrypts inside `receive_response` and swaps each `MegolmEvent` in its own
parse for the decrypted event (same event id). We keep the server's raw JSON
(see `client.RawKeepingClient`) and, per event id, replace the
encrypted `type`/`content` by the decrypted ones: the rest of the envelope
(`event_id`, `sender`, `origin_server_ts`, `unsigned`) stays as the server sent it.

Evidence per decrypted event (stored by the normaliser as `content.encryption`):
algorithm, sender_key, session_id, device_id (as claimed in the envelope),
`verified` (nio's local trust: true only for devices someone verified here),
`device_known` / `device_key_matches` (the sender's device keys from /keys/query
and whether its curve25519 key is the one that made the Megolm session),
`forwarded` (key came through a forwarding chain, not from the sender), and
`cross_signed`: None, because matrix-nio has no cross-signing (matrix-nio#229).

Late keys: an event that did not decrypt is committed as `undecryptable`; once
its key arrives, `late.late_decryptions` decrypts it again and the source appends
it under the event id `<event_id>#decrypted` (`LATE_SUFFIX`), with
`relates_to` = the original event id unless the event has a relation of its own
(an edit, reaction...) — the id prefix always links it to the first record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from nio import AsyncClient, MegolmEvent
from nio.exceptions import EncryptionError, LocalProtocolError

log = logging.getLogger(__name__)

LATE_SUFFIX = "#decrypted"
#: `decrypt_one`'s reason for a ciphertext whose Megolm session and message index nio decrypted before under
#: another event id (or time): the same message sent again as a new event, a replay.
REPLAYED = "replayed: this Megolm message index was decrypted before under another event id"
#: How nio's `decrypt_megolm_event` words that refusal (its only sign; `tests/test_spool_synapse.py` pins it).
_NIO_REPLAY = "Duplicate message index"
ENCRYPTED_TYPE = "m.room.encrypted"


def decrypted_by_id(nio_events: Iterable[Any]) -> dict[str, Any]:
    """nio's decrypted events (from a parsed timeline or /messages chunk), by event id."""
    return {e.event_id: e for e in nio_events if getattr(e, "decrypted", False) and getattr(e, "event_id", None)}


def undecrypted_by_id(nio_events: Iterable[Any]) -> dict[str, MegolmEvent]:
    return {e.event_id: e for e in nio_events if isinstance(e, MegolmEvent)}


def merge_decrypted(envelope: dict[str, Any], decrypted: Any) -> dict[str, Any]:
    """The server's event with type and content replaced by the decrypted ones."""
    plain = decrypted.source
    return {**envelope, "type": plain.get("type"), "content": plain.get("content", {})}


def decrypt_one(client: AsyncClient, room_id: str, envelope: dict[str, Any]) -> tuple[Any | None, str]:
    """Decrypt one `m.room.encrypted` event as a timeline carries it (no `room_id`) with the Megolm sessions nio
    holds now: (nio's decrypted event, "") or (None, why not). Nothing is requested and nothing is recorded
    here; nio's replay check (same session and message index under another event id) refuses a replay, with
    the reason `REPLAYED`."""
    megolm = MegolmEvent.from_dict({**envelope, "room_id": room_id})
    if not isinstance(megolm, MegolmEvent):
        return None, "not a Megolm event nio can parse"
    megolm.room_id = room_id
    try:
        decrypted = client.decrypt_event(megolm)
    except EncryptionError as exc:
        if str(exc).startswith(_NIO_REPLAY):
            return None, REPLAYED
        return None, "the keys held do not decrypt it"
    if not getattr(decrypted, "decrypted", False):
        return None, "decrypted to a payload nio could not parse"
    return decrypted, ""


def evidence(client: AsyncClient, envelope: dict[str, Any], decrypted: Any) -> dict[str, Any]:
    """Encryption evidence for one decrypted event (see module docstring)."""
    raw_content = envelope.get("content")
    content: dict[str, Any] = raw_content if isinstance(raw_content, dict) else {}
    sender = envelope.get("sender")
    device_id = content.get("device_id")
    sender_key = decrypted.sender_key or content.get("sender_key")
    device = None
    if isinstance(sender, str) and isinstance(device_id, str):
        device = client.device_store[sender].get(device_id)
    session = None
    if client.olm is not None:
        session = client.olm.inbound_group_store.get(
            decrypted.room_id or envelope.get("room_id"), sender_key, decrypted.session_id
        )
    return {
        "algorithm": content.get("algorithm"),
        "sender_key": sender_key,
        "session_id": decrypted.session_id,
        "device_id": device_id,
        "verified": bool(decrypted.verified),
        "device_known": device is not None,
        "device_key_matches": None if device is None else device.curve25519 == sender_key,
        "forwarded": bool(session.forwarding_chain) if session is not None else None,
        "cross_signed": None,
    }


async def request_keys(client: AsyncClient, events: Iterable[MegolmEvent]) -> None:
    """Ask the sender's devices for missing room keys, once per session.

    Best effort: nio's own clients only answer their own user's devices, other
    clients (Element) may answer or not. Failures are logged, not raised: the
    event is already safely stored as undecryptable.
    """
    asked: set[str] = set()
    for event in events:
        if event.session_id in asked or event.session_id in client.outgoing_key_requests:
            continue
        asked.add(event.session_id)
        try:
            response = await client.request_room_key(event)
        except LocalProtocolError:
            continue  # already requested in an earlier run
        if hasattr(response, "status_code"):
            log.warning(
                "room key request refused",
                extra={"session_id": event.session_id, "code": str(response.status_code)},
            )
