"""A Synapse with Chatarchief's archiver module loaded, and the archive bot running against it.

`module_synapse` (one per test module: the module config names fixed users) starts a `SynapseServer` with
`archiver_module_config(ARCHIVER, officials=OFFICIALS, admins=ADMINS)` and registers those users. `login(...)`
gives a fresh E2EE nio client (an `Official`) for one of them; `ArchiveBot` runs a real `MatrixSource` as the
archiver into a `RecordingSink`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, AsyncClientConfig

from bridge.dev.synapse import SynapseServer, archiver_module_config
from bridge.sources.matrix import MatrixSource, MatrixSourceConfig
from tests.support.officials import Official, ok, poll_until, unique_name
from tests.support.sinks import RecordingSink

ARCHIVER = "@archiver:localhost"
OFFICIALS = ("@minister:localhost", "@secretary:localhost")
ADMINS = ("@archadmin:localhost",)
OUTSIDERS = ("@outsider:localhost",)


def password(user_id: str) -> str:
    return f"pw-{user_id[1:].split(':')[0]}"


@pytest.fixture(scope="module")
def module_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    config = archiver_module_config(ARCHIVER, officials=OFFICIALS, admins=ADMINS)
    server = SynapseServer(tmp_path_factory.mktemp("module-synapse"), archiver_module=config)
    server.start()
    try:
        for user_id in (ARCHIVER, *OFFICIALS, *ADMINS, *OUTSIDERS):
            server.register_user(user_id[1:].split(":")[0], password(user_id))
        yield server
    finally:
        server.stop()


async def login(server: SynapseServer, user_id: str, store_root: Path) -> Official:
    """A new device of `user_id` (E2EE, own store), synced once."""
    store = store_root / unique_name(user_id[1:].split(":")[0])
    store.mkdir(parents=True)
    client = AsyncClient(
        server.url,
        user_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False, max_timeouts=3),
    )
    ok(await client.login(password=password(user_id), device_name="test-device"))
    person = Official(user_id, password(user_id), client)
    await person.sync()
    return person


class _Blobs:
    async def put(self, data: bytes, media_type: str | None) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        return digest, digest


def archiver_config(homeserver: str, workdir: Path, device_name: str, **extra: Any) -> MatrixSourceConfig:
    """The archiver's `MatrixSource` config for the tests' Synapse (its password file written 0600 in `workdir`),
    with short sync timeouts and backoff; `extra`: further fields (a spool, ...)."""
    password_file = workdir / "archiver.password"
    password_file.write_text(password(ARCHIVER))
    password_file.chmod(0o600)
    return MatrixSourceConfig(
        homeserver=homeserver,
        store_dir=workdir / "bot-store",
        pickle_key=b"test-pickle-key-from-key-material",
        user_id=ARCHIVER,
        password_file=password_file,
        device_name=device_name,
        sync_timeout_ms=2_000,
        backoff_initial=0.2,
        backoff_max=1.0,
        **extra,
    )


@dataclass
class ArchiveBot:
    """The archiver's MatrixSource with no allowed inviters: only the module brings it into rooms."""

    server: SynapseServer
    workdir: Path
    sink: RecordingSink = field(default_factory=RecordingSink)
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    async def start(self) -> None:
        cfg = archiver_config(self.server.url, self.workdir, "chatarchief-test")
        stop = asyncio.Event()
        task = asyncio.create_task(MatrixSource(cfg, self.sink, _Blobs()).run(stop))
        self.running.append((stop, task))
        # Logged in with keys uploaded once it has committed its first sync.
        await poll_until(lambda: bool(self.sink.commits) or task.done(), timeout=30)
        if task.done():
            task.result()

    async def stop(self) -> None:
        while self.running:
            stop, task = self.running.pop()
            stop.set()
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def archive_bot(module_synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[ArchiveBot]:
    bot = ArchiveBot(module_synapse, tmp_path)
    try:
        yield bot
    finally:
        await bot.stop()
