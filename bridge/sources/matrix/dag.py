"""An event's `prev_events`, which the client-server API does not hand out, through Synapse's admin API (I/O).

Contract:
- `is_admin(client)` is True when the bot's account may use Synapse's admin API (`/users/{self}/admin`); any
  refusal, another homeserver, or a failed request is False: the check is an extra, never a condition of capture.
- `prev_events(client, event_id)` is the event's `prev_events` from `/_synapse/admin/v1/fetch_event/{id}` (the
  event as the server stores it), or None when it cannot be had (the caller then checks nothing).

Used by the source at the seams where a hole can hide: the first event of a room's timeline after a reconnect or
a `limited` sync, and the first event of each backfilled gap (one request each; none in a steady stream).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import aiohttp
import orjson

from bridge.sources.matrix.client import RawKeepingClient

__all__ = ["is_admin", "prev_events"]

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


async def prev_events(client: RawKeepingClient, event_id: str) -> tuple[str, ...] | None:
    body = await _get(client, f"/_synapse/admin/v1/fetch_event/{quote(event_id)}")
    event = body.get("event") if isinstance(body, dict) else None
    prev = event.get("prev_events") if isinstance(event, dict) else None
    if not isinstance(prev, list):
        return None
    return tuple(p for p in prev if isinstance(p, str))
