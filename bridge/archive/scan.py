"""Pass 2's per-record work (authenticate, decrypt, decompress, parse, write the line), inline or in processes.

`snapshot`'s record pass turns each record of the range into an `Item`: its
leaf and what its line needs. Most events are *plain* (a message: no
withhold decision touches it, no edit/deletion target, no room name, no
notice, no stored attachment), and for those the whole line is made here;
every other event is handed on as a `Fallback` (its record and, inline, its
parsed `Event`) for the package writer to run `derive.event_line` on, in
record order, because it changes per-dossier state (edits, names, media) or
the liveness listing. The writer applies items strictly in record order, so
the package is the same byte for byte whether items come from `items` in this
process or from `Scanner` worker processes.

What the writer applies is a `Frame` per chunk (`chunk_frame`, `frames` inline): the chunk's leaves and their
lines of proof/leaves.txt as two byte strings, the plain lines of each dossier joined into one `Run` (cut at
every fallback, so each dossier's lines keep record order), the fallbacks, and the other records' lines: a
few objects per chunk instead of one per record, to pickle, unpickle and apply. Each payload is decoded
once (`orjson`); `lean_plain` recognises the common plain Matrix message on the decoded object, anything
else is built into an `Event` and goes through `is_plain` (a property test pins that the two agree).

`Scanner` splits the range into chunks of `CHUNK` records handed round-robin
to `n` fresh interpreters (a plain subprocess, like the renderers': a
multiprocessing pool would import the CLI in each), each reading its chunks
from the log itself (SQLite allows concurrent readers) and sending back one
pickled frame per chunk over its stdout; the writer reads the frames in chunk
order, so at most a chunk per worker is in flight and memory stays flat. The
key material goes to a worker only over its stdin pipe, never on a command
line, in the environment or in a file; workers write no files.

Errors are the sequential pass's, in the same order: a worker checks the
hash chain of its first record against the *stored* leaf before it (which the
previous chunk has checked against the recomputed one before this chunk's
frame is read), reads on past its chunk's end so a missing record at a chunk
edge is reported as it is inline, and sends a `LogIntegrityError` back as its
fields, with the frame of the chunk's records before it; the writer raises the
first failing chunk's error only after those and every earlier chunk were
applied (the inline frames carry the error object itself: the same order).
"""

from __future__ import annotations

import contextlib
import fcntl
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bridge import helper_process
from bridge.archive import derive, proof
from bridge.archive.gaps import LIVENESS_SOURCE
from bridge.errors import Check, LogIntegrityError
from bridge.events import ENCODING_VERSION, MATRIX, SIGNAL, EncodingError, Event, Kind, event_from_bytes
from bridge.log import format, merkle
from bridge.log.keys import KeyMaterial
from bridge.log.view import LogView, RangeRecord
from bridge.policy import Withheld, withheld_for

CHUNK = 1024  # records per frame a worker sends
#: Ranges shorter than this are scanned inline: starting an interpreter and opening the log costs about as much.
PARALLEL_MIN_RECORDS = 16_384
PIPE_BYTES = 1 << 20  # a worker's stdout pipe, so it can run about a frame ahead (Linux; best effort)

#: Content key of a line in proof/other-records.jsonl, per record type.
OTHER_KEYS = {
    format.RecordType.DECISION: "decision",
    format.RecordType.KEY: "key",
    format.RecordType.BLOB: "blob",
    format.RecordType.SIGNING_KEY: "signing_key",
}

Withholding = Mapping[tuple[str, str, str], Withheld]


class Plain(NamedTuple):
    """An event whose line is made: only its dossier and its line are left to the writer."""

    seq: int
    leaf: bytes
    tag: bytes
    source: str
    conversation: str
    line: bytes


class Fallback(NamedTuple):
    """An event the writer runs `derive.event_line` on (`event` is None when it came from a worker)."""

    seq: int
    leaf: bytes
    tag: bytes
    record: RangeRecord
    event: Event | None


class Other(NamedTuple):
    """A record that is not an event: its line of proof/other-records.jsonl."""

    seq: int
    leaf: bytes
    line: bytes


Item = Plain | Fallback | Other


def parse_event(rec: RangeRecord) -> Event:
    """The event an authenticated EVENT record holds (`verify` checks that every one decodes)."""
    try:
        return event_from_bytes(rec.payload)
    except EncodingError as exc:
        raise LogIntegrityError(rec.seq, f"decrypted payload is not an event: {exc}", check=Check.PAYLOAD) from None


def is_plain(event: Event, withheld: Withholding) -> bool:
    """True when `derive.event_line` would change no state for `event` and give it a line without files: no
    withhold decision, no notice (the liveness listing), no edit/deletion target, no room or group name, not
    the archiver's own dossier, no stored attachment. Conservative: anything else goes to the writer."""
    if withheld and withheld_for(event, withheld) is not None:
        return False
    if event.kind == Kind.NOTICE or derive.text_of(event.relates_to) is not None:
        return False
    if (event.kind == Kind.STATE or event.source == SIGNAL) and derive.room_name(event):
        return False
    return event.source != LIVENESS_SOURCE and not derive.stored_attachments(event)


def item_of(rec: RangeRecord, withheld: Withholding) -> Item:
    if rec.header.type != format.RecordType.EVENT:
        key = OTHER_KEYS[rec.header.type]
        line = proof.content_line(key, rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None)
        return Other(rec.seq, rec.leaf, line)
    event = parse_event(rec)
    tag = rec.header.conversation_tag
    if is_plain(event, withheld):
        line = proof.content_line(
            "event", rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None
        )  # what derive.event_line gives a plain event (no files)
        return Plain(rec.seq, rec.leaf, tag, str(event.source), str(event.conversation), line)
    return Fallback(rec.seq, rec.leaf, tag, rec, event)


def items(view: LogView, start: int, end: int, withheld: Withholding) -> Iterator[Item]:
    """The range's items in this process, in record order."""
    for rec in view.records(start, end, view.leaf_before(start)):
        yield item_of(rec, withheld)


def frames(view: LogView, start: int, end: int, withheld: Withholding) -> Iterator[Frame]:
    """The range's frames in this process, in record order (fallbacks keep their parsed events); the chain is
    checked across chunks from each frame's last recomputed leaf. Stops after a frame with an error."""
    prev = view.leaf_before(start)
    for a, b in chunks(start, end):
        frame = chunk_frame(view, a, b, end, withheld, prev, keep_events=True)
        yield frame
        if frame.error is not None or not frame.leaves:
            return
        prev = frame.leaves[-32:]


def chunk_items(
    view: LogView, start: int, stop: int, end: int, withheld: Withholding, prev_leaf: bytes | None
) -> list[Item]:
    """The items of [start, stop), read as the sequential pass reads them (on towards `end`, so a missing
    record at `stop` is found as it is inline), chain checked from `prev_leaf`."""
    out: list[Item] = []
    if start >= stop:
        return out
    for rec in view.records(start, end, prev_leaf):
        item = item_of(rec, withheld)
        out.append(item if type(item) is not Fallback else item._replace(event=None))
        if rec.seq == stop - 1:
            break
    return out


# -- frames: what the package writer applies, a chunk at a time ------------------------------------


class Run(NamedTuple):
    """Consecutive plain lines of one dossier (in record order; other dossiers' lines may lie between them)."""

    tag: bytes
    source: str
    conversation: str
    lines: bytes
    lines_n: int


class Others(NamedTuple):
    """Lines of proof/other-records.jsonl, in record order."""

    lines: bytes
    lines_n: int


Entry = Run | Fallback | Others


class Frame(NamedTuple):
    """A chunk of the range as the writer applies it: its leaves (32 bytes each, record order) and their lines of
    proof/leaves.txt, then its entries; a dossier's lines keep their record order (runs are cut at every
    fallback). `error`: what stopped the chunk, raised by the writer once the entries before it are applied
    (as the sequential pass would, record by record)."""

    leaves: bytes
    leaf_lines: bytes
    entries: list[Entry]
    error: LogIntegrityError | None
    #: The leaves as aligned perfect subtrees with their roots (`pieces_of`): the writer grows the frontier a
    #: piece at a time, the hashing below them done here (in the workers, in parallel).
    pieces: list[Piece]


#: The keys `Event.from_json` requires (a payload lacking one is refused there, so the lean path leaves it).
_EVENT_KEYS = frozenset(
    ("v", "source", "conversation", "event_id", "kind", "sender", "sent_at", "received_at", "content", "relates_to",
     "attachments", "raw", "problem")
)  # fmt: skip


def lean_plain(d: object) -> tuple[str, str] | None:
    """(source, conversation) when the decoded payload `d` is an event `Event.from_json` accepts and `is_plain`
    holds for it with no withholding: a Matrix message, no attachment, relating to nothing. None for anything
    else (which then takes the general path: `Event.from_json` and `is_plain`)."""
    if type(d) is not dict or d.get("kind") != "message" or d.get("relates_to") is not None:
        return None
    source, conversation = d.get("source"), d.get("conversation")
    if source != MATRIX or type(source) is not str or type(conversation) is not str or not conversation:
        return None
    if d.get("attachments") != [] or not d.get("event_id") or d.get("v") != ENCODING_VERSION:
        return None
    return (source, conversation) if d.keys() >= _EVENT_KEYS else None


def chunk_frame(
    view: LogView,
    start: int,
    stop: int,
    end: int,
    withheld: Withholding,
    prev_leaf: bytes | None,
    keep_events: bool = False,
) -> Frame:
    """The frame of [start, stop): the records read as `chunk_items` reads them, each payload decoded once.
    `keep_events`: fallbacks carry their parsed `Event` (inline; a worker sends None, the writer parses)."""
    leaves: list[bytes] = []
    entries: list[Entry] = []
    runs: dict[bytes, tuple[str, str, list[bytes]]] = {}
    other_lines: list[bytes] = []
    error: LogIntegrityError | None = None
    event_type = format.RecordType.EVENT
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    append_leaf = leaves.append

    def flush() -> None:
        for tag, (source, conversation, lines) in runs.items():
            entries.append(Run(tag, source, conversation, b"".join(lines), len(lines)))
        runs.clear()

    try:
        if start < stop:
            for rec in view.records(start, end, prev_leaf):
                seq, leaf = rec.seq, rec.leaf
                append_leaf(leaf)
                if rec.header.type != event_type:
                    key = OTHER_KEYS[rec.header.type]
                    other_lines.append(
                        proof.content_line(key, seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None)
                    )
                else:
                    try:
                        d = loads(rec.payload)
                    except decode_error:
                        d = None
                    lean = None if withheld else lean_plain(d)
                    if lean is None:
                        event = parse_event(rec) if type(d) is not dict else _event_of(rec.seq, d)
                        if is_plain(event, withheld):
                            lean = (str(event.source), str(event.conversation))
                        else:
                            flush()
                            entries.append(
                                Fallback(seq, leaf, rec.header.conversation_tag, rec, event if keep_events else None)
                            )
                    if lean is not None:
                        line = proof.content_line(
                            "event", seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None
                        )  # what derive.event_line gives a plain event (no files)
                        tag = rec.header.conversation_tag
                        run = runs.get(tag)
                        if run is None:
                            runs[tag] = (lean[0], lean[1], [line])
                        else:
                            run[2].append(line)
                if seq == stop - 1:
                    break
    except LogIntegrityError as exc:
        error = exc
    flush()
    if other_lines:
        entries.append(Others(b"".join(other_lines), len(other_lines)))
    joined = b"".join(leaves)
    lines = b"".join(leaf.hex().encode("ascii") + b"\n" for leaf in leaves)
    return Frame(joined, lines, entries, error, pieces_of(start, joined))


def _event_of(seq: int, d: dict[str, Any]) -> Event:
    """`parse_event` of a payload already decoded to `d` (a JSON object): the same event, the same error."""
    try:
        return Event.from_json(d)
    except EncodingError as exc:
        raise LogIntegrityError(seq, f"decrypted payload is not an event: {exc}", check=Check.PAYLOAD) from None


# -- workers --------------------------------------------------------------------------------------


def chunks(start: int, end: int, size: int | None = None) -> list[tuple[int, int]]:
    """[start, end) cut at the multiples of `size` (default `CHUNK`): every chunk but the first and the last is
    aligned, so its leaves are one perfect subtree of the log's tree when `size` is a power of two."""
    step = CHUNK if size is None else size
    out: list[tuple[int, int]] = []
    a = start
    while a < end:
        b = min((a // step + 1) * step, end)
        out.append((a, b))
        a = b
    return out


# -- the Merkle tree a chunk at a time ----------------------------------------------------------------

#: A perfect subtree of the log's tree: (first leaf, number of leaves (a power of two), root).
Piece = tuple[int, int, bytes]


def aligned_pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) as the fewest perfect subtrees of the log's tree, left to right: (first leaf, size), each size
    a power of two dividing its first leaf (how a frontier grows: what `append_piece` takes)."""
    out: list[tuple[int, int]] = []
    while lo < hi:
        size = lo & -lo if lo else 1 << ((hi - lo).bit_length() - 1)
        while lo + size > hi:
            size >>= 1
        out.append((lo, size))
        lo += size
    return out


def pieces_of(start: int, leaves: bytes) -> list[Piece]:
    """The aligned pieces of the leaves (32 bytes each) from `start`, each with its root (RFC 9162 MTH)."""
    out: list[Piece] = []
    for lo, size in aligned_pieces(start, start + len(leaves) // 32):
        i = (lo - start) * 32
        out.append((lo, size, merkle.root([leaves[j : j + 32] for j in range(i, i + size * 32, 32)])))
    return out


def append_piece(frontier: merkle.Frontier, piece: Piece) -> merkle.Frontier:
    """The frontier with the piece's leaves appended (the piece starts at the frontier's size; its size divides
    it): the same frontier as appending them one by one, since the merges below the piece's level are inside
    it."""
    lo, size, root = piece
    if lo != frontier.size or lo % size or size & (size - 1):
        raise ValueError(f"piece [{lo}, {lo + size}) does not extend a frontier of size {frontier.size}")
    hashes = list(frontier.hashes)
    node, n = root, lo // size
    while n & 1:
        node = merkle.node_hash(hashes.pop(), node)
        n >>= 1
    hashes.append(node)
    return merkle.Frontier.from_hashes(lo + size, hashes)


def frontier_pieces(frontier: merkle.Frontier) -> list[Piece]:
    """A frontier's subtrees as pieces (left to right)."""
    out: list[Piece] = []
    lo = 0
    for bit in reversed(range(frontier.size.bit_length())):
        if frontier.size >> bit & 1:
            out.append((lo, 1 << bit, frontier.hashes[len(out)]))
            lo += 1 << bit
    return out


def range_root(pieces: Sequence[Piece], lo: int, hi: int) -> bytes | None:
    """MTH of leaves [lo, hi) from the pieces (sorted, disjoint) that tile it, None when they do not (the range
    lies inside a piece or is not covered). [lo, hi) must be a node of a tree over the log (a consistency
    proof's range is one): then `lo` is a multiple of every piece size inside it, and the pieces grow a
    frontier of their own from 0."""
    inside = [pc for pc in pieces if pc[0] >= lo and pc[0] + pc[1] <= hi]
    if sum(pc[1] for pc in inside) != hi - lo:
        return None
    frontier = merkle.Frontier()
    for first, size, root in inside:
        frontier = append_piece(frontier, (first - lo, size, root))
    return frontier.root()


class Scanner:
    """`n` worker processes giving the items of [start, end) chunk by chunk, in record order (`__iter__`)."""

    def __init__(self, view: LogView, data_dir: Path, start: int, end: int, withheld: Withholding, n: int) -> None:
        self._chunks = chunks(start, end)
        n = max(1, min(n, len(self._chunks)))
        # The stored leaf before each chunk: its first record's chain link (checked by the previous chunk).
        prevs = [view.leaf_before(a) for a, _ in self._chunks]
        keys = view.keys
        secret = (keys.log_id, keys.kek, keys.verifier.public_bytes(Encoding.Raw, PublicFormat.Raw))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stderr: list[helper_process.StderrTail] = []
        try:
            for w in range(n):
                mine = [(a, b, prevs[i]) for i, (a, b) in enumerate(self._chunks) if i % n == w]
                job = pickle.dumps((str(data_dir), secret, mine, end, dict(withheld)))
                self._procs.append(_start(job, self._stderr))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Frame]:
        n = len(self._procs)
        for i in range(len(self._chunks)):
            proc = self._procs[i % n]
            assert proc.stdout is not None
            try:
                kind, body = pickle.load(proc.stdout)  # noqa: S301  (our own child, over its private pipe)
            except EOFError:
                proc.wait()
                raise RuntimeError(
                    f"a record-pass process failed (exit {proc.returncode}): {self._stderr[i % n].last()}"
                ) from None
            if kind != "frame":
                raise RuntimeError(f"a record-pass process failed: {body}")
            frame, error = body
            if error is not None:
                seq, reason, expected, found, check = error
                yield frame._replace(error=LogIntegrityError(seq, reason, expected, found, check=Check(check)))
                return
            yield frame

    def close(self) -> None:
        _stop(self._procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """End the workers (killed if still running: the caller stopped early) and close their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _start(job: bytes, stderr: list[helper_process.StderrTail], entry: str = "worker_main") -> subprocess.Popen[bytes]:
    proc = helper_process.start("bridge.archive.scan", entry)
    assert proc.stdin is not None and proc.stdout is not None
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the system's limit: the default works
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    stderr.append(helper_process.StderrTail(proc))
    proc.stdin.write(job)
    proc.stdin.close()
    return proc


def worker_main() -> None:
    """A record-pass process: job in (pickled, stdin), one `Frame` per chunk out (pickled, stdout; a frame's
    error as its fields, and none after it)."""
    data_dir, secret, mine, end, withheld = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (parent's pipe)
    log_id, kek, public = secret
    keys = KeyMaterial(log_id, kek, Ed25519PublicKey.from_public_bytes(public), None)
    out = sys.stdout.buffer
    try:
        with LogView(Path(data_dir), keys) as view:
            for start, stop, prev in mine:
                frame = chunk_frame(view, start, stop, end, withheld, prev)
                exc = frame.error
                error = None if exc is None else (exc.seq, exc.reason, exc.expected, exc.found, str(exc.check))
                out.write(pickle.dumps(("frame", (frame._replace(error=None), error)), pickle.HIGHEST_PROTOCOL))
                out.flush()
                if exc is not None:
                    break
    except LogIntegrityError as exc:  # opening the log: the writer raises it as the first chunk's error
        error = (exc.seq, exc.reason, exc.expected, exc.found, str(exc.check))
        out.write(pickle.dumps(("frame", (Frame(b"", b"", [], None, []), error))))
    except Exception as exc:  # reported to the parent, which raises it
        out.write(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
    out.flush()


# -- verify-package: the dossiers' lines --------------------------------------------------------------

#: A line of a dossier proven plain in a worker: (seq, leaf, appended_ms, conversation tag, source, conversation).
PlainLine = tuple[int, bytes, int, bytes, str, str]
FRAME_LINES = 4096  # lines per frame a dossier worker sends


def plain_line(line: bytes, withheld: Withholding) -> PlainLine | None:
    """What `verify-package` needs of a dossier line that is a plain event and exactly the line the package
    writer gives for it (then re-deriving it changes no state); None for any other line, which the verifier
    then checks itself, line by line, with its own code (so its errors and their order are its own)."""
    try:
        rec = proof.parse_line(line)
        if rec.key != "event":
            return None
        event = Event.from_json(rec.content or {})
    except (proof.LineError, EncodingError):
        return None
    if not is_plain(event, withheld):
        return None
    want = proof.content_line("event", rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None)
    if line != want:
        return None
    h = rec.header
    return (rec.seq, rec.leaf, h.appended_ms, h.conversation_tag, str(event.source), str(event.conversation))


class DossierScanner:
    """`n` worker processes reading dossiers' events.jsonl: for each path (in the order given) its lines, each
    a `PlainLine` or the raw line; `None` for a dossier the worker could not read (the verifier reads it)."""

    def __init__(self, paths: list[Path], withheld: Withholding, n: int, limit: int) -> None:
        self._n = n = max(1, min(n, len(paths)))
        self._count = len(paths)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stderr: list[helper_process.StderrTail] = []
        try:
            for w in range(n):
                mine = [str(p) for i, p in enumerate(paths) if i % n == w]
                job = pickle.dumps((mine, dict(withheld), limit, FRAME_LINES))
                self._procs.append(_start(job, self._stderr, "dossier_main"))
        except BaseException:
            self.close()
            raise

    def lines(self, i: int, own: Callable[[], Iterator[tuple[int, bytes]]]) -> Iterator[tuple[int, PlainLine | bytes]]:
        """(line number, line) of dossier `i`, a line proven plain as its `PlainLine`; call for i = 0, 1, ... in
        order, consuming each before the next. From where a worker could not read on (a missing file, a line
        over the limit) the lines are `own()`'s, the verifier's own reading, so it finds what is wrong itself."""
        w = i % self._n
        number = 0
        while (frame := self._frame(w)) is not None:
            if not frame:
                return
            for item in frame:
                number += 1
                yield number, item
        for k, line in own():
            if k > number:
                yield k, line

    def _frame(self, w: int) -> list[PlainLine | bytes] | None:
        proc = self._procs[w]
        assert proc.stdout is not None
        try:
            kind, body = pickle.load(proc.stdout)  # noqa: S301  (our own child, over its private pipe)
        except EOFError:
            proc.wait()
            raise RuntimeError(
                f"a dossier-reading process failed (exit {proc.returncode}): {self._stderr[w].last()}"
            ) from None
        if kind == "unread":
            return None
        lines: list[PlainLine | bytes] = body
        return lines  # an empty frame ends the dossier

    def close(self) -> None:
        _stop(self._procs)


def dossier_main() -> None:
    """A dossier-reading process: (paths, withheld, line limit, lines per frame) in; per dossier its frames
    out, then an empty one, or ("unread", None) where it cannot read on (the verifier reads the rest itself)."""
    from bridge.archive.verify_package import iter_lines

    paths, withheld, limit, frame_lines = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (parent's pipe)
    out = sys.stdout.buffer
    for path in paths:
        frame: list[PlainLine | bytes] = []
        try:
            for _, line in iter_lines(Path(path), path, limit):
                got = plain_line(line, withheld)
                frame.append(line if got is None else got)
                if len(frame) == frame_lines:
                    out.write(pickle.dumps(("lines", frame), pickle.HIGHEST_PROTOCOL))
                    frame = []
        except Exception:  # a missing file, a line over the limit: the verifier reads on itself and says why
            out.write(pickle.dumps(("unread", None)))
        else:
            if frame:
                out.write(pickle.dumps(("lines", frame), pickle.HIGHEST_PROTOCOL))
            out.write(pickle.dumps(("lines", []), pickle.HIGHEST_PROTOCOL))
        out.flush()
