"""An event's `prev_events`, which the client-server API does not hand out, through Synapse's admin API (I/O).

Contract:
- `is_admin(client)` is True when the bot's account may use Synapse's admin API (`/users/{self}/admin`); any
  refusal, another homeserver, or a failed request is False: the check is an extra, never a condition of capture.
- `prev_events(client, event_id, known)` is the event's `prev_events` from `/_synapse/admin/v1/fetch_event/{id}`
  (the event as the server stores it), or None when it cannot be had (the caller then checks nothing). A parent
  the bot does not know (`known(id)` False) that is one of the events Synapse never shows clients
  (`org.matrix.dummy_event`, sent to merge forward extremities) is replaced by its own parents, up to
  `DUMMY_DEPTH` steps: it hides nothing, so it must not look like a hole.

Used by the source at the seams where a hole can hide: the first event of a room's timeline after a reconnect or
a `limited` sync, and the first event of each backfilled gap (one request each; none in a steady stream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote

import aiohttp
import orjson

from bridge.sources.matrix.client import RawKeepingClient

__all__ = ["DUMMY_DEPTH", "is_admin", "prev_events"]

DUMMY = "org.matrix.dummy_event"
DUMMY_DEPTH = 3

log = logging.getLogger(__name__)


async def _get(client: RawKeepingClient, path: str) -> object | None:
    headers = {"Authorization": f"Bearer {client.access_token}"}
    try:
        response = await client.send("GET", path, headers=headers, timeout=30)
        async with response:
            if response.status != 200:
                return None
            body: object = orjson.loads(await response.read())
            return body
    except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
        log.info("admin API request failed", extra={"error": type(exc).__name__})
        return None


async def is_admin(client: RawKeepingClient) -> bool:
    body = await _get(client, f"/_synapse/admin/v1/users/{quote(str(client.user_id))}/admin")
    return isinstance(body, dict) and body.get("admin") is True


async def _fetch(client: RawKeepingClient, event_id: str) -> tuple[object, tuple[str, ...]] | None:
    body = await _get(client, f"/_synapse/admin/v1/fetch_event/{quote(event_id)}")
    event = body.get("event") if isinstance(body, dict) else None
    prev = event.get("prev_events") if isinstance(event, dict) else None
    if not isinstance(event, dict) or not isinstance(prev, list):
        return None
    return event.get("type"), tuple(p for p in prev if isinstance(p, str))


async def prev_events(client: RawKeepingClient, event_id: str, known: Callable[[str], bool]) -> tuple[str, ...] | None:
    fetched = await _fetch(client, event_id)
    if fetched is None:
        return None
    parents = list(fetched[1])
    for _ in range(DUMMY_DEPTH):
        resolved: list[str] = []
        changed = False
        for parent in parents:
            hidden = None if known(parent) else await _fetch(client, parent)
            if hidden is not None and hidden[0] == DUMMY:
                resolved.extend(hidden[1])
                changed = True
            else:
                resolved.append(parent)
        parents = list(dict.fromkeys(resolved))
        if not changed:
            break
    return tuple(parents)
