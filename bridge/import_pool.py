"""The writer's side of `chatarchief import`'s worker processes (`bridge.import_worker`): start them, read their
presealed batches in file order, preseal a share itself.

Contract. `WorkerPool.start(path, index_key, source, batch, workers, head)` starts `workers` processes that each
read the whole input file themselves (the operator named it; nothing is written to disk), cut it into the
same batches as the in-process import (`cut`), and for batch k, if k % workers is theirs, normalise each
line, encode it canonically, and compute what does not depend on the record's place in the log
(`preseal`): the dedup and conversation tags (keyed with the index key) and `format.prepare_plaintext`
(fresh salt, commitment, zstd frame). `WorkerPool.batches()` yields them in file order. The writer keeps
everything bound to the log's order: the dedup decision, seq, the header, AES-GCM (its associated data
binds seq and the previous leaf), the leaf and the commit (`LogStore.append_presealed`).

Secrets. The worker gets the index key only (never a data key or the KEK), through its stdin pipe, with
the input's path and its options: nothing on its command line or in its environment. The input is read
by the worker; the plaintext crosses only the pipe from worker to writer.

Failure. A worker that dies (killed, out of memory, a bug) closes its pipe: `batches()` raises
`ImportWorkerError` naming its exit status, after the batches it delivered complete. The caller has
committed only whole batches, and a re-run counts those as duplicates. The caller stops the workers on
any exit (`close`). Ctrl-C reaches the workers too (same process group); they end without a traceback
and the parent reports the interrupt.

Sharing the work. The writer has CPU to spare beside one worker (sealing and SQLite cost less per event
than normalising and compressing), so the parent takes part of the pure stage itself, with the same
`preseal`: the first `HEAD_BATCHES` batches, cut from the file while the workers start (the workers skip
them), and the lines it asks a worker for while it waits: when the writer is about to wait for a worker's
next frame, it writes one byte on that worker's stdin (at most `MAX_ASKED` unanswered), and the worker
leaves the last `batch // SHARE_PARTS` lines of the next batch it has not started raw, per request, and
sends the rest presealed with them ("split" frame; a batch left wholly raw is a "lines" frame). So the split
follows the two sides' speeds on the machine as it is (another process's load included), and the writer
never asks while it has work queued. The records are the same whoever preseals a line.

Why a part of a batch and not a whole one: the batches are sealed and committed in file order, so while the
writer preseals a batch of its own (~60-90 ms for 4096 lines beside the worker) the commit before it ends
and the SQLite thread has nothing to do until it is done (timelines at 10^5: ~40 ms idle, 6-7 times); a
quarter of a batch is presealed while the commit before it still runs.

The frames on the pipes and what a worker does: `bridge.import_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bridge.clock import now_ms
from bridge.errors import ChatarchiefError, UsageError
from bridge.import_worker import LENGTH_BYTES, YIELD_EVERY, Encoder, Tally, cut, preseal, pure_encoder
from bridge.log import format

#: Seconds to wait for a worker to exit once its pipe is closed, before it is killed.
EXIT_WAIT_SECONDS = 5.0
#: The frames' pipe size (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default). Why not the default
#: 64 KiB: the reader is a thread of the writer's process, and it needs the GIL after every read(2) while the
#: event loop holds it for up to the switch interval (5 ms) at a time; with 64 KiB reads a 1.5 MB batch took
#: ~24 of those waits and the worker stalled on its full pipe (no overlap at all: 51 us/event, the sum of both).
PIPE_BYTES = 1 << 20
#: Frames queued ahead of the writer (each ~2.7 MB once loaded), besides the one the reading task holds
#: until there is room: the worker goes on while the writer preseals a batch of its own or waits for a
#: commit, instead of stalling on its full pipe. More costs memory (peak RSS, flat in the file's size)
#: without a measurable gain on two cores.
READ_AHEAD = 1
#: Batches the writer preseals itself at the start, while the workers start up (they skip them): a worker's
#: first frame came ~0.1 s after its start (0.07-0.25 s on a loaded machine), about two batches of presealing
#: (~47 ms each, `bench/ingest.py`'s events); with one the writer waited ~50 ms for it (10^5 events, 4
#: alternating rounds: 12.9 against 13.6 us/event median).
HEAD_BATCHES = 2
#: glibc's allocator settings in a worker's environment (where the operator has not set them): blocks under
#: 64 MiB come from the heap, and the heap keeps up to 256 MiB free at its top. Why: each ~2.7 MB frame the
#: worker builds (and each batch of lines) was a fresh mmap or a regrown heap, its pages faulted and zeroed
#: anew: ~122k page faults per 10^6 events, 0.55-0.8 s of the worker's system time; with these ~7k and
#: 0.3 s (bench/ingest.py's 10^6 import). A worker's heap holds a few frames (tens of MB) at most, whatever the
#: file's size. Other allocators ignore the names; nothing secret is in a worker's environment.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
#: A request asks for the last `batch // SHARE_PARTS` lines of a batch raw ("Sharing the work" above).
SHARE_PARTS = 4
#: Requests to one worker not yet answered, at most: with one the writer took a part of every other batch
#: only (a request made while the worker presealed a batch is answered by the batch after it).
MAX_ASKED = 2
#: The frames that carry a batch (`bridge.import_worker`): presealed, raw lines, or presealed but for its last lines.
_BATCH_FRAMES = frozenset({"batch", "lines", "split"})
#: One request on a worker's stdin: "send the last `batch // SHARE_PARTS` lines of your next batch raw" (the
#: worker counts bytes: a test sends several at once).
_REQUEST = b"\x01"
# The worker's entry: the parent's sys.path first (so it imports the same `bridge`), from the config frame
# on stdin; -I below keeps PYTHONPATH and the user's site out of it.
# Ctrl-C reaches the workers too (same process group): they end without a traceback, the parent reports it.
# The config is read from fd 0 with exact reads (no buffered reader: the request bytes that follow it on
# the same pipe must stay in the pipe for `import_worker._Requests`).
_BOOT = """import signal;signal.signal(signal.SIGINT,signal.SIG_DFL)
import marshal,os,sys
def r(n):
    b=b''
    while len(b)<n:
        c=os.read(0,n-len(b))
        if not c: sys.exit(1)
        b+=c
    return b
c=marshal.loads(r(int.from_bytes(r(8),'big')));sys.path[:0]=c.pop('sys_path')
import bridge.import_worker as w;sys.exit(w.serve(c))"""


class ImportWorkerError(ChatarchiefError):
    """An import worker died or broke its protocol (exit 1): the batches before are committed."""


@dataclass(frozen=True, slots=True)
class WorkerBatch:
    """One batch from a worker: where the file was after it, and its columns for `LogStore.append_presealed`."""

    read: int
    full: bool
    unknown: int
    presealed: format.Presealed


async def preseal_yielding(
    encode: Encoder, lines: list[bytes], received: int, index_key: bytes, source: str, conv_tags: dict[str, bytes]
) -> tuple[int, list[str], list[str], list[bytes], list[bytes], bytes, list[bytes], list[bytes]]:
    """`preseal` on the writer's event loop, `YIELD_EVERY` lines at a time, yielding between the slices.

    Why: the batches before are waiting for the loop to hand their statements to SQLite's thread (each
    aiosqlite call is a hop back to the loop); one 4096-line preseal would leave SQLite idle for its whole
    length."""
    unknown, versions = 0, bytearray()
    convs: list[str] = []
    ids: list[str] = []
    tags: list[bytes] = []
    ctags: list[bytes] = []
    commits: list[bytes] = []
    plaintexts: list[bytes] = []
    for start in range(0, len(lines), YIELD_EVERY):
        part = preseal(encode, lines[start : start + YIELD_EVERY], received, index_key, source, conv_tags)
        unknown += part[0]
        convs += part[1]
        ids += part[2]
        tags += part[3]
        ctags += part[4]
        versions += part[5]
        commits += part[6]
        plaintexts += part[7]
        await asyncio.sleep(0)
    return unknown, convs, ids, tags, ctags, bytes(versions), commits, plaintexts


def _read_frame(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next frame, None at a clean end of the pipe; raises EOFError for a frame cut short."""
    head = stream.read(LENGTH_BYTES)
    if not head:
        return None
    if len(head) < LENGTH_BYTES:
        raise EOFError("frame length cut short")
    size = int.from_bytes(head, "big")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("frame cut short")
    frame = marshal.loads(body)  # noqa: S302  # our own child's frames: str, bytes, int (see the module docstring)
    if not isinstance(frame, tuple) or not frame or not isinstance(frame[0], str):
        raise ValueError("not a frame")
    return frame


def _lines(k: int, lines: object) -> list[bytes]:
    """A frame's raw lines, checked: a non-empty list of bytes."""
    if not isinstance(lines, list) or not lines or not all(type(line) is bytes for line in lines):
        raise ImportWorkerError(f"import worker sent a malformed batch {k}")
    return lines


def _joined(first: format.Presealed, then: format.Presealed) -> format.Presealed:
    """One batch's columns from those of its first lines and of the lines after them."""
    return format.Presealed(
        first.source,
        first.conversations + then.conversations,
        first.event_ids + then.event_ids,
        first.tags + then.tags,
        first.conversation_tags + then.conversation_tags,
        first.versions + then.versions,
        first.commitments + then.commitments,
        first.plaintexts + then.plaintexts,
    )


#: A frame read ahead (None: the pipe ended), or the failure that stopped the reading.
_Queued = tuple[tuple[Any, ...] | None, BaseException | None]


class WorkerPool:
    """Import workers for one file; use `async with await WorkerPool.start(...) as pool`."""

    def __init__(
        self,
        procs: list[subprocess.Popen[bytes]],
        source: str,
        *,
        path: Path,
        index_key: bytes,
        batch: int,
        head: int,
    ) -> None:
        self._procs = procs
        self._source = source
        self._path = path
        self._index_key = index_key
        self._batch_size = batch
        self._head = head
        self._encode: Encoder | None = None
        self._conv_tags: dict[str, bytes] = {}
        self._asked = [0] * len(procs)
        self._share = max(1, batch // SHARE_PARTS)
        self._pump: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Queued] | None = None
        self._closing = False
        #: Lines, blank lines and bytes read of the whole file, once every worker has ended.
        self.tally: Tally | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @classmethod
    def start(
        cls, path: Path, index_key: bytes, source: str, batch: int, workers: int, head: int | None = None
    ) -> WorkerPool:
        """Start the workers and hand each its options and the index key over its stdin pipe (fork and exec
        take a few ms: not worth a thread); the pipe stays open for the writer's requests."""
        head = HEAD_BATCHES if head is None else head
        procs: list[subprocess.Popen[bytes]] = []
        config: dict[str, Any] = {
            "sys_path": list(sys.path),
            "file": str(path.absolute()),
            "index_key": index_key,
            "source": source,
            "batch": batch,
            "count": workers,
            "head": head,
            "share": max(1, batch // SHARE_PARTS),
        }
        env = {**WORKER_MALLOC_ENV, **os.environ}
        try:
            for index in range(workers):
                proc = subprocess.Popen(  # our own interpreter and entry, no operator input
                    [sys.executable, "-I", "-c", _BOOT],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    pipesize=PIPE_BYTES,
                    env=env,
                )
                procs.append(proc)
                assert proc.stdin is not None
                data = marshal.dumps({**config, "index": index})
                proc.stdin.write(len(data).to_bytes(LENGTH_BYTES, "big") + data)
                proc.stdin.flush()
        except BaseException:
            for proc in procs:
                proc.kill()
                proc.wait()
                if proc.stdin is not None:
                    proc.stdin.close()
            raise
        return cls(procs, source, path=path, index_key=index_key, batch=batch, head=head)

    async def batches(self) -> AsyncIterator[WorkerBatch]:
        """The batches in file order: the first `head` presealed here while the workers start, then batch k
        from worker k % n (or presealed here from its lines, when this process asked for it), up to
        `READ_AHEAD` of them queued (and one more held by the reading task) while the caller works."""
        count, k = len(self._procs), self._head
        self._queue = queue = asyncio.Queue[_Queued](READ_AHEAD)
        self._pump = asyncio.create_task(self._read_ahead(queue, k))
        if self._head:
            async for batch in self._head_batches():
                yield batch
        while True:
            if queue.empty():  # the writer is about to wait: ask for the batch after the one under way
                self._ask(k % count)
            frame, error = await queue.get()
            if error is not None:
                raise error
            if frame is not None and frame[0] in _BATCH_FRAMES:
                k += 1
                yield await self._batch_of(k - 1, (k - 1) % count, frame)
                continue
            end = await self._end(k % count, frame)
            for other in range(1, count):  # every other worker must have ended at the same place
                if await self._end((k + other) % count, await self._next((k + other) % count)) != end:
                    raise ImportWorkerError("the import workers disagree on the file's length (was it changed?)")
            self.tally = Tally(*end)
            return

    async def _read_ahead(self, queue: asyncio.Queue[_Queued], k: int) -> None:
        """Frames k, k+1, ... (worker k % n each) into `queue` until one is not a batch; a failure is queued
        after the frames before it (the caller commits those first), then the reading stops."""
        count = len(self._procs)
        while not self._closing:
            try:
                frame = await self._next(k % count)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # ImportWorkerError, or KeyboardInterrupt for a worker Ctrl-C ended
                await queue.put((None, exc))
                return
            await queue.put((frame, None))
            if frame is None or frame[0] not in _BATCH_FRAMES:
                return
            k += 1

    async def _head_batches(self) -> AsyncIterator[WorkerBatch]:
        tally = Tally()
        for k, lines in enumerate(cut(self._path, self._batch_size, tally)):
            presealed = await self._preseal_here(lines)
            yield WorkerBatch(tally.read, len(lines) >= self._batch_size, presealed[0], presealed[1])
            if k + 1 >= self._head:
                return

    async def _preseal_here(self, lines: list[bytes]) -> tuple[int, format.Presealed]:
        if self._encode is None:
            self._encode = pure_encoder()
        unknown, convs, ids, tags, ctags, versions, commits, plaintexts = await preseal_yielding(
            self._encode, lines, now_ms(), self._index_key, self._source, self._conv_tags
        )
        return unknown, format.Presealed(self._source, convs, ids, tags, ctags, versions, commits, plaintexts)

    def _ask(self, index: int) -> None:
        """One request to worker `index` (at most `MAX_ASKED` outstanding); a worker that is gone is reported by
        the read of its pipe, not here."""
        proc = self._procs[index]
        if self._asked[index] >= MAX_ASKED or proc.stdin is None:
            return
        try:
            proc.stdin.write(_REQUEST)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return
        self._asked[index] += 1

    def _answered(self, index: int, lines: int) -> None:
        """`lines` raw lines came from worker `index`: the requests they answer are no longer outstanding."""
        self._asked[index] = max(0, self._asked[index] - -(-lines // self._share))

    async def _batch_of(self, k: int, index: int, frame: tuple[Any, ...]) -> WorkerBatch:
        if frame[0] == "batch":
            return self._batch(k, frame)
        if frame[0] == "split":  # presealed but for its last lines, which this process preseals
            batch, tail = self._batch(k, frame[:-1]), _lines(k, frame[-1])
            self._answered(index, len(tail))
            unknown, rest = await self._preseal_here(tail)
            return WorkerBatch(batch.read, batch.full, batch.unknown + unknown, _joined(batch.presealed, rest))
        try:
            read, full, lines = frame[1:]
        except ValueError:
            raise ImportWorkerError(f"import worker sent a malformed batch {k}") from None
        if type(read) is not int or type(full) is not bool:
            raise ImportWorkerError(f"import worker sent a malformed batch {k}")
        lines = _lines(k, lines)
        self._answered(index, len(lines))
        unknown, presealed = await self._preseal_here(lines)
        return WorkerBatch(read, full, unknown, presealed)

    async def _next(self, index: int) -> tuple[Any, ...] | None:
        proc = self._procs[index]
        assert proc.stdout is not None
        try:
            return await asyncio.to_thread(_read_frame, proc.stdout)
        except (EOFError, ValueError, TypeError) as exc:
            raise await self._died(index, f"sent a broken frame ({exc})") from None

    def _batch(self, k: int, frame: tuple[Any, ...]) -> WorkerBatch:
        """The frame as a batch, its columns checked for shape (a bug would otherwise surface mid-seal)."""
        try:
            read, full, unknown, *columns = frame[1:]
            batch = WorkerBatch(read, full, unknown, format.Presealed(self._source, *columns))
        except (TypeError, ValueError):
            raise ImportWorkerError(f"import worker sent a malformed batch {k}") from None
        c = batch.presealed
        lengths = {len(col) for col in (c.conversations, c.event_ids, c.tags, c.conversation_tags, c.versions,
                                        c.commitments, c.plaintexts)}  # fmt: skip
        if lengths == {0} or len(lengths) != 1:
            raise ImportWorkerError(f"import worker sent a malformed batch {k}")
        return batch

    async def _end(self, index: int, frame: tuple[Any, ...] | None) -> tuple[int, int, int]:
        if frame is None:
            raise await self._died(index, "ended before the end of the file")
        if frame[0] == "error" and len(frame) == 2:
            raise UsageError(str(frame[1]))
        if frame[0] != "end" or len(frame) != 4:
            raise ImportWorkerError(f"import worker {self._procs[index].pid} sent {frame[0]!r} out of turn")
        return int(frame[1]), int(frame[2]), int(frame[3])

    async def _died(self, index: int, what: str) -> ImportWorkerError:
        proc = self._procs[index]
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, EXIT_WAIT_SECONDS)
        code = proc.returncode
        if code == -signal.SIGINT:  # Ctrl-C reached the worker first: the operator's interrupt, not a failure
            raise KeyboardInterrupt
        how = (
            "still running"
            if code is None
            else f"killed by signal {-code}"
            if code < 0
            else f"exit status {code}; its error, if any, is above"
        )
        return ImportWorkerError(
            f"the import worker (pid {proc.pid}) {what} ({how}). The batches before it are committed; run the"
            " import again: what the log already holds is counted as duplicates"
        )

    async def close(self) -> None:
        """Stop every worker still running and reap them (idempotent). After a complete file they have
        sent everything and are exiting: they get a moment first."""
        if self.tally is not None:
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, EXIT_WAIT_SECONDS)
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if self._pump is not None:  # its read ends now (the pipe's writer is gone); its queue is emptied
            self._closing = True
            while not self._pump.done():
                while self._queue is not None and not self._queue.empty():
                    self._queue.get_nowait()
                await asyncio.wait({self._pump}, timeout=0.05)
            with contextlib.suppress(BaseException):
                self._pump.result()
            self._pump = self._queue = None
        for proc in self._procs:
            await asyncio.to_thread(proc.wait)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
