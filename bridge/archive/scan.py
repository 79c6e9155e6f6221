"""Pass 2 of `snapshot` (authenticate, decrypt, decompress, parse, make each record's line) and the reading of
a package's dossiers by `verify-package`: inline or in worker processes, the same result either way.

Frames
------
A range is cut into chunks of `CHUNK` records at the multiples of `CHUNK` (`chunks`), and each chunk read
into one `Frame` (`chunk_frame`): its records read as the sequential pass reads them (the hash chain checked
from the leaf before the chunk, on past the chunk's end so a missing record at its edge is found as inline),
each payload decoded once (`orjson`). A frame holds the chunk's leaves and their lines of proof/leaves.txt as
two byte strings, the leaves' aligned perfect subtrees with their roots (`merkle.subtrees_of`: the hashing
below them done where the frame is made), and its entries, in record order:

- a `Run`: consecutive plain lines of one dossier, joined. An event is *plain* when `derive.event_line` gives
  it the line `proof.content_line` makes and changes no state (`is_plain`: no withhold decision, no notice,
  no edit/deletion target, no room or group name, not the archiver's own, no stored attachment);
  `plain_by_fields` recognises the common plain message on the decoded object, anything else is built into
  an `Event` for `is_plain` (property tests pin that the two agree);
- a `Fallback`: any other event (its record and, inline, its parsed `Event`), for the package writer to run
  `derive.event_line` on, because it changes per-dossier state (edits, names, media) or the liveness
  listing. Runs are cut at every fallback, so each dossier's lines keep record order;
- `Others`: the chunk's lines of proof/other-records.jsonl (the records that are not events).

A few objects per chunk instead of one per record, to pickle, unpickle and apply. The writer applies the
frames in chunk order, so the package is the same byte for byte whether they come from `frames` in this
process or from `Scanner`'s workers.

Workers
-------
`Scanner` hands the chunks round-robin to `n` interpreters (`helper_process`: a plain subprocess, like the
renderers'; a multiprocessing pool would import the CLI in each; `record_workers` starts them ahead), each
reading its chunks from the log itself (SQLite allows concurrent readers) and sending back one pickled frame
per chunk over its stdout; the writer reads the frames in chunk order, so at most a chunk per worker is in
flight and memory stays flat. The key material goes to a worker only over its stdin pipe, never on a command
line, in the environment or in a file; workers write no files.

Errors are the sequential pass's, in the same order: a worker checks the hash chain of its first record
against the *stored* leaf before it (which the previous chunk has checked against the recomputed one before
this chunk's frame is read), reads on past its chunk's end so a missing record at a chunk edge is reported as
it is inline, and sends a `LogIntegrityError` back as its fields, with the frame of the chunk's records before
it; the writer raises the first failing chunk's error only after those and every earlier chunk were applied
(the inline frames carry the error object itself: the same order).

Dossiers (verify-package)
-------------------------
`DossierScanner` cuts each dossier's events.jsonl into pieces of `PIECE_BYTES` (`pieces`, `piece_lines`) and
hands them round-robin to workers (`dossier_workers` starts them ahead), which send back each line: one that
is exactly the writer's line of a plain event as a `PlainLine` (`plain_line`), any other as it is, for the
verifier to check itself.
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import hashlib
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bridge import helper_process
from bridge.archive import derive, proof
from bridge.archive.gaps import LIVENESS_SOURCE
from bridge.errors import Check, LogIntegrityError
from bridge.events import ENCODING_VERSION, SIGNAL, EncodingError, Event, Kind, event_from_bytes
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


# -- frames: what the package writer applies, a chunk at a time ------------------------------------


class Run(NamedTuple):
    """Consecutive plain lines of one dossier (in record order; other dossiers' lines may lie between them)."""

    tag: bytes
    source: str
    conversation: str
    lines: bytes
    lines_n: int


class Fallback(NamedTuple):
    """An event the writer runs `derive.event_line` on (`event` is None when it came from a worker)."""

    seq: int
    leaf: bytes
    tag: bytes
    record: RangeRecord
    event: Event | None


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
    #: The leaves as aligned perfect subtrees with their roots (`merkle.subtrees_of`): the writer grows the
    #: frontier a subtree at a time, the hashing below them done here (in the workers, in parallel).
    pieces: list[merkle.Subtree]


def chunk_frame(
    view: LogView,
    start: int,
    stop: int,
    end: int,
    withheld: Withholding,
    prev_leaf: bytes | None,
    keep_events: bool = False,
) -> Frame:
    """The frame of the records [start, stop) (see the module docstring): read as the sequential pass reads
    them, on towards `end` (so a missing record at `stop` is found as it is inline), the chain checked from
    `prev_leaf` (None: the log's first record); the error that stops the chunk goes in the frame, after the
    entries of the records before it. `keep_events`: fallbacks carry their parsed `Event` (inline; a worker
    sends None, the writer parses)."""
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
                    lean = plain_by_fields(d, withheld) if type(d) is dict else None
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
    # each leaf's hex and a newline, in one call: the leaves are 32 bytes each, so every separator ends a leaf
    lines = joined.hex("\n", merkle.HASH_SIZE).encode("ascii") + b"\n" if joined else b""
    return Frame(joined, lines, entries, error, merkle.subtrees_of(start, joined))


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


def record_workers(n: int) -> helper_process.Started:
    """`n` record-pass interpreters started ahead of their job: they import while the plan is made, and wait on
    their stdin for what `Scanner` sends them. `close()` ends any not used."""
    return helper_process.Started("bridge.archive.scan", "worker_main", n, prepare=_big_pipe)


class Scanner:
    """`n` worker processes giving the frames of [start, end) chunk by chunk, in chunk order (`__iter__`)."""

    def __init__(
        self,
        view: LogView,
        data_dir: Path,
        start: int,
        end: int,
        withheld: Withholding,
        n: int,
        workers: helper_process.Started | None = None,
    ) -> None:
        """`workers`: processes started ahead (`record_workers`), used instead of fresh ones (more are started
        if they are fewer than `n`); any beyond what the chunks need get no chunk and end. `close()` ends them
        all."""
        self._chunks = chunks(start, end)
        # Chunk i goes to process i % n, and is read from it; processes started ahead beyond n get no chunk.
        self._n = n = max(1, min(n, len(self._chunks)))
        # The stored leaf before each chunk: its first record's chain link (checked by the previous chunk).
        prevs = [view.leaf_before(a) for a, _ in self._chunks]
        keys = view.keys
        secret = (keys.log_id, keys.kek, keys.verifier.public_bytes(Encoding.Raw, PublicFormat.Raw))
        self._workers = record_workers(0) if workers is None else workers
        try:
            while len(self._workers.procs) < n:
                self._workers.start()
            for w, proc in enumerate(self._workers.procs):
                mine = [(a, b, prevs[i]) for i, (a, b) in enumerate(self._chunks) if i % n == w]
                _send(proc, pickle.dumps((str(data_dir), secret, mine, end, dict(withheld))))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Frame]:
        n = self._n
        for i in range(len(self._chunks)):
            proc = self._workers.procs[i % n]
            assert proc.stdout is not None
            try:
                kind, body = pickle.load(proc.stdout)  # noqa: S301  (our own child, over its private pipe)
            except EOFError:
                proc.wait()
                raise RuntimeError(
                    f"a record-pass process failed (exit {proc.returncode}): {self._workers.tails[i % n].last()}"
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
        self._workers.close()


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
FRAME_LINES = 4096  # lines per frame a dossier worker sends (at most; a frame never spans two pieces)
#: Bytes of a dossier's events.jsonl per piece: the pieces of all dossiers go round-robin to the workers, so
#: every worker is busy whatever the sizes of the dossiers (one large conversation included) and the verifier,
#: reading the pieces in order, takes each from a worker that has run ahead on it.
PIECE_BYTES = 1 << 20
_READ_PIECE = 1 << 20  # a line is read in pieces of at most this many bytes (as `verify_package.iter_lines`)

# The fixed parts of the line `proof.content_line` gives an event without files:
# {"ciphertext_sha256":"<64 hex>","event":<payload>,"header":"<base64>","salt":"<base64>","seq":<n>}\n
_HEAD = b'{"ciphertext_sha256":"'
_EVENT_AT = len(_HEAD) + 2 * format.HASH_BYTES
_EVENT_KEY = b'","event":'
_PAYLOAD_AT = _EVENT_AT + len(_EVENT_KEY)
_HEADER_KEY = b',"header":"'
_HEADER_B64 = 4 * -(-format.HEADER_BYTES // 3)
_SALT_KEY = b'","salt":"'
_SEQ_KEY = b'","seq":'
_TAIL = b"}\n"
_EVENT = format.RecordType.EVENT
_HEX_AT = len(_HEAD)
_HEADER_SKIP = len(_HEADER_KEY)
_SALT_SKIP = len(_SALT_KEY)
_SEQ_SKIP = len(_SEQ_KEY)
_TAIL_AT = -len(_TAIL)


def plain_line(line: bytes, withheld: Withholding) -> PlainLine | None:
    """What `verify-package` needs of a dossier line that is a plain event and exactly the line the package
    writer gives for it (then re-deriving it changes no state); None for any other line, which the verifier
    then checks itself, line by line, with its own code (so its errors and their order are its own).

    The line is taken apart where `proof.content_line` puts its fields, and only accepted if `content_line`
    gives it back byte for byte from them, with the payload canonical JSON (`canonical_json` of what it
    parses to) of an event `is_plain` accepts, and a header of an event record with the line's seq: exactly
    the lines `proof.parse_line` reads to the same values and the general path accepts unchanged."""
    if not (line.startswith(_HEAD) and line.endswith(_TAIL) and line[_EVENT_AT:_PAYLOAD_AT] == _EVENT_KEY):
        return None
    h = line.rfind(_HEADER_KEY)  # the last one: a payload's own "header" keys are all inside it, before
    s = h + _HEADER_SKIP + _HEADER_B64
    q = line.find(_SEQ_KEY, s)
    if h < _PAYLOAD_AT or line[s : s + _SALT_SKIP] != _SALT_KEY or q < 0:
        return None
    payload = line[_PAYLOAD_AT:h]
    try:
        header_b = binascii.a2b_base64(line[h + _HEADER_SKIP : s], strict_mode=True)
        salt = binascii.a2b_base64(line[s + _SALT_SKIP : q], strict_mode=True)
        ct_hash = binascii.unhexlify(line[_HEX_AT:_EVENT_AT])
        seq = int(line[q + _SEQ_SKIP : _TAIL_AT])
        header = format.unpack_header(header_b)
        content = orjson.loads(payload)
        if type(content) is not dict or orjson.dumps(content, option=orjson.OPT_SORT_KEYS) != payload:
            return None
        conv = plain_by_fields(content, withheld)
        if conv is None:  # not a plain message by its fields alone: the event and `is_plain` decide
            event = Event.from_json(content)
            if not is_plain(event, withheld):
                return None
            conv = (str(event.source), str(event.conversation))
    except (ValueError, TypeError, EncodingError):  # binascii.Error, FormatError and orjson's errors included
        return None
    if header.seq != seq or header.type != _EVENT:
        return None
    if proof.content_line("event", seq, header_b, salt, payload, ct_hash, None) != line:
        return None
    leaf = merkle.leaf_hash(header_b + hashlib.sha256(salt + payload).digest() + ct_hash)
    return (seq, leaf, header.appended_ms, header.conversation_tag, conv[0], conv[1])


#: Kinds a plain message may have by its fields alone (`plain_by_fields`); notices and state events (room
#: names) always go through `is_plain`.
_PLAIN_KINDS = frozenset(k.value for k in Kind if k not in (Kind.NOTICE, Kind.STATE))
_EVENT_FIELDS = frozenset(("sender", "sent_at", "received_at", "content", "raw", "problem"))


def plain_by_fields(d: dict[str, Any], withheld: Withholding) -> tuple[str, str] | None:
    """(source, conversation) of an event encoding that `Event.from_json` decodes and `is_plain` accepts, seen
    from its fields alone (no `Event` built); None where this does not decide (then `is_plain` does): anything
    but a version-1 encoding with every field, text ids, a known kind other than a notice or state event, no
    attachments, no target, not Signal (group names), not the archiver's own, and no withhold decision on it.
    Sound by construction: each condition is one `from_json` or `is_plain` needs (see their code)."""
    if d.get("v") != ENCODING_VERSION:
        return None
    try:
        source, conversation, event_id, kind = d["source"], d["conversation"], d["event_id"], d["kind"]
        if d["attachments"] != [] or d["relates_to"] is not None:
            return None
    except KeyError:
        return None
    if not d.keys() >= _EVENT_FIELDS:
        return None
    if type(source) is not str or type(conversation) is not str or type(event_id) is not str:
        return None
    if not (source and conversation and event_id) or type(kind) is not str or kind not in _PLAIN_KINDS:
        return None
    if source in (SIGNAL, LIVENESS_SOURCE):
        return None
    if withheld and withheld.get((source, conversation, event_id)) is not None:
        return None
    return source, conversation


def pieces(size: int, piece: int) -> list[tuple[int, int | None]]:
    """[a, b) byte ranges covering a file of `size` bytes (the last open-ended: to the end of the file as it is
    read); one piece for an empty or missing file, so every dossier has one."""
    cuts = list(range(0, size, piece)) or [0]
    return [(a, cuts[k + 1] if k + 1 < len(cuts) else None) for k, a in enumerate(cuts)]


def piece_lines(fh: BinaryIO, a: int, b: int | None, limit: int) -> Iterator[bytes]:
    """The lines of a file that start at a byte in [a, b) (b None: to the end), each read whole, at most `limit`
    bytes (a longer one raises ValueError): the pieces of a file together give each of its lines once, as
    `verify_package.iter_lines` reads them."""
    pos = a
    fh.seek(max(a - 1, 0))
    if a > 0 and fh.read(1) != b"\n":  # the line under way at `a` belongs to the piece it started in
        while b is None or pos < b:  # (read no further than this piece: a long line is not read once per piece)
            chunk = fh.readline(_READ_PIECE if b is None else min(_READ_PIECE, b - pos))
            pos += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
    while b is None or pos < b:
        parts: list[bytes] = []
        size = 0
        while chunk := fh.readline(min(_READ_PIECE, limit + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"a line longer than {limit} bytes")
            if chunk.endswith(b"\n"):
                break
        if not parts:
            return
        pos += size
        yield parts[0] if len(parts) == 1 else b"".join(parts)


def _big_pipe(proc: subprocess.Popen[bytes]) -> None:
    """Enlarge a worker's stdout pipe to `PIPE_BYTES`, so it can run about a frame ahead."""
    assert proc.stdout is not None
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the system's limit: the default works
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _send(proc: subprocess.Popen[bytes], job: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a worker that died: its stderr says why when its frame is read
        proc.stdin.write(job)
        proc.stdin.close()


def dossier_workers(n: int) -> helper_process.Started:
    """`n` dossier-reading interpreters started ahead of their job: they import while the verifier does its
    first checks, and wait on their stdin for what `DossierScanner` sends them. `close()` ends any not used."""
    return helper_process.Started("bridge.archive.scan", "dossier_main", n, prepare=_big_pipe)


class DossierScanner:
    """`n` worker processes reading dossiers' events.jsonl: for each path (in the order given) its lines, each
    a `PlainLine` or the raw line. Each file is cut into pieces of `PIECE_BYTES` (`pieces`), and the pieces of
    all files go round-robin to the workers; a worker sends its pieces' lines in order, one or more frames per
    piece and then an empty one, or ("unread", None) for a piece it could not read (a missing file, a line over
    the limit: the verifier reads that dossier on itself). With `workers` (started ahead: `dossier_workers`),
    those processes are used (more are started if they are fewer than `n`; any beyond what the pieces need get
    an empty job and end); `close()` ends them."""

    def __init__(
        self,
        paths: list[Path],
        withheld: Withholding,
        n: int,
        limit: int,
        piece: int | None = None,
        workers: helper_process.Started | None = None,
    ) -> None:
        size = PIECE_BYTES if piece is None else piece
        tasks: list[tuple[str, int, int | None]] = []
        self._spans: list[range] = []  # the pieces (task numbers) of each dossier
        for p in paths:
            cut = pieces(_file_size(p), size)
            self._spans.append(range(len(tasks), len(tasks) + len(cut)))
            tasks.extend((str(p), a, b) for a, b in cut)
        self._n = n = max(1, min(n, len(tasks)))
        self._workers = dossier_workers(0) if workers is None else workers
        try:
            while len(self._workers.procs) < n:
                self._workers.start()
            for w, proc in enumerate(self._workers.procs):
                _send(proc, pickle.dumps((tasks[w::n] if w < n else [], dict(withheld), limit, FRAME_LINES)))
        except BaseException:
            self.close()
            raise

    def lines(self, i: int, own: Callable[[], Iterator[tuple[int, bytes]]]) -> Iterator[tuple[int, PlainLine | bytes]]:
        """(line number, line) of dossier `i`, a line proven plain as its `PlainLine`; call for i = 0, 1, ... in
        order, consuming each before the next. From where a worker could not read on (a missing file, a line
        over the limit) the lines are `own()`'s, the verifier's own reading, so it finds what is wrong itself."""
        number = 0
        unread = False
        for t in self._spans[i]:
            w = t % self._n
            while (frame := self._frame(w)) is not None:
                if not frame:
                    break
                if unread:
                    continue  # a later piece of a dossier read on by the verifier: taken from the pipe, unused
                for item in frame:
                    number += 1
                    yield number, item
            else:
                unread = True
        if unread:
            for k, line in own():
                if k > number:
                    yield k, line

    def _frame(self, w: int) -> list[PlainLine | bytes] | None:
        proc = self._workers.procs[w]
        assert proc.stdout is not None
        try:
            kind, body = pickle.load(proc.stdout)  # noqa: S301  (our own child, over its private pipe)
        except EOFError:
            proc.wait()
            raise RuntimeError(
                f"a dossier-reading process failed (exit {proc.returncode}): {self._workers.tails[w].last()}"
            ) from None
        if kind == "unread":
            return None
        lines: list[PlainLine | bytes] = body
        return lines  # an empty frame ends the piece

    def close(self) -> None:
        self._workers.close()


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0  # the worker cannot open it either; the verifier says so


def dossier_main() -> None:
    """A dossier-reading process: (pieces, withheld, line limit, lines per frame) in; per piece its frames out,
    then an empty one, or ("unread", None) where it cannot read (the verifier reads on itself)."""
    tasks, withheld, limit, frame_lines = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (parent's pipe)
    out = sys.stdout.buffer
    dump = pickle.dumps
    for path, a, b in tasks:
        frame: list[PlainLine | bytes] = []
        try:
            with open(path, "rb") as fh:
                for line in piece_lines(fh, a, b, limit):
                    got = plain_line(line, withheld)
                    frame.append(line if got is None else got)
                    if len(frame) == frame_lines:
                        out.write(dump(("lines", frame), pickle.HIGHEST_PROTOCOL))
                        frame = []
        except Exception:  # a missing file, a line over the limit: the verifier reads on itself and says why
            out.write(dump(("unread", None)))
        else:
            if frame:
                out.write(dump(("lines", frame), pickle.HIGHEST_PROTOCOL))
            out.write(dump(("lines", []), pickle.HIGHEST_PROTOCOL))
        out.flush()
