"""A Synapse with Chatarchief's module writing a sealed spool, and the bot reading it into a real log.

`spool_synapse` (one per test module) starts a `SynapseServer` whose archiver module has `spool: {path,
public_key}` for a fresh X25519 key, and registers the fixed users of `tests.support.archiver_module`.
`SpoolBot` runs a real `MatrixSource` as the archiver against a real `LogStore` with the two cursors the app
wires (`matrix:` for the sync loop, `matrix-spool:` for the spool); `hold_sync` keeps the sync loop's commits
waiting (the spool alone can make events durable then). `frames()` opens the whole spool with the key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge.capture import LogSink
from bridge.dev.synapse import SYNAPSE_MODULE_DIR, SynapseServer, archiver_module_config
from bridge.events import Event
from bridge.log import keys as keyfile
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_events
from bridge.log.schema import initialise
from bridge.log.store import LogStore
from bridge.sources.matrix import MatrixSource
from bridge.sources.matrix.spool import HEADER, TRAILER, Frame, Position, files, read
from tests.support.archiver_module import (
    ADMINS,
    ARCHIVER,
    OFFICIALS,
    OUTSIDERS,
    _Blobs,
    archiver_config,
    login,
    password,
)
from tests.support.officials import Official, poll_until


@dataclass
class SpoolServer:
    server: SynapseServer
    spool_dir: Path
    key: X25519PrivateKey

    def frames(self) -> list[Frame]:
        frames, _ = read(self.spool_dir, Position(), self.key, limit=1_000_000)
        return frames

    def spool_bytes(self) -> bytes:
        if not self.spool_dir.exists():
            return b""
        return b"".join(p.read_bytes() for p in sorted(self.spool_dir.iterdir()))


@pytest.fixture(scope="module")
def spool_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpoolServer]:
    workdir = tmp_path_factory.mktemp("spool-synapse")
    key = X25519PrivateKey.generate()
    config = archiver_module_config(ARCHIVER, officials=OFFICIALS, admins=ADMINS)
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    config["config"]["spool"] = {"path": str(workdir / "spool"), "public_key": public}
    server = SynapseServer(workdir / "synapse", archiver_module=config)
    server.start()
    try:
        for user_id in (ARCHIVER, *OFFICIALS, *ADMINS, *OUTSIDERS):
            server.register_user(user_id[1:].split(":")[0], password(user_id))
        yield SpoolServer(server, workdir / "spool", key)
    finally:
        server.stop()


@pytest.fixture
async def minister(spool_synapse: SpoolServer, tmp_path: Path) -> AsyncIterator[Official]:
    """The first official, logged in on the spool's Synapse."""
    person = await login(spool_synapse.server, OFFICIALS[0], tmp_path / "people")
    try:
        yield person
    finally:
        await person.client.close()


class Held:
    """A Sink in front of the sync loop's LogSink whose commits wait while `gate` is clear."""

    def __init__(self, inner: LogSink, gate: asyncio.Event) -> None:
        self.inner, self.gate, self.calls = inner, gate, 0

    async def commit(self, events: Sequence[Event], cursor: str | None) -> None:
        self.calls += 1
        await self.gate.wait()
        await self.inner.commit(events, cursor)

    async def load_cursor(self) -> str | None:
        return await self.inner.load_cursor()


class Seen:
    """CaptureObserver: which event ids each writer (`matrix`, `matrix-spool`) offered the log."""

    def __init__(self) -> None:
        self.by_label: dict[str, list[str]] = {}

    def committed(self, label: str, events: Sequence[Event], appended: int, duplicates: int, durable_ms: int) -> None:
        self.by_label.setdefault(label, []).extend(e.event_id for e in events)

    def storage_failed(self, label: str, error: str) -> None:
        pass

    def storage_recovered(self, label: str) -> None:
        pass


@dataclass
class SpoolBot:
    spool: SpoolServer
    workdir: Path
    keys: KeyMaterial = field(default_factory=lambda: keyfile.generate(os.urandom(16)))
    seen: Seen = field(default_factory=Seen)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Where this bot reads a spool (default: the server's; an empty directory makes it a sync-loop-only bot).
    spool_dir: Path | None = None
    #: How long a spooled event may wait for the sync loop before it is questioned (`confirm`).
    confirm_seconds: float = 120.0
    _stack: contextlib.AsyncExitStack | None = None
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    async def start(self, *, hold_sync: bool = False) -> None:
        if not self.data_dir.exists():
            initialise(self.data_dir, self.keys, None)
        if hold_sync:
            self.gate.clear()
        else:
            self.gate.set()
        cfg = archiver_config(
            self.spool.server.url,
            self.workdir,
            "chatarchief-spool-test",
            spool_dir=self.spool_dir or self.spool.spool_dir,
            spool_key=self.spool.key,
            spool_confirm_seconds=self.confirm_seconds,
        )
        self._stack = contextlib.AsyncExitStack()
        store = await self._stack.enter_async_context(await LogStore.open(self.data_dir, self.keys))
        self._stop = asyncio.Event()
        sync_sink = Held(LogSink(store, f"matrix:{ARCHIVER}", observer=self.seen), self.gate)
        spool_sink = LogSink(store, f"matrix-spool:{ARCHIVER}", observer=self.seen)
        source = MatrixSource(cfg, sync_sink, _Blobs(), spool_sink)
        self._task = asyncio.create_task(source.run(self._stop))
        # Logged in once its first sync came back (committed, or waiting at the gate).
        await poll_until(lambda: sync_sink.calls > 0 or self._task is None or self._task.done(), timeout=30)
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self.gate.set()
            self._stop.set()
            await asyncio.wait_for(self._task, 20)
            self._task = None
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    def records(self) -> list[Event]:
        """Every event record of the log (read-only; the writer may be running)."""
        return [e for _, e in iter_events(self.data_dir, self.keys)]

    def count(self, event_id: str) -> int:
        return sum(1 for e in self.records() if e.event_id == event_id)

    async def wait_stored(self, event_ids: Sequence[str], timeout: float = 30) -> None:
        async def there() -> bool:
            stored = {e.event_id for e in await asyncio.to_thread(self.records)}
            return all(i in stored for i in event_ids)

        await poll_until(there, timeout=timeout, interval=0.1)


def frame_events(frames: Sequence[Frame]) -> list[dict[str, Any]]:
    return [f.event for f in frames if f.event is not None]


def append_frame(spool: SpoolServer, event: dict[str, Any]) -> tuple[str, int]:
    """What an insider with write access to the spool directory and the module's config (the public key) does:
    seal `event` and append it to the newest spool file, next in sequence; returns where (file, offset)."""
    sys.path.insert(0, str(SYNAPSE_MODULE_DIR))
    from chatarchief_synapse.spool import encode_frame

    name = files(spool.spool_dir)[-1]
    newest = spool.spool_dir / name
    data = newest.read_bytes()
    seq, at = 0, 0
    while at < len(data):  # walk the clear headers to the last frame's seq
        _, _, _, _, seq, _, length = HEADER.unpack_from(data, at)
        at += HEADER.size + length + TRAILER.size
    with newest.open("ab") as fh:
        fh.write(encode_frame(spool.key.public_key(), seq + 1, int(time.time() * 1000), orjson.dumps(event)))
    return name, at
