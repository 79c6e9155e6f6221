"""Dedup lookups on their own read connection and thread (the writer's helper; no writes), and the writer's
in-memory filter of the tags the log holds.

Why: the writer's aiosqlite connection has one thread, so a lookup queued there
waits for the previous batch's commit (insert + fsync) to finish, and sealing
the next batch can never overlap a commit. This reader runs on its own
connection (WAL: readers do not block the writer, nor it them) and its own
thread, so the lookup runs while the commit does, and sqlite releases the GIL
for both.

Contract: `existing(tags)` returns the tags among `tags` that a committed
record holds. A batch committing while the lookup runs may or may not be seen;
the writer covers that window with its set of tags in flight (see
`LogStore._prepare`). The connection is `query_only`: it cannot write.

Schema 3 keeps a tag unique within its epoch of seq only (`schema.EPOCH_BITS`:
inserts stay in the current epoch's corner of the index, so a commit no longer
rewrites pages all over one random-order index). A lookup that had to probe
every epoch for every tag would grow with the log again, so the writer keeps
`TagFilter`, a Bloom filter of every tag the log holds (loaded from the index
one epoch at a time in the background after open, then fed each tag it seals): a tag the filter has never seen is not
in the log (no false negatives: this is what makes skipping the probe safe),
and only the filter's hits (real duplicates, and under 1 in 500 others) are
probed in every epoch (`existing(tags, last_epoch)`).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bridge.errors import StorageError
from bridge.log.db import EPOCH_BITS

T = TypeVar("T")

#: Tags per `IN (...)` query (SQLite's variable limit is 32766 since 3.32; smaller keeps each statement cheap).
CHUNK = 1000


#: Whether 16-byte tags are probed from their bytes read as native 32-bit words (`_words`): where those are
#: little-endian and 4 bytes, words 0, 1, 2 of a tag are the probes `int.from_bytes(tag, "little")` gives.
_NATIVE_WORDS = sys.byteorder == "little" and struct.calcsize("I") == 4
_TAG16 = frozenset({16})


def _words(tags: Sequence[bytes]) -> memoryview | None:
    """Four 32-bit words per tag (`_NATIVE_WORDS`), when every tag is 16 bytes (the log's tags, `schema.dedup_tag`),
    else None (the int path). Why: reading the probes as small ints costs less than a 128-bit int and its shifts
    (`hits` at 10^6 tags, five parts, alone: 0.99 -> 0.68 us per tag)."""
    if not _NATIVE_WORDS or not set(map(len, tags)) <= _TAG16:
        return None
    return memoryview(b"".join(tags)).cast("I")


class TagFilter:
    """A scalable Bloom filter of dedup tags: `tag in f` is False only for a tag never `add`ed.

    32 bits per tag (rounded up to a power of two) and 3 probes: about 1 false hit in 1,400 lookups or better.
    Each part holds up to its capacity; when it is full a part of twice the size is added, so the false-hit
    rate stays put however far the log grows (memory: 4-8 bytes per tag, 4-8 MB at 10^6 records). The log's
    tags are keyed BLAKE2b outputs of 16 bytes (`schema.dedup_tag`; random to anyone without the index key),
    so their own bits give the three 32-bit probe positions (so would a 32-byte keyed tag); a tag of another
    length is hashed first.
    `hits` and `update` take a batch (one call per batch: this runs for every new tag, at open for every
    tag of the log).
    """

    BITS_PER_TAG = 32
    MIN_CAPACITY = 1 << 16
    #: A part added while tags are expected (`expect`) holds at most this many times the one before.
    GROWTH_LIMIT = 8
    #: Tag lengths whose own bytes are the probe word (at least 96 bits of keyed-MAC output).
    RAW_LENGTHS = frozenset({16, 32})

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._parts: list[tuple[bytearray, int, int]] = []  # (bits, mask, capacity)
        self._count = 0  # tags in the newest part
        self._added = 0  # tags added to the parts before the newest
        self._target = 0  # tags expected in all (`expect`): sizes the next part
        self._add_part(max(capacity, 1))

    def _add_part(self, capacity: int) -> None:
        bits = 1 << min(32, max(16, (capacity * self.BITS_PER_TAG - 1).bit_length()))
        self._parts.append((bytearray(bits // 8), bits - 1, capacity))
        self._count = 0

    def expect(self, more: int) -> None:
        """About `more` tags are still to come (a hint: `LogStore.expect`, from an import's bytes left to read).
        The part added when the newest is full is then sized for them (with an eighth to spare; at least half
        the newest's capacity, at most `GROWTH_LIMIT` times it) instead of twice the newest's capacity, so a
        large import ends with a few parts to probe instead of one per doubling (`hits` probes every part:
        10^6 tags from an empty log, three parts instead of five). Memory is what the tags need, or less than
        doubling gives; a wrong hint costs memory or an extra part, never a false negative."""
        self._target = self._added + self._count + max(0, more)

    def _next_capacity(self, capacity: int) -> int:
        left = self._target - self._added
        if left <= 0:
            return 2 * capacity
        return max(capacity // 2, min(left + left // 8, self.GROWTH_LIMIT * capacity))

    @staticmethod
    def _word(tag: bytes) -> int:
        """The probe word of a tag that is not 16 bytes (a 32-byte tag as it is, any other hashed first)."""
        if len(tag) in TagFilter.RAW_LENGTHS:
            return int.from_bytes(tag, "little")
        return int.from_bytes(hashlib.blake2b(tag, digest_size=32).digest(), "little")

    def add(self, tag: bytes) -> None:
        self.update((tag,))

    def update(self, tags: Iterable[bytes]) -> None:
        bits, mask, capacity = self._parts[-1]
        count = self._count
        for a, b, c, _ in self._probes(tags):
            if count >= capacity:
                self._added += count
                self._add_part(self._next_capacity(capacity))
                bits, mask, capacity = self._parts[-1]
                count = 0
            count += 1
            a, b, c = a & mask, b & mask, c & mask
            bits[a >> 3] |= 1 << (a & 7)
            bits[b >> 3] |= 1 << (b & 7)
            bits[c >> 3] |= 1 << (c & 7)
        self._count = count

    def hits(self, tags: Iterable[bytes]) -> list[bytes]:
        """`[t for t in tags if t in self]`: the tags the filter may hold (every tag it was given among them)."""
        tags = tags if isinstance(tags, list | tuple) else list(tags)
        out: list[bytes] = []
        parts = self._parts
        for tag, (a, b, c, _) in zip(tags, self._probes(tags), strict=True):
            for bits, mask, _ in parts:  # the first probe rules most tags out: the other two only then
                x = a & mask
                if bits[x >> 3] >> (x & 7) & 1:
                    y = b & mask
                    if bits[y >> 3] >> (y & 7) & 1:
                        z = c & mask
                        if bits[z >> 3] >> (z & 7) & 1:
                            out.append(tag)
                            break
        return out

    def _probes(self, tags: Iterable[bytes]) -> Iterator[tuple[int, int, int, int]]:
        """Each tag's probe words, unmasked: its 32-bit words 0, 1, 2 (and a fourth, unused), read from the bytes
        of 16-byte tags (`_words`), else the low bits of `_word` and its shifts."""
        tags = tags if isinstance(tags, list | tuple) else list(tags)
        words = _words(tags)
        if words is None:
            return ((w, w >> 32, w >> 64, 0) for w in map(self._word, tags))
        it = iter(words)
        return zip(it, it, it, it, strict=True)

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, bytes) and bool(self.hits((tag,)))


class DedupReader:
    """`async with await DedupReader.open(path) as r: found = await r.existing(tags)`."""

    def __init__(self, pool: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._pool = pool
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> DedupReader:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatarchief-dedup")
        try:
            conn = await _run(pool, lambda: _connect(path))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(pool, conn)

    async def existing(self, tags: Sequence[bytes], last_epoch: int) -> set[bytes]:
        """The tags among `tags` a committed record holds, probing every epoch 0..`last_epoch`."""
        if not tags:
            return set()
        return await _run(self._pool, lambda: _lookup(self._conn, tags, last_epoch))

    async def epoch_tags(self, epoch: int) -> list[bytes]:
        """Every tag of one epoch (a range of the dedup index, not of the records)."""
        return await _run(self._pool, lambda: _epoch_tags(self._conn, epoch))

    async def close(self) -> None:
        try:
            await _run(self._pool, self._conn.close)
        finally:
            self._pool.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def epochs_sql(last_epoch: int) -> str:
    """`seq >> EPOCH_BITS IN (0, ..., last_epoch)`: the index's epoch column, every value (one seek each)."""
    return f"seq >> {EPOCH_BITS} IN ({','.join(str(e) for e in range(last_epoch + 1))})"


def _lookup(conn: sqlite3.Connection, tags: Sequence[bytes], last_epoch: int) -> set[bytes]:
    found: set[bytes] = set()
    ordered = sorted(set(tags))  # probes in index order: neighbouring pages stay cached
    epochs = epochs_sql(last_epoch)
    for i in range(0, len(ordered), CHUNK):
        chunk = ordered[i : i + CHUNK]
        sql = f"SELECT dedup FROM records WHERE {epochs} AND dedup IN ({','.join('?' * len(chunk))})"  # noqa: S608
        found.update(bytes(r[0]) for r in conn.execute(sql, chunk))
    return found


def _epoch_tags(conn: sqlite3.Connection, epoch: int) -> list[bytes]:
    sql = f"SELECT dedup FROM records WHERE seq >> {EPOCH_BITS} = ?"  # noqa: S608 - a constant
    return [as_tag(r[0]) for r in conn.execute(sql, (epoch,))]


def as_tag(value: object) -> bytes:
    """A stored dedup value as bytes (a value of another SQL type, i.e. damage `verify` names, still counts)."""
    return bytes(value) if isinstance(value, bytes | memoryview) else repr(value).encode()


async def _run(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the log's dedup index: {exc}") from exc
