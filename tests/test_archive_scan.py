"""Pass 2 of `snapshot` in worker processes (`bridge/archive/scan.py`) gives the inline package and the inline errors.

The record pass runs in processes only for long ranges (`scan.PARALLEL_MIN_RECORDS`); here it is forced on
January of the archive test log (two rooms, a room name, an edit, a deletion, an image, a withheld message, a
decision) with chunks of 2 records, so every chunk edge, the round-robin hand-out and both kinds of event
(plain lines made in the worker, others applied by the writer) are crossed. The attacks: a tampered log must be
refused with the same error (check, record, message) whichever way the records are read, including a flipped
byte on a chunk's first record (the chain link the worker checks against the stored leaf before it) and a
record missing at a chunk edge.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import helper_process
from bridge.archive import derive, proof, scan, verify_package
from bridge.archive import range as ranges
from bridge.archive.gaps import LIVENESS_SOURCE, Listing
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.clock import now_ms
from bridge.errors import LogIntegrityError
from bridge.events import MATRIX, SIGNAL, Attachment, EncodingError, Event, Kind, canonical_bytes
from bridge.log import keys as keyfile
from bridge.policy import Withheld
from tests.conftest import LogDir, make_event
from tests.support import processes
from tests.support.archive_log import (
    OPTIONS,
    archive_log_two_months,
    dossier_dir,
    seal_for,
)
from tests.support.pg import Attacker
from tests.test_archive_verify import rebag

JANUARY = Month(2024, 1)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> LogDir:
    return archive_log_two_months(tmp_path_factory.mktemp("scanlog"))


def _copy(log: LogDir, to: Path) -> LogDir:
    shutil.copytree(log.data_dir, to / "data")
    return LogDir(to / "data", log.key_file, log.keys)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _count_starts(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap `scan.<name>` (a worker pool class); the returned list gets one entry per pool started."""
    started: list[int] = []
    real = getattr(scan, name)

    def counting(*args: object, **kwargs: object) -> object:
        started.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan, name, counting)
    return started


def _force_processes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Workers for any range, 2 records a chunk; returns a list that gets one entry per Scanner started."""
    monkeypatch.setattr(scan, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setattr(scan, "CHUNK", 2)
    return _count_starts(monkeypatch, "Scanner")


def test_record_pass_in_processes_gives_the_same_package(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _copy(made, tmp_path)
    inline = snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "inline", OPTIONS, seal=seal_for(log), workers=1)
    want = _digests(inline.path)
    assert inline.end - inline.start > 2 * 2  # more chunks than workers
    started = _force_processes(monkeypatch)
    for workers in (2, 3):
        out = tmp_path / f"procs{workers}"
        pooled = snapshot(log.data_dir, log.keys, JANUARY, out, OPTIONS, seal=seal_for(log), workers=workers)
        assert _digests(pooled.path) == want
    assert len(started) == 2


def test_frames_of_the_month_hold_plain_runs_and_fallback_events(made: LogDir) -> None:
    """The fast path (a run of plain lines) is taken for plain messages and never for events that change
    dossier state: edits, deletions, room names, attachments and the withheld message are fallbacks, inline
    with their parsed events."""
    from bridge.log.view import LogView
    from bridge.policy import fold_decisions

    with LogView(made.data_dir, made.keys) as view:
        decisions = [(row.seq, view.decision(row)) for row in view.decision_rows(view.size())]
        got = [e for f in scan.frames(view, 0, view.size(), fold_decisions(decisions)) for e in f.entries]
    runs = [e for e in got if type(e) is scan.Run]
    fallback = [e for e in got if type(e) is scan.Fallback]
    assert runs and fallback
    assert all(e.event is not None for e in fallback)
    kinds = {str(e.event.kind) for e in fallback if e.event is not None}
    assert {"edit", "deletion", "state", "attachment"} <= kinds
    withheld = [e for e in fallback if e.event is not None and str(e.event.event_id) == "$e2"]
    assert len(withheld) == 1  # the withheld message is never made a plain line
    assert not any(b'"event_id":"$e2"' in e.lines for e in runs)


def _flip(conn: Attacker, seq: int, column: str) -> None:
    value = bytes(conn.execute(f"SELECT {column} FROM records WHERE seq = ?", (seq,)).fetchone()[0])
    at = len(value) // 2
    conn.execute(
        f"UPDATE records SET {column} = ? WHERE seq = ?", (value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :], seq)
    )


def _relink(conn: Attacker, seq: int) -> None:
    """Point record `seq`'s chain link elsewhere and store the leaf that fits: only the chain check can tell."""
    header, commit, body = (
        bytes(v) for v in conn.execute("SELECT header, commitment, body FROM records WHERE seq = ?", (seq,)).fetchone()
    )
    header = header[:-1] + bytes([header[-1] ^ 1])  # the last 32 bytes are the previous leaf
    leaf = hashlib.sha256(b"\x00" + header + commit + hashlib.sha256(body).digest()).digest()
    conn.execute("UPDATE records SET header = ?, leaf = ? WHERE seq = ?", (header, leaf, seq))


TAMPERS = [
    ("relink", 4),  # a chunk's first record: its link is checked against the stored leaf before the chunk
    ("relink", 5),
    ("body", 3),
    ("body", 4),  # a chunk's first record
    ("commitment", 6),
    ("header", 8),
    ("delete", 5),  # the last record of a chunk
    ("delete", 6),  # the first record of a chunk
]


@pytest.mark.parametrize(("what", "seq"), TAMPERS)
def test_a_tampered_log_is_refused_the_same_way(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, seq: int
) -> None:
    log = _copy(made, tmp_path)
    conn = Attacker(log.data_dir)
    try:
        if what == "delete":
            conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
        elif what == "relink":
            _relink(conn, seq)
        else:
            _flip(conn, seq, what)
    finally:
        conn.close()
    with pytest.raises(LogIntegrityError) as inline:
        snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "inline", OPTIONS, seal=seal_for(log), workers=1)
    started = _force_processes(monkeypatch)
    with pytest.raises(LogIntegrityError) as pooled:
        snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "pooled", OPTIONS, seal=seal_for(log), workers=2)
    a, b = inline.value, pooled.value
    assert (a.check, a.seq, str(a)) == (b.check, b.seq, str(b))
    assert a.seq == seq
    assert not (tmp_path / "pooled").exists() and not (tmp_path / "inline").exists()
    if what == "relink":
        assert str(a.check) == "chain"
    if what != "delete":
        assert started  # found by the record pass, so the workers ran


# -- verify-package: the dossiers' lines read in worker processes ----------------------------------------


def _force_dossier_processes(monkeypatch: pytest.MonkeyPatch, piece: int | None = None) -> list[int]:
    """Dossier workers for any package, 2 lines a frame and, with `piece`, pieces of that many bytes (lines
    then start and end in other pieces, and most small pieces hold no line start at all)."""
    monkeypatch.setattr(verify_package, "SCAN_MIN_BYTES", 0)
    monkeypatch.setattr(scan, "FRAME_LINES", 2)
    if piece is not None:
        monkeypatch.setattr(scan, "PIECE_BYTES", piece)
    return _count_starts(monkeypatch, "DossierScanner")


#: Piece sizes: the default (a dossier in one piece), one line's size or so, and a byte (each line cut many times).
PIECES = [None, 700, 1]


def _january(made: LogDir, tmp_path: Path) -> tuple[LogDir, Path]:
    log = _copy(made, tmp_path)
    return log, snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "jan", OPTIONS, seal=seal_for(log), workers=1).path


def _public(log: LogDir) -> tuple[str, object]:
    return keyfile.load_public(keyfile.public_path(log.key_file))


@pytest.mark.parametrize("piece", PIECES)
def test_dossiers_read_in_processes_verify_the_same(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int | None
) -> None:
    log, pkg = _january(made, tmp_path)
    inline = verify_package.verify_package(pkg, _public(log), workers=1)  # type: ignore[arg-type]
    started = _force_dossier_processes(monkeypatch, piece)
    pooled = verify_package.verify_package(pkg, _public(log), workers=2)  # type: ignore[arg-type]
    assert started
    assert pooled == inline


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def _plain_body(p: Path) -> None:
    """A letter changed in the body of the plain message "concept kamerbrief" (not in its edit's "... v2").
    Found by the whole JSON string: the line's header and salt are random base64 (a fresh log each run) and
    may hold "v2" themselves (about one log in 40), so excluding lines with "v2" could find no line at all."""
    lines = _lines(p)
    i = next(k for k, ln in enumerate(lines) if b'"body":"concept kamerbrief"' in ln)
    lines[i] = lines[i].replace(b"concept kamerbrief", b"concept kamerbriEf")
    p.write_bytes(b"".join(lines))


def _swap(p: Path) -> None:
    lines = _lines(p)
    lines[1], lines[2] = lines[2], lines[1]
    p.write_bytes(b"".join(lines))


def _drop(p: Path) -> None:
    lines = _lines(p)
    del lines[2]
    p.write_bytes(b"".join(lines))


def _garbage(p: Path) -> None:
    lines = _lines(p)
    lines[3] = b'{"seq": 7, "not": "a record line"}\n'
    p.write_bytes(b"".join(lines))


def _borrow(p: Path) -> None:
    """A plain line of the other dossier put into this one (the record then appears twice)."""
    other = next(d for d in p.parent.parent.iterdir() if d.is_dir() and d != p.parent) / "events.jsonl"
    p.write_bytes(p.read_bytes() + _lines(other)[-1])


def _long_line(p: Path) -> None:
    """A line over the (lowered) line limit in the middle of the dossier: a worker cannot read on there."""
    lines = _lines(p)
    lines[2] = lines[2][:-1] + b" " * 3000 + b"\n"
    p.write_bytes(b"".join(lines))


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("forge", [_plain_body, _swap, _drop, _garbage, _borrow, _long_line])
def test_a_forged_dossier_is_refused_the_same_way(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forge: object, piece: int | None
) -> None:
    log, pkg = _january(made, tmp_path)
    forge(dossier_dir(pkg, "alpha") / "events.jsonl")  # type: ignore[operator]
    rebag(pkg)
    monkeypatch.setattr(verify_package, "MAX_LINE_BYTES", 2500)  # over every line the test log has but one
    with pytest.raises(verify_package.PackageIntegrityError) as inline:
        verify_package.verify_package(pkg, _public(log), workers=1)  # type: ignore[arg-type]
    started = _force_dossier_processes(monkeypatch, piece)
    with pytest.raises(verify_package.PackageIntegrityError) as pooled:
        verify_package.verify_package(pkg, _public(log), workers=2)  # type: ignore[arg-type]
    assert started
    assert (type(inline.value), str(inline.value)) == (type(pooled.value), str(pooled.value))
    if forge is _long_line:
        assert "line 3: longer than the limit of 2500 bytes" in str(inline.value)


def _early_workers(monkeypatch: pytest.MonkeyPatch) -> list[helper_process.Started]:
    """Dossier workers started ahead for any package; the returned list gets each `dossier_workers` made."""
    made: list[helper_process.Started] = []
    real = scan.dossier_workers

    def keeping(n: int) -> helper_process.Started:
        made.append(real(n))
        return made[-1]

    monkeypatch.setattr(verify_package, "SCAN_MIN_BYTES", 0)
    monkeypatch.setattr(scan, "dossier_workers", keeping)
    return made


def _forge_end_checkpoint(pkg: Path) -> None:
    cp = pkg / "data" / "proof" / "checkpoint-end.txt"
    cp.write_bytes(cp.read_bytes().replace(b"\n", b"\n\n", 1))
    rebag(pkg)


@pytest.mark.parametrize("forge", [None, _forge_end_checkpoint, _plain_body])
def test_workers_started_ahead_are_used_and_always_end(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forge: object
) -> None:
    """The dossier workers start before the first checks: intact, the package verifies as inline with them;
    refused before its dossiers are read (a forged checkpoint) or while they are (a forged line), it gives the
    inline error; and every worker started has ended when verify-package returns or raises."""
    log, pkg = _january(made, tmp_path)
    if forge is not None:
        forge(dossier_dir(pkg, "alpha") / "events.jsonl" if forge is _plain_body else pkg)  # type: ignore[operator]
        if forge is _plain_body:
            rebag(pkg)
    outcome: list[object] = []
    for workers in (1, 3):
        try:
            outcome.append(verify_package.verify_package(pkg, _public(log), workers=workers))  # type: ignore[arg-type]
        except verify_package.PackageIntegrityError as exc:
            outcome.append((type(exc), str(exc)))
        if workers == 1:
            made_workers = _early_workers(monkeypatch)
    assert outcome[0] == outcome[1]
    assert len(made_workers) == 1 and len(made_workers[0].procs) == 3
    assert all(proc.returncode is not None for proc in made_workers[0].procs)
    assert (forge is None) == isinstance(outcome[0], verify_package.PackageReport)


class _Counting:
    """A binary file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        self._fh = io.BytesIO(data)
        self.read_bytes = 0

    def seek(self, pos: int) -> int:
        return self._fh.seek(pos)

    def read(self, n: int = -1) -> bytes:
        got = self._fh.read(n)
        self.read_bytes += len(got)
        return got

    def readline(self, n: int = -1) -> bytes:
        got = self._fh.readline(n)
        self.read_bytes += len(got)
        return got


def _pieces_lines(data: bytes, piece: int, limit: int) -> tuple[list[bytes], int]:
    fh = _Counting(data)
    got = [line for a, b in scan.pieces(len(data), piece) for line in scan.piece_lines(fh, a, b, limit)]  # type: ignore[arg-type]
    return got, fh.read_bytes


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"x" * 40, b"{}\n"]), max_size=60).map(b"".join),
    piece=st.integers(1, 90),
)
def test_the_pieces_of_a_file_give_its_lines_once_each_in_order(
    data: bytes, piece: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Cut anywhere, the pieces together give exactly the lines `iter_lines` reads (the last one without its
    newline too), in order."""
    path = tmp_path_factory.mktemp("pieces") / "events.jsonl"
    path.write_bytes(data)
    want = [line for _, line in verify_package.iter_lines(path, "f")]
    assert _pieces_lines(data, piece, 1 << 20)[0] == want


def test_a_line_over_the_limit_stops_its_piece() -> None:
    data = b"ok\n" + b"x" * 1000 + b"\nnever\n"
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        list(scan.piece_lines(_Counting(data), 0, None, 100))  # type: ignore[arg-type]


def test_a_long_line_is_read_once_not_once_per_piece() -> None:
    """A line across many pieces: each piece it runs through reads no further than its own end (a 400 MiB line
    in 1 MiB pieces would otherwise be read 400 times over)."""
    data = b"first\n" + b"x" * 100_000 + b"\nlast\n"
    got, read = _pieces_lines(data, 1000, 1 << 20)
    assert got == [b"first\n", b"x" * 100_000 + b"\n", b"last\n"]
    assert read <= 2 * len(data), read


# -- the fast path is the general path: property --------------------------------------------------------


def _general_plain_line(line: bytes, withheld: dict[tuple[str, str, str], Withheld]) -> scan.PlainLine | None:
    """`scan.plain_line` as the general path reads a line (`proof.parse_line`, `Event.from_json`, the writer's
    line): what the fast path must give, or None."""
    try:
        rec = proof.parse_line(line)
        if rec.key != "event":
            return None
        event = Event.from_json(rec.content or {})
    except (proof.LineError, EncodingError):
        return None
    if not scan.is_plain(event, withheld):
        return None
    if line != proof.content_line("event", rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None):
        return None
    h = rec.header
    return (rec.seq, rec.leaf, h.appended_ms, h.conversation_tag, str(event.source), str(event.conversation))


_LINE_EDITS = st.sampled_from(
    [
        b"", b"\n", b" ", b"0", b"A", b"a", b"=", b"-", b"+", b"}", b"{", b",", b'"', b"\\", b"\xff",
        b',"header":"', b'","salt":"', b'","seq":', b'"files":{}', b'"withheld":{}', b'"x":1,',
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_fast_line_reading_accepts_only_what_the_general_path_accepts(made: LogDir, data: st.DataObject) -> None:
    """Every line of the test package, and the same line with bytes replaced, inserted or removed anywhere:
    `scan.plain_line` gives None or exactly what the general path gives; and it takes every plain line."""
    lines, held = _sample_lines(made)
    if data.draw(st.booleans()):
        held = {}  # no decision at all: the fields alone decide for plain messages (`scan.plain_by_fields`)
    original = lines[data.draw(st.integers(0, len(lines) - 1))]
    want = _general_plain_line(original, held)
    if want is not None:
        assert scan.plain_line(original, held) == want  # the fast path takes every plain line
    forged = original
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(forged)))
        cut = data.draw(st.integers(0, 3))
        forged = forged[:at] + data.draw(_LINE_EDITS) + forged[at + cut :]
    got = scan.plain_line(forged, held)
    assert got is None or got == _general_plain_line(forged, held)


@pytest.mark.parametrize("decisions", [True, False])
def test_the_fast_line_reading_gives_the_general_values_for_every_line_of_a_package(
    made: LogDir, decisions: bool
) -> None:
    """Every dossier line of the test package, as written, with its decisions and with none: the fast reading
    and the general path agree, and the package has plain lines and lines that are not (an edit, a deletion, a
    name, media, a tombstone)."""
    lines, held = _sample_lines(made)
    held = held if decisions else {}
    got = [scan.plain_line(line, held) for line in lines]
    assert got == [_general_plain_line(line, held) for line in lines]
    assert any(g is not None for g in got) and any(g is None for g in got)


_SAMPLE: dict[str, tuple[list[bytes], dict[tuple[str, str, str], Withheld]]] = {}


def _sample_lines(made: LogDir) -> tuple[list[bytes], dict[tuple[str, str, str], Withheld]]:
    """The dossier lines of January's package of the test log (plain events, and others), and its withholding."""
    if "lines" not in _SAMPLE:
        from bridge.log.view import LogView
        from bridge.policy import fold_decisions

        with LogView(made.data_dir, made.keys) as view:
            decisions = [(row.seq, view.decision(row)) for row in view.decision_rows(view.size())]
        withheld = fold_decisions(decisions)
        out = Path(tempfile.mkdtemp(prefix="plainlines-"))
        try:
            log = _copy(made, out)
            pkg = snapshot(log.data_dir, log.keys, JANUARY, out / "jan", OPTIONS, seal=seal_for(log), workers=1).path
            lines = [ln for p in sorted((pkg / "data").rglob("events.jsonl")) for ln in _lines(p)]
        finally:
            shutil.rmtree(out)
        _SAMPLE["lines"] = (lines, dict(withheld))
    return _SAMPLE["lines"]


# -- the fast path is the general path: property --------------------------------------------------------


@st.composite
def _events(draw: st.DrawFn) -> Event:
    """Events of every kind and source, with or without a target, a room or group name, a notice, media."""
    base = make_event(draw(st.integers(0, 5)), conversation=draw(st.sampled_from(["!r:x", "group:abc", "+316"])))
    kind = draw(st.sampled_from(list(Kind)))
    content: dict[str, Any] = draw(
        st.sampled_from(
            [
                {"body": "hallo"},
                {"type": "m.room.name", "content": {"name": draw(st.sampled_from(["", "Overleg"]))}},
                {"group_name": draw(st.sampled_from(["", "Team"]))},
                {"notice": draw(st.sampled_from(["capture_gap", "heartbeat", "other"])), "interval_ms": 60_000},
            ]
        )
    )
    atts: tuple[Attachment, ...] = ()
    if draw(st.booleans()):
        atts = (Attachment(draw(st.sampled_from(["stored", "failed"])), "image/png", "a.png", 3, "0" * 64, "b" * 64),)
    return dataclasses.replace(
        base,
        source=draw(st.sampled_from([MATRIX, SIGNAL, LIVENESS_SOURCE])),
        kind=kind,
        relates_to=draw(st.none() | st.sampled_from(["$e1", "$e2"])),
        content=content,
        attachments=atts,
    )


@settings(max_examples=300, deadline=None)
@given(event=_events(), withhold=st.booleans())
def test_a_plain_event_gets_the_general_line_and_changes_nothing(event: Event, withhold: bool) -> None:
    """Whenever `scan.is_plain` says plain, `derive.event_line` gives the line `scan` makes and touches neither
    the dossier's state, nor the liveness listing, nor the media hook."""
    target = (str(event.source), str(event.conversation), "$e1")
    withheld = {target: Withheld("privé", "I. Specialist", 1, 0)} if withhold else {}
    if not scan.is_plain(event, withheld):
        return
    state = derive.new_dossier("serie", str(event.source), str(event.conversation))
    before = copy.deepcopy(dataclasses.replace(state, sha=None))  # its dicts and lists too
    listing = Listing()
    touched: list[int] = []
    payload = canonical_bytes(event)
    line = derive.event_line(
        7, b"h" * 10, b"s" * 16, payload, b"c" * 32, b"m" * 32, event, state, withheld,
        lambda seq, att, rel: touched.append(seq) or True, listing,
    )  # fmt: skip
    assert line == proof.content_line("event", 7, b"h" * 10, b"s" * 16, payload, b"c" * 32, None)
    assert dataclasses.replace(state, sha=None) == before
    assert listing == Listing() and not touched


def test_workers_read_the_log_of_either_backend(
    any_filled_log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker opens the log itself (SQLite file, or the PostgreSQL schema the data dir names): the package of
    the month so far is the inline one."""
    log = any_filled_log
    month = ranges.month_of(now_ms(), OPTIONS.timezone)
    args = (log.data_dir, log.keys, month)
    inline = snapshot(*args, tmp_path / "inline", OPTIONS, seal=seal_for(log), allow_open_month=True, workers=1)
    started = _force_processes(monkeypatch)
    pooled = snapshot(*args, tmp_path / "pooled", OPTIONS, seal=seal_for(log), allow_open_month=True, workers=2)
    assert started
    assert inline.end > inline.start
    assert _digests(pooled.path) == _digests(inline.path)


def test_a_record_pass_over_a_sqlite_log_never_loads_psycopg(made: LogDir) -> None:
    """What a record-pass worker imports and runs (`bridge.archive.scan`, a `LogView` over a SQLite log, every
    record opened) loads no PostgreSQL driver: psycopg costs each worker a quarter of a second to import, and
    it is imported only where a PostgreSQL log is opened."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from bridge.archive import scan; from bridge.log import keys;"
        "from bridge.log.view import LogView;"
        f"view = LogView(Path({str(made.data_dir)!r}), keys.load(Path({str(made.key_file)!r})));"
        "frame = scan.chunk_frame(view, 0, view.size(), view.size(), {}, view.leaf_before(0));"
        "assert frame.error is None; n = len(frame.leaves) // 32;"
        "print(n, 'psycopg' in sys.modules)"
    )
    root = str(Path(scan.__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root}).stdout  # fmt: skip
    count, loaded = out.split()
    assert int(count) > 10 and loaded == "False"


def _mutated(draw: st.DrawFn, d: dict[str, Any]) -> object:
    """The event's JSON object as it is, or with a key gone or a field of another type (the payload is proven,
    not validated: the lean path must leave whatever the general path would refuse or treat otherwise)."""
    how = draw(st.sampled_from(["as is", "drop", "retype", "not an object"]))
    key = draw(st.sampled_from(sorted(d)))
    if how == "drop":
        del d[key]
    elif how == "retype":
        d[key] = draw(st.sampled_from([None, 0, 1, True, "", "x", [], {}, "message", "matrix"]))
    elif how == "not an object":
        return [d]
    return d


@settings(max_examples=500, deadline=None)
@given(event=_events(), data=st.data())
def test_the_lean_decode_agrees_with_the_general_path(event: Event, data: st.DataObject) -> None:
    """Whenever `scan.plain_by_fields` takes a decoded payload as plain, `Event.from_json` accepts it, `is_plain`
    holds (no withholding) and the dossier (source, conversation) is the same."""
    import orjson

    d = _mutated(data.draw, orjson.loads(canonical_bytes(event)))
    lean = scan.plain_by_fields(d, {}) if isinstance(d, dict) else None
    if lean is None:
        return
    assert isinstance(d, dict)
    parsed = Event.from_json(d)
    assert scan.is_plain(parsed, {})
    assert lean == (str(parsed.source), str(parsed.conversation))


def _record_by_record(view: Any, withheld: Any) -> tuple[dict[bytes, list[bytes]], bytes, bytes]:
    """Each dossier's lines (a fallback as b"fallback <seq>"), the other records' lines and the leaves, record
    by record through the general path: `parse_event`, `is_plain`, the line `proof.content_line` makes."""
    lines: dict[bytes, list[bytes]] = {}
    other, leaves = b"", b""
    for rec in view.records(0, view.size(), view.leaf_before(0)):
        leaves += rec.leaf
        args = (rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None)
        if rec.header.type in scan.OTHER_KEYS:
            other += proof.content_line(scan.OTHER_KEYS[rec.header.type], *args)
        elif scan.is_plain(scan.parse_event(rec), withheld):
            lines.setdefault(rec.header.conversation_tag, []).append(proof.content_line("event", *args))
        else:
            lines.setdefault(rec.header.conversation_tag, []).append(b"fallback %d" % rec.seq)
    return lines, other, leaves


def test_frames_hold_the_record_by_record_lines_in_order(made: LogDir) -> None:
    """The frames (runs of plain lines per dossier, fallbacks, other lines, leaves) give each dossier the lines
    the general path gives it record by record, in the same order, and the same leaves and leaf lines: inline
    (`frames`) and chunk by chunk as the workers read them (`chunk_frame`, also with tiny chunks)."""
    from bridge.log.view import LogView
    from bridge.policy import fold_decisions

    with LogView(made.data_dir, made.keys) as view:
        decisions = [(row.seq, view.decision(row)) for row in view.decision_rows(view.size())]
        withheld = fold_decisions(decisions)
        want, want_other, want_leaves = _record_by_record(view, withheld)
        inline = list(scan.frames(view, 0, view.size(), withheld))
        for chunk in (None, 1024, 3):
            if chunk is None:
                made_frames = inline
            else:
                made_frames = [
                    scan.chunk_frame(view, a, b, view.size(), withheld, view.leaf_before(a))
                    for a, b in scan.chunks(0, view.size(), chunk)
                ]
            got: dict[bytes, list[bytes]] = {}
            other, leaves = b"", b""
            for frame in made_frames:
                assert frame.error is None
                leaves += frame.leaves
                assert frame.leaf_lines == b"".join(
                    proof.leaf_line(frame.leaves[i : i + 32]) for i in range(0, len(frame.leaves), 32)
                )
                for entry in frame.entries:
                    if type(entry) is scan.Run:
                        lines = entry.lines.splitlines(keepends=True)
                        assert len(lines) == entry.lines_n
                        got.setdefault(entry.tag, []).extend(lines)
                    elif type(entry) is scan.Fallback:
                        assert (entry.event is None) == (chunk is not None)
                        got.setdefault(entry.tag, []).append(b"fallback %d" % entry.seq)
                    else:
                        assert type(entry) is scan.Others
                        other += entry.lines
            assert got == want and other == want_other
            assert leaves == want_leaves
    flat = [line for lines in want.values() for line in lines]
    assert any(line.startswith(b"fallback") for line in flat) and any(line.startswith(b"{") for line in flat)
    assert want_other


_FIELDS = [
    "v", "source", "conversation", "event_id", "kind", "sender", "sent_at", "received_at", "content", "relates_to",
    "attachments", "raw", "problem",
]  # fmt: skip
_FIELD_VALUES = st.sampled_from([None, "", "x", "$e1", "!r:x", "group:abc", 0, 7, True, [], {}, ["a"], {"k": 1}])


@settings(max_examples=400, deadline=None)
@given(
    event=_events(),
    withhold=st.booleans(),
    changes=st.lists(
        st.tuples(
            st.sampled_from(_FIELDS),
            st.one_of(st.just("<del>"), _FIELD_VALUES, st.sampled_from([k.value for k in Kind])),
        ),
        max_size=3,
    ),
)
def test_a_plain_message_by_its_fields_is_a_plain_event(
    event: Event, withhold: bool, changes: list[tuple[str, object]]
) -> None:
    """`scan.plain_by_fields` decides from an encoding's fields alone only where `Event.from_json` decodes it
    and `is_plain` accepts the event, and then gives its source and conversation; for encodings of every kind
    and source, with fields removed or of other types."""
    d: dict[str, Any] = event.to_json()
    for name, value in changes:
        if value == "<del>":
            d.pop(name, None)
        else:
            d[name] = value
    withheld = {(str(event.source), str(event.conversation), str(event.event_id)): Withheld("p", "I", 1, 0)}
    got = scan.plain_by_fields(d, withheld if withhold else {})
    if got is None:
        return
    decoded = Event.from_json(d)  # raises if the fields alone decided wrongly
    assert scan.is_plain(decoded, withheld if withhold else {})
    assert got == (str(decoded.source), str(decoded.conversation))


@pytest.mark.parametrize("used", [True, False])
def test_record_workers_started_before_the_plan_are_used_and_always_end(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, used: bool
) -> None:
    """With 2 processes and a log long enough, `snapshot` starts its record-pass workers before the plan (they
    import while it runs) and the pass uses them, no others; for a month too short for them they are not used.
    Either way the package is the inline one and every worker has ended when `snapshot` returns."""
    from bridge.log.view import LogView

    log = _copy(made, tmp_path)
    inline = snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "inline", OPTIONS, seal=seal_for(log), workers=1)
    with LogView(log.data_dir, log.keys) as view:
        size = view.size()
    assert inline.end - inline.start < size  # January is not the whole log
    started = _force_processes(monkeypatch)
    monkeypatch.setattr(scan, "PARALLEL_MIN_RECORDS", 0 if used else size)
    spawned = processes.started(monkeypatch, "bridge.archive.scan", "worker_main")
    pooled = snapshot(log.data_dir, log.keys, JANUARY, tmp_path / "pooled", OPTIONS, seal=seal_for(log), workers=2)
    assert _digests(pooled.path) == _digests(inline.path)
    assert len(spawned) == 2  # started ahead; none started by the pass itself
    assert len(started) == (1 if used else 0)
    assert all(proc.returncode is not None for proc in spawned)
    if not used:
        assert all(proc.returncode < 0 for proc in spawned)  # ended (killed) while waiting for a job


def test_record_workers_started_ahead_end_when_the_plan_refuses(
    made: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month refused once the plan is made (it ended before the log began) leaves no record-pass worker
    behind."""
    from bridge.errors import UsageError

    log = _copy(made, tmp_path)
    monkeypatch.setattr(scan, "PARALLEL_MIN_RECORDS", 0)
    spawned = processes.started(monkeypatch, "bridge.archive.scan", "worker_main")
    with pytest.raises(UsageError, match="ended before this log began"):
        snapshot(log.data_dir, log.keys, Month(2000, 1), tmp_path / "old", OPTIONS, seal=seal_for(log), workers=2)
    assert len(spawned) == 2
    assert all(proc.returncode is not None for proc in spawned)


def _without_events(frame: scan.Frame) -> scan.Frame:
    """The frame as a worker sends it: fallbacks without their parsed events."""
    entries = [e._replace(event=None) if type(e) is scan.Fallback else e for e in frame.entries]
    return frame._replace(entries=entries)


def test_a_scanner_using_fewer_processes_than_started_reads_each_chunk_from_its_worker(
    made: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Scanner` asked for one process while two were started ahead: every chunk goes to the one it uses and is
    read from it (the other gets no chunk and ends), so the frames are the inline ones, in order."""
    from bridge.log.view import LogView
    from bridge.policy import fold_decisions

    monkeypatch.setattr(scan, "CHUNK", 2)
    with LogView(made.data_dir, made.keys) as view:
        end = view.size()
        withheld = fold_decisions([(row.seq, view.decision(row)) for row in view.decision_rows(end)])
        want = [_without_events(f) for f in scan.frames(view, 0, end, withheld)]
        workers = scan.record_workers(2)
        scanner = scan.Scanner(view, made.data_dir, 0, end, withheld, 1, workers)
        try:
            got = list(scanner)
        finally:
            scanner.close()
            workers.close()
    assert len(want) == len(scan.chunks(0, end)) > 2
    assert got == want
    assert all(proc.returncode is not None for proc in workers.procs)


def test_a_dossier_scanner_using_fewer_processes_than_started_reads_each_piece_from_its_worker(
    made: LogDir, tmp_path: Path
) -> None:
    """`DossierScanner` asked for one process while two were started ahead, with pieces of 256 bytes: every
    piece goes to the one it uses and is read from it, so each dossier's lines are what `plain_line` makes of
    the file's lines, in order."""
    _, pkg = _january(made, tmp_path)
    paths = sorted(pkg.rglob("events.jsonl"))
    workers = scan.dossier_workers(2)
    scanner = scan.DossierScanner(paths, {}, 1, 1 << 20, piece=256, workers=workers)
    try:
        for i, path in enumerate(paths):
            lines = _lines(path)
            want = [(k, scan.plain_line(line, {}) or line) for k, line in enumerate(lines, 1)]
            assert list(scanner.lines(i, lambda: iter(()))) == want
            assert len(scan.pieces(path.stat().st_size, 256)) > 1
    finally:
        scanner.close()
    assert len(paths) >= 2
    assert all(proc.returncode is not None for proc in workers.procs)
