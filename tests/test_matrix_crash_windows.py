"""The bot's Matrix device killed inside nio's own crypto bookkeeping must not lose room keys.

Found by `test_fault_crash` in CI (one run in several): 100 encrypted messages — one
sender's whole Megolm session — stayed undecryptable after random SIGKILLs. nio
writes its crypto store in several separate steps and a kill between them leaves
a state no replay can repair:

1. Key upload: nio generates one-time keys in memory, uploads them and saves the
   account only when the server's answer is handled. Killed in between, the
   server hands out one-time keys whose private halves are gone: a sender that
   claims one builds an Olm session the bot can never open, and the room key it
   carries is lost (and the restarted device's fresh keys reuse the same key ids,
   which the server refuses).
2. A to-device room key: nio saves the account (one-time key used up) and the
   Olm session, then the Megolm session, each on its own. Killed before the last,
   the replayed sync cannot decrypt the Olm message again (its message key is
   spent) and the room key is lost.

Each test kills the bot's client at exactly that point (an exception raised from
nio's next step, the process's memory then dropped), restarts it from its store
and has the sender's message decrypted. Real Synapse, real nio clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClientConfig, KeysUploadResponse, MegolmEvent, RoomMessageText

from bridge.dev.synapse import SynapseServer
from bridge.sources.matrix.client import LeanStore, RawKeepingClient
from tests.support.officials import OfficialFactory, ok, unique_name

pytestmark = pytest.mark.synapse


class Killed(Exception):
    """The process dies here: nothing after this point runs, memory is gone."""


def _client(synapse: SynapseServer, user_id: str, store: Path) -> RawKeepingClient:
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False, max_timeouts=1, store=LeanStore)
    return RawKeepingClient(synapse.url, user_id, store_path=str(store), config=config)


async def _restart(old: RawKeepingClient, synapse: SynapseServer, store: Path) -> RawKeepingClient:
    """A new process on the same store: only what nio wrote to disk survives."""
    user_id, device_id, token = old.user_id, old.device_id, old.access_token
    await old.close()
    fresh = _client(synapse, user_id, store)
    fresh.restore_login(user_id, device_id, token)
    return fresh


async def _keys(client: RawKeepingClient) -> None:
    if client.should_upload_keys:
        ok(await client.keys_upload())
    if client.should_query_keys:
        ok(await client.keys_query())


async def _bot(synapse: SynapseServer, store: Path) -> RawKeepingClient:
    name = unique_name("windowbot")
    user_id, _ = await synapse.register_user_async(name, f"pw-{name}")
    store.mkdir(parents=True)
    client = _client(synapse, user_id, store)
    ok(await client.login(password=f"pw-{name}", device_name="archiver"))
    return client


async def _decrypted_texts(client: RawKeepingClient, room_id: str, since: str | None) -> tuple[list[str], int]:
    """Sync once from `since`; the room's decrypted texts and how many events stayed encrypted."""
    client.next_batch = since
    response = ok(await client.sync(timeout=0, since=since, full_state=since is None))
    timeline = response.rooms.join[room_id].timeline.events if room_id in response.rooms.join else []
    texts = [e.body for e in timeline if isinstance(e, RoomMessageText)]
    return texts, sum(isinstance(e, MegolmEvent) for e in timeline)


async def test_killed_between_key_upload_and_saving_the_account_keeps_every_one_time_key(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Killed after the server took the one-time keys, before nio handled the answer: the restarted device
    still holds every private half the server hands out, so the first room key sent to it decrypts."""
    store = tmp_path / "bot-store"
    bot = await _bot(synapse, store)
    original = bot.receive_response

    async def dies_on_upload_answer(response: Any) -> None:
        if isinstance(response, KeysUploadResponse):
            raise Killed
        await original(response)

    bot.receive_response = dies_on_upload_answer  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await bot.keys_upload()
    bot = await _restart(bot, synapse, store)
    await _keys(bot)  # the restarted device uploads again: the server must accept it

    alice = await official("alice")
    room = await alice.create_room(encrypted=True, invite=[bot.user_id])
    ok(await bot.join(room))
    await alice.wait_member(room, bot.user_id)
    await alice.send_text(room, "eerste bericht na de herstart")
    texts, encrypted = await _decrypted_texts(bot, room, None)
    await bot.close()
    assert texts == ["eerste bericht na de herstart"] and encrypted == 0


async def test_killed_while_nio_stores_a_room_key_replays_the_sync_and_decrypts(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Killed between nio's separate writes for one to-device room key (account and Olm session saved,
    Megolm session not yet): the sync token was not advanced, the restarted bot replays the sync and
    decrypts."""
    dies_before = "save_inbound_group_session"
    store = tmp_path / "bot-store"
    bot = await _bot(synapse, store)
    await _keys(bot)
    alice = await official("alice")
    room = await alice.create_room(encrypted=True, invite=[bot.user_id])
    ok(await bot.join(room))
    first = ok(await bot.sync(timeout=0, full_state=True))
    await _keys(bot)
    await alice.wait_member(room, bot.user_id)
    await alice.send_text(room, "vertrouwelijk")

    store_object = bot.store
    assert store_object is not None
    write = getattr(store_object, dies_before)

    def dies(*args: Any, **kwargs: Any) -> None:
        raise Killed

    setattr(store_object, dies_before, dies)
    with pytest.raises(Killed):
        await bot.sync(timeout=0, since=first.next_batch)
    setattr(store_object, dies_before, write)
    bot = await _restart(bot, synapse, store)

    texts, encrypted = await _decrypted_texts(bot, room, first.next_batch)
    await bot.close()
    assert texts == ["vertrouwelijk"] and encrypted == 0
