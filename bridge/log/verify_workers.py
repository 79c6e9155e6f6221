"""The per-record half of `verify`, split over helper processes by sequence range.

A record's own checks depend on no other record except through its predecessor's leaf, and a record that
passes `check_stored` has a recomputed leaf equal to its stored one. So a helper can check records
`[start, end)` on its own, taking each record's `prev` from the stored leaf of the record before: wherever
that differs from the serial walk's `prev`, the serial walk has already failed at the record before. What a
helper does is the lean path only (`audit.quick_leaf` and `audit.QuickEvents`); every record it does not
accept is sent back by number ("slow") and the main process runs the full checks on it, in order, with the
state that spans records (key records, blobs, rotations). A helper also builds the Merkle subtree of its
range: ranges are aligned powers of two, so the main process joins the subtree roots into the tree
(`join`) and checks each checkpoint from the helper's frontier at that size. Anything unexpected in a range
(a gap, an exception) makes the main process check that range itself, serially: the first error and its
text are then the serial path's by construction.

Helpers are fresh interpreters (`python -I`) talking over their stdin and stdout (length-prefixed pickles of
plain values): the keys reach them only through that pipe, and no helper writes anything anywhere. A helper
that dies is reported as a `StorageError` naming its exit status, never waited for forever: its stdout
closes when it exits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from bridge import helper_process
from bridge.errors import StorageError
from bridge.log import audit, format, merkle

#: Records per range (a power of two: ranges are whole subtrees of the log's tree).
CHUNK = 1 << 14
#: Below this many records the log is checked in-process (starting helpers costs more than it saves).
PARALLEL_MIN = 4 * CHUNK
#: Records fetched per SQLite call.
FETCH = 2048
_ZERO = bytes(format.HASH_BYTES)
_LEN = struct.Struct(">I")


class RangeResult(NamedTuple):
    """What a helper found in `[start, end)`: the records it left to the main process, the kinds of the
    records it accepted, its subtree's frontier hashes at each requested size (relative to `start`) and at the
    end. `complete` is false when the range was not exactly records start..end-1 (the main process then
    checks it itself)."""

    complete: bool
    slow: list[int]
    kinds: dict[str, int]
    cuts: dict[int, list[bytes]]
    hashes: list[bytes]


def check_range(conn: Any, quick: audit.QuickEvents | None, start: int, end: int, cuts: Sequence[int]) -> RangeResult:
    """The lean checks of records `[start, end)` read through `conn` (see the module docstring)."""
    rows = conn.execute(
        "SELECT seq, dedup, header, commitment, body, leaf FROM records WHERE seq >= ? AND seq < ? ORDER BY seq",
        (max(start - 1, 0), end),
    )
    want = set(cuts)
    slow: list[int] = []
    kinds: dict[str, int] = {}
    at: dict[int, list[bytes]] = {}
    tree = merkle.Frontier()
    append = tree.append
    quick_leaf = audit.quick_leaf
    kind_of = quick.kind if quick is not None else None
    prev: object = format.GENESIS_PREV
    i = start - 1 if start else 0
    first = bool(start)
    while batch := rows.fetchmany(FETCH):
        for seq, dedup, header_b, commit, body, stored_leaf in batch:
            if seq != i or i >= end:
                return RangeResult(False, [], {}, {}, [])
            if first:  # the record before the range: only its stored leaf, the next record's `prev`
                first = False
                prev = stored_leaf
                i += 1
                continue
            leaf = b""
            if type(dedup) is bytes and type(prev) is bytes:
                leaf = quick_leaf(i, header_b, commit, body, stored_leaf, prev)
            kind = kind_of(header_b, commit, body, dedup) if leaf and kind_of is not None else ""
            if kind:
                kinds[kind] = kinds.get(kind, 0) + 1
            elif not leaf or kind_of is not None:
                slow.append(i)
                leaf = _leaf_or_zero(header_b, commit, body)
            append(leaf)
            prev = stored_leaf
            i += 1
            if i in want:
                at[i - start] = list(tree.hashes)
    if i != end or first:
        return RangeResult(False, [], {}, {}, [])
    return RangeResult(True, slow, kinds, at, list(tree.hashes))


def _leaf_or_zero(header_b: object, commit: object, body: object) -> bytes:
    """The leaf recomputed from the stored bytes, for the tree; a placeholder when a column is not bytes
    (the main process's full check of that record fails before the tree is read)."""
    blob = bytes | memoryview
    if isinstance(header_b, blob) and isinstance(commit, blob) and isinstance(body, blob):
        return format.leaf_of(bytes(header_b), bytes(commit), bytes(body))
    return _ZERO


def join(hashes: Sequence[bytes], size: int, sub: Sequence[bytes], sub_size: int) -> list[bytes]:
    """The frontier hashes of a tree of `size` leaves extended by a subtree of `sub_size` leaves whose own
    frontier is `sub`: `size` must be a multiple of a power of two >= `sub_size` (an aligned range).
    The same hashes `merkle.Frontier` gives after appending those leaves one by one."""
    out = list(hashes)
    if sub_size & (sub_size - 1) or not sub_size or size & (sub_size - 1) or len(sub) != 1:
        return out + list(sub)  # the subtree's bits are all below size's lowest set bit: no merge
    node, n = sub[0], size // sub_size
    while n & 1:
        node = merkle.node_hash(out.pop(), node)
        n >>= 1
    out.append(node)
    return out


def default_workers() -> int:
    """The processes verify may use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# -- the helper processes -----------------------------------------------------------------------------


def _send(fh: IO[bytes], value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_LEN.pack(len(data)) + data)
    fh.flush()


def _receive(fh: IO[bytes]) -> object:
    head = fh.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (n,) = _LEN.unpack(head)
    data = fh.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)  # noqa: S301  (our own parent or child, over its private pipe)


def helper_main() -> None:
    """A helper's loop: (data dir, secrets) first, then ranges until None (see the module docstring)."""
    from bridge.log.verify import open_readonly  # verify imports this module

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but results on the pipe
    data_dir, keys = cast(tuple[str, "tuple[bytes, bytes, dict[int, bytes]] | None"], _receive(stdin))
    quick = audit.QuickEvents(audit.Secrets(*keys)) if keys is not None else None
    conn = open_readonly(Path(data_dir))
    try:
        while (task := _receive(stdin)) is not None:
            start, end, cuts = cast(tuple[int, int, tuple[int, ...]], task)
            try:
                result: object = ("ok", tuple(check_range(conn, quick, start, end, cuts)))
            except Exception as exc:  # the main process checks the range itself and names it
                result = ("failed", f"{type(exc).__name__}: {exc}")
            _send(stdout, result)
    finally:
        conn.close()


class Helper:
    """One helper process; `submit` queues a range, `result` returns the oldest queued range's result (None
    when the helper could not check it: the caller checks it itself)."""

    def __init__(self, data_dir: Path, secrets: audit.Secrets | None) -> None:
        self._proc = helper_process.start("bridge.log.verify_workers", "helper_main")
        self._err = helper_process.StderrTail(self._proc)
        keys = None if secrets is None else (secrets.log_id, secrets.index_key, dict(secrets.data_keys))
        self._call(_send, (str(data_dir), keys))

    def submit(self, start: int, end: int, cuts: Sequence[int]) -> None:
        self._call(_send, (start, end, tuple(cuts)))

    def result(self) -> RangeResult | None:
        status, value = cast(tuple[str, Any], self._call(lambda fh, _: _receive(fh), None))
        if status != "ok":
            return None
        complete, slow, kinds, cuts, hashes = value
        return RangeResult(complete, slow, kinds, cuts, hashes)

    def _call(self, fn: Any, value: object) -> object:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            return fn(proc.stdout if value is None else proc.stdin, value)
        except (EOFError, BrokenPipeError, OSError, pickle.UnpicklingError):
            pass
        status = proc.wait()
        raise StorageError(
            f"a verify helper process died (exit status {status}): {self._err.last()}; run again, or with --workers 1"
        )

    def finish(self) -> None:
        """Tell the helper there is nothing more (it exits once its queued ranges are done)."""
        proc = self._proc
        try:
            if proc.poll() is None and proc.stdin is not None and not proc.stdin.closed:
                _send(proc.stdin, None)
                proc.stdin.close()
        except OSError:
            pass

    def stop(self, *, wait: bool = True) -> None:
        """Let the helper finish and exit (`wait`), or end it now (the walk failed: its queued ranges are moot)."""
        proc = self._proc
        if wait:
            self.finish()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._err.join(timeout=5)
        for fh in (proc.stdin, proc.stdout, proc.stderr):
            if fh is not None and not fh.closed:
                with contextlib.suppress(OSError):  # a pipe to a helper that is gone
                    fh.close()
