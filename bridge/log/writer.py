"""One door for every command that writes a log: the local store, or the running bot's.

Contract: `async with open_writer(data_dir, keys, policy) as w` takes the data
dir's writer lock and gives the local `LogStore` when no process holds it (as
before); when `chatarchief run` holds it, gives a proxy that hands each call to
that bot over its control socket (`bridge.log.control`), so operators never stop
capture to import, withhold, rotate a key or seal a month. Both offer the same
narrow `Writer` API. When the lock is held by something that is not a bot (an
import in progress), the writer is refused with `WriterBusy` naming its PID
(exit 2). `seal_at` is the synchronous month-end seal the archive calls;
`seal_in_loop` is the same inside `run`, on the bot's own store.

A data dir writable by group or others is refused (anyone who can replace
files there can replace the log or the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

from bridge.errors import UsageError
from bridge.log import format
from bridge.log import keys as keyfile
from bridge.log.control import ControlClient
from bridge.log.keys import KeyMaterial
from bridge.log.lock import WriterBusy
from bridge.log.store import AppendResult, CheckpointPolicy, LogStore

Entry = tuple[format.RecordType, str, str, str, bytes]

#: How long to wait for a bot that holds the lock but is not listening yet (it is starting up).
CONNECT_WAIT_SECONDS = 5.0


class Appender(Protocol):
    """Enough to append and seal: what `import` and `withhold` need (a `LogStore` is one too)."""

    @property
    def keys(self) -> KeyMaterial: ...

    async def append_records(self, entries: Sequence[Entry]) -> AppendResult: ...

    async def checkpoint(self) -> str: ...


class Writer(Appender, Protocol):
    """What a command may do to the log. The local store and the bot proxy both do it."""

    @property
    def remote_pid(self) -> int | None:
        """The PID of the running bot doing the writes, or None when this process writes itself."""
        ...

    async def rotate_data_key(self) -> int: ...

    async def rotate_signing_key(self, key_file: Path) -> tuple[int, str]:
        """Hand signing over to the key in `key_file` (an absolute path: a running bot loads it itself):
        (rotation record's position, new verifier key)."""
        ...

    async def seal_prefix(self, size: int) -> str: ...


def check_private_dir(path: Path, what: str = "data dir") -> None:
    """Refuse a directory group or others may write (UsageError, exit 2)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # the caller reports a missing log or key file in its own words
    if stat.S_ISDIR(mode) and mode & 0o022:
        raise UsageError(
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}: group or others may write it;"
            f" fix with `chmod go-w {path}`"
        )


class LocalWriter:
    """This process holds the writer lock and writes through its own `LogStore`."""

    remote_pid: int | None = None

    def __init__(self, store: LogStore) -> None:
        self.store = store

    @property
    def keys(self) -> KeyMaterial:
        return self.store.keys

    async def append_records(self, entries: Sequence[Entry]) -> AppendResult:
        return await self.store.append_records(entries)

    async def checkpoint(self) -> str:
        return await self.store.checkpoint()

    async def rotate_data_key(self) -> int:
        return await self.store.rotate_data_key()

    async def rotate_signing_key(self, key_file: Path) -> tuple[int, str]:
        return await self.store.rotate_signing_key(keyfile.load_signing_key(key_file, self.store.keys))

    async def seal_prefix(self, size: int) -> str:
        return await self.store.seal_prefix(size)


class RemoteWriter:
    """The running bot writes; every call is one or more control requests."""

    def __init__(self, client: ControlClient, keys: KeyMaterial, pid: int | None) -> None:
        self._client = client
        self._keys = keys
        self.remote_pid = pid

    @property
    def keys(self) -> KeyMaterial:
        return self._keys

    async def append_records(self, entries: Sequence[Entry]) -> AppendResult:
        return await self._client.append_records(entries)

    async def checkpoint(self) -> str:
        return str(await self._client.call("checkpoint"))

    async def rotate_data_key(self) -> int:
        return int(await self._client.call("rotate_key"))

    async def rotate_signing_key(self, key_file: Path) -> tuple[int, str]:
        reply = await self._client.call("rotate_signing_key", key_file=str(key_file))
        return int(reply["seq"]), str(reply["vkey"])

    async def seal_prefix(self, size: int) -> str:
        return str(await self._client.call("seal_prefix", size=size))


@contextlib.asynccontextmanager
async def open_writer(
    data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy | None = None
) -> AsyncIterator[Writer]:
    """The log's writer: this process (lock taken) or the running bot (over its control socket)."""
    check_private_dir(data_dir)
    try:
        store = await LogStore.open(data_dir, keys, policy)
    except WriterBusy as busy:
        client = await _connect_bot(data_dir, keys, busy)
        try:
            yield RemoteWriter(client, keys, client.bot_pid)
        finally:
            await client.close()
        return
    async with store:
        _ = keys.signing_key  # a writer signs: without the signing key, refuse before anything is appended
        yield LocalWriter(store)


async def _connect_bot(data_dir: Path, keys: KeyMaterial, busy: WriterBusy) -> ControlClient:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_WAIT_SECONDS
    while True:
        try:
            return await ControlClient.connect(data_dir, keys)
        except OSError:
            # No bot listening: the holder is another command, or a bot still starting up.
            if loop.time() >= deadline:
                raise busy from None
            await asyncio.sleep(0.1)


def seal_at(data_dir: Path, keys: KeyMaterial, size: int) -> str:
    """The signed checkpoint note at tree size `size`, via the running bot if there is one (sync).

    For the archive's `snapshot(..., seal=...)` outside `run`; must not be called
    from a thread that runs an event loop.
    """

    async def go() -> str:
        async with open_writer(data_dir, keys) as writer:
            return await writer.seal_prefix(size)

    return asyncio.run(go())


def seal_in_loop(store: LogStore, loop: asyncio.AbstractEventLoop) -> Callable[[int], str]:
    """`seal(size)` for a worker thread inside `run`: runs `store.seal_prefix` on the bot's loop and waits."""
    loop_thread = threading.get_ident() if loop.is_running() else None

    def seal(size: int) -> str:
        if threading.get_ident() == loop_thread:
            raise RuntimeError("seal_in_loop's callable must run in a worker thread, not on the event loop")
        return asyncio.run_coroutine_threadsafe(store.seal_prefix(size), loop).result()

    return seal
