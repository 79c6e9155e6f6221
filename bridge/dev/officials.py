"""Officials for the demo and the integration tests: real nio clients with E2EE on a dev Synapse.

An `Official` is a registered user with a logged-in `AsyncClient` (own crypto
store). Its helpers do by hand what `sync_forever` would: sync, then key
upload/query/claim and to-device sending, so encrypted sends reach every device
of the room. Senders ignore unverified devices, as an Element user would after
accepting the warning. Development/demo code: not used by the bot itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, ErrorResponse

from bridge.dev.synapse import DevServerError, SynapseServer

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A user name not used before in this session (the server is shared)."""
    return f"{prefix}{os.getpid()}x{next(_counter)}x{time.monotonic_ns() % 100000}"


def ok(response: Any) -> Any:
    """Raise on a nio ErrorResponse (nio returns errors, it does not raise)."""
    if isinstance(response, ErrorResponse):
        raise DevServerError(f"matrix call failed: {response}")
    return response


async def poll_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0, interval: float = 0.05
) -> None:
    """Wait until `predicate()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise DevServerError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Official:
    user_id: str
    password: str
    client: AsyncClient

    async def sync(self, timeout_ms: int = 0) -> Any:
        """One sync plus the key work `sync_forever` would do after it; returns the sync response."""
        response = ok(await self.client.sync(timeout=timeout_ms, full_state=self.client.next_batch is None))
        await self.keys()
        return response

    async def keys(self) -> None:
        c = self.client
        if c.should_upload_keys:
            ok(await c.keys_upload())
        if c.should_query_keys:
            ok(await c.keys_query())
        if c.should_claim_keys:
            ok(await c.keys_claim(c.get_users_for_key_claiming()))
        for response in await c.send_to_device_messages():
            ok(response)

    async def create_room(self, *, encrypted: bool, invite: list[str] | None = None, name: str = "") -> str:
        initial_state = []
        if encrypted:
            initial_state.append(
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            )
        response = ok(
            await self.client.room_create(name=name or None, invite=invite or [], initial_state=initial_state)
        )
        await self.sync()
        return str(response.room_id)

    async def wait_member(self, room_id: str, user_id: str, timeout: float = 20.0) -> None:
        """Sync until `user_id` is joined in our view of the room (so keys get shared with it)."""

        async def joined() -> bool:
            await self.sync()
            room = self.client.rooms.get(room_id)
            return room is not None and user_id in room.users and user_id not in room.invited_users

        await poll_until(joined, timeout)

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        response = ok(await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True))
        return str(response.event_id)

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": body})


OfficialFactory = Callable[..., Awaitable[Official]]


async def make_official(
    synapse: SynapseServer, store_root: Path, prefix: str = "official", name: str | None = None
) -> Official:
    """Register a fresh user (`name`, or a unique one) and log in a nio client with E2EE and its own store."""
    name = name or unique_name(prefix)
    password = f"pw-{name}"
    user_id, _ = await synapse.register_user_async(name, password)
    store = store_root / name
    store.mkdir(parents=True)
    client = AsyncClient(
        synapse.url,
        user_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False, max_timeouts=3),
    )
    ok(await client.login(password=password, device_name=f"{prefix}-device"))
    official = Official(user_id, password, client)
    await official.sync()
    return official
