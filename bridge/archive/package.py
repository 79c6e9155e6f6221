"""The monthly package: a month of the log as a sealed BagIt bag in the MDTO SIP layout (I/O).

Theory of operation
-------------------
`snapshot` makes the package of one month in three streaming passes:

1. plan (`plan.py` over the read API `bridge.log.view`): the month's leaf
   range [start, end), the frontier at `start`, the decisions before `end`,
   the checkpoints at `start` and `end` (asked of the injected `seal` when the
   log has none at that size: the archive never signs), and the decisions
   before `start` with inclusion proofs;
2. records: every record of the range is decrypted once and written as one
   line (see `proof.py`) to its dossier's `events.jsonl` (events) or to
   `proof/other-records.jsonl` (decisions, and KEY/BLOB records, which are
   stored in the clear and need no key), its leaf to `proof/leaves.txt`;
   media of the dossier's events are decrypted into `media/`; a missing blob
   is refused (exit 1) unless `allow_missing_media`, which lists it in
   `proof/missing-media.jsonl`. Many
   conversations mean many files: lines of all dossiers are buffered up to
   `SPILL_BYTES` in all, then appended to their files one at a time, so file
   handles and memory are bounded; beyond that, memory
   holds per dossier only its edit/deletion targets and media names;
3. render (`render.py`, the same code verify-package runs): per dossier, `events.jsonl` is read back to write
   `transcript.html` and the MDTO XML (each dossier's files start their fsync once written); then the Serie,
   the pakbon, the proof files and the bag's tag files.

With more than one process and a log long enough for the parallel record pass, the record-pass workers and the
rendering helpers are started before the plan (`_Started`), so they import while it scans the log.

Determinism: every byte derives from the records, the render parameters
(`derive.RenderParams`, carried in `proof/package.json`) and the checkpoints
(stored once signed, so a rerun reuses them): names are sorted, times come from
the log, and Bagging-Date is the day of the newest checkpoint in the package
(`derive.bagged_ms`). `derive.py` holds what both sides share; dossiers are
written into pending folders and renamed after pass 2, once the room's name
(which names the folder) is known.

Plaintext is only ever written under `<data_dir>/tmp/` (0700; temp bags of a
crashed run are removed at the next start) and then published to `out`:
renamed, or copied beside `out` and renamed (`bag.py`). No-overwrite: `bag.py`.

Layout (under the bag's `data/`)::

    pakbon.xml
    <serie>.MDTO.xml
    <serie>/<dossier>.MDTO.xml
    <serie>/<dossier>/events.jsonl (+ .bestand.MDTO.xml)
    <serie>/<dossier>/transcript.html (+ .bestand.MDTO.xml)
    <serie>/<dossier>/media/<seq>-<name> (+ .bestand.MDTO.xml)
    proof/range.json, package.json, frontier-start.json, leaves.txt, consistency-proof.json,
          checkpoint-start.txt (not for a package starting at record 0),
          checkpoint-end.txt, other-records.jsonl, decisions-before.jsonl, missing-media.jsonl
  (bag root) LEESMIJ.txt: a tag file, so it sits beside bag-info.txt where a person opens the package
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bridge import helper_process
from bridge.archive import derive, proof, scan
from bridge.archive import range as ranges
from bridge.archive.bag import BagBuilder, remove_stale
from bridge.archive.derive import STATUS_CLOSED, STATUS_INTERIM, DossierState, RenderParams, package_name
from bridge.archive.gaps import LISTING_REL, Listing
from bridge.archive.mdto import Organisation
from bridge.archive.plan import Carried, Plan, Seal, carried_decisions, closing, plan, seal_notes
from bridge.archive.render import default_workers, render_helpers, render_package
from bridge.archive.signing_keys import FILE as SIGNING_KEYS_FILE
from bridge.archive.signing_keys import signing_keys_json
from bridge.archive.witnessed import FILE as WITNESSED_FILE
from bridge.archive.witnessed import witnessed_json, witnessed_notes
from bridge.blobs import BlobStore
from bridge.clock import now_ms
from bridge.errors import Check, LogIntegrityError, UsageError
from bridge.events import Attachment, Event
from bridge.log import checkpoint, crypto, merkle
from bridge.log.keys import KeyMaterial
from bridge.log.view import LogView, RangeRecord
from bridge.policy import Withheld, fold_decisions

SPILL_BYTES = 16 << 20  # event lines held in memory before they are appended to their files
TMP_DIR = "tmp"  # under the data dir: the only place plaintext is written before `out`
#: Content key of a line in proof/other-records.jsonl, per record type.
OTHER_KEYS = scan.OTHER_KEYS


class MissingMediaError(LogIntegrityError):
    """A stored attachment's blob is gone from the blob store (snapshot without --allow-missing-media)."""


@dataclass(frozen=True)
class ArchiveOptions:
    organisation: Organisation
    timezone: str = "Europe/Amsterdam"


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    month: str
    start: int
    end: int
    status: str
    written: bool  # False: an identical package was already there
    transcripts: tuple[Path, ...]
    missing_media: int = 0


def writer_seal(data_dir: Path, keys: KeyMaterial) -> Seal:
    """The default `seal`: `bridge.log.writer.seal_at` (the running bot's writer over its control socket,
    else a local `LogStore.seal_prefix`, which authenticates the leaves before it signs); the archive
    never signs. Inside `run` the scheduler passes `seal_in_loop` instead."""

    def seal(size: int) -> str:
        from bridge.log.writer import seal_at

        with ThreadPoolExecutor(1) as pool:  # seal_at runs its own event loop; the caller may be in one (demo)
            return pool.submit(seal_at, data_dir, keys, size).result()

    return seal


def private_workdir(data_dir: Path) -> Path:
    """`<data_dir>/tmp` (0700), with temp bags of crashed runs removed."""
    work = data_dir / TMP_DIR
    work.mkdir(mode=0o700, exist_ok=True)
    os.chmod(work, 0o700)
    remove_stale(work)
    return work


def snapshot(
    data_dir: Path,
    keys: KeyMaterial,
    month: ranges.Month,
    out: Path,
    options: ArchiveOptions,
    *,
    seal: Seal | None = None,
    allow_open_month: bool = False,
    allow_missing_media: bool = False,
    interim: bool = False,
    workers: int | None = None,
) -> SnapshotResult:
    """Write the package of `month` to `out` (a new directory); see the module docstring.

    `seal(size)` gives the signed checkpoint note at a tree size, signing one if the log
    has none (the log's writer does that; default `writer_seal`); the note is checked
    against the root this snapshot computed. Refuses (UsageError) a month that has not ended unless
    `interim` (or `allow_open_month`; then the package covers the range so far), `interim` for a month that
    has ended, and a different
    package already at `out`; refuses (MissingMediaError, exit 1) a stored attachment
    whose blob is gone unless `allow_missing_media`. Transcripts and MDTO are rendered in up to `workers`
    processes (default: the CPUs this process may use); the package is the same whatever the number.
    """
    _check_destination(out)
    win = ranges.window(month, options.timezone)
    now = now_ms()
    open_now = now < win.end_ms
    if interim and not open_now:
        raise UsageError(
            f"month {month} has ended ({_local(win.end_ms, options.timezone)}): write its whole package,"
            " without --interim"
        )
    if interim and now < win.start_ms:
        raise UsageError(f"month {month} has not begun yet (it begins {_local(win.start_ms, options.timezone)})")
    if open_now and not (allow_open_month or interim):
        raise UsageError(
            f"month {month} has not ended yet (it ends {_local(win.end_ms, options.timezone)}); for the month so"
            " far (an official leaving office) add --interim"
        )
    params = RenderParams(options.organisation, options.timezone, keys.log_id.hex(), month)
    if seal is None:
        seal = writer_seal(data_dir, keys)
    work = private_workdir(data_dir)
    with LogView(data_dir, keys) as view, _Started(workers, view.size()) as started:
        p = plan(view, win, open_month=open_now)
        began = view.first_appended_ms()
        if p.start == p.end and began is not None and win.end_ms <= began:
            raise UsageError(
                f"month {month} ended before this log began ({_local(began, options.timezone)}): no record of it"
                " is here. Months follow the time a record was appended, so messages imported later (with older"
                " dates) are in the package of the month they were imported (docs/archive-package.md)"
            )
        carried = carried_decisions(view, p)
        builder = BagBuilder(out, work)
        try:
            blobs = BlobStore(data_dir / "blobs", view.media_keys())
            listing = Listing()
            dossiers, others, missing = _write_records(
                view, builder, p, params, blobs, allow_missing_media, listing, data_dir, started.procs, started.records
            )
            builder.sync_early(state.events_rel for state in dossiers)  # written while the rest is rendered
            # Ask for missing checkpoints only now: pass 2 has recomputed every leaf of the range from its bytes.
            start_note, end_note = seal_notes(keys, p, seal)
            end_cp = checkpoint.parse_checkpoint_body(checkpoint.open_note(end_note)[0])
            sealed_ms = end_cp.timestamp_ms if end_cp.timestamp_ms is not None else win.end_ms
            closed = _closing(builder, view, p, win) if sealed_ms < win.end_ms else None
            closed_ms = None if closed is None else closed[0]
            status = derive.status_of(sealed_ms, win, closed_ms is not None)
            _write_proof(builder, p, win, status, start_note, end_note, params, carried)
            builder.write(LISTING_REL, listing.to_json(win, sealed_ms))
            cosigned = witnessed_json(view, data_dir, p.end)  # witnesses' checkpoints extending the end, if any
            if cosigned is not None:
                builder.write(WITNESSED_FILE, cosigned)
            notes = [n for n in (start_note, end_note, closed and closed[1]) if isinstance(n, str)]
            rotations = signing_keys_json(view, [*notes, *witnessed_notes(cosigned)])  # pinned key reaches all
            if rotations is not None:
                builder.write(SIGNING_KEYS_FILE, rotations)
            rendered = render_package(
                builder, params, keys.key_name, dossiers, p.start, p.end, sealed_ms, status,
                workers=started.procs, helpers=started.helpers,
                rendered=lambda files: builder.sync_early(f[0] for f in files),
            )  # fmt: skip
            tags = derive.tag_files(
                params, keys.key_name, win, (p.start, p.end), rendered.dossiers, others, (sealed_ms, closed_ms), status,
                rendered.coverage, liveness=True, witnessed=cosigned is not None, signing_keys=rotations is not None,
            )  # fmt: skip
            builder.finish(tags.info, tags.files)
            written = builder.publish()
        except BaseException:
            builder.discard()
            raise
    paths = tuple(out / "data" / t for t in rendered.transcripts)
    return SnapshotResult(out, str(month), p.start, p.end, status, written, paths, missing)


class _Started:
    """The processes a snapshot may use (`workers`; default: the CPUs it may run on), the record pass's and the
    renderers' started at once when the log is long enough that the month may need them: they import while the
    plan is made (a scan of the log's headers) instead of after it. Ended on leaving, used or not.

    Decided by the whole log's size: the month's own range is known only from the plan's scan (`range.py`'s
    rule; there is no index by append time, and a search would be wrong when the clock stepped back), so a
    short month of a long log starts them and kills them unused. Measured (2-core x86-64, CPython 3.11,
    /tmp timing script, median of 7): each process costs about 125 ms of CPU once it has imported (2 record
    workers and 1 renderer: ~380 ms of CPU beside the plan, 4 + 3: ~890 ms), 7 to 14 ms each when killed at
    once; the parent spends 2 to 3 ms of CPU on them (3 to 30 ms wall to start, 13 to 17 ms to end)."""

    def __init__(self, workers: int | None, log_size: int) -> None:
        self.procs = default_workers() if workers is None else workers
        self.records: helper_process.Started | None = None
        self.helpers: helper_process.Started | None = None
        if self.procs > 1 and log_size >= scan.PARALLEL_MIN_RECORDS:
            try:
                self.records = scan.record_workers(self.procs)
                self.helpers = render_helpers(self.procs - 1)
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> _Started:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for started in (self.records, self.helpers):
            if started is not None:
                started.close()


class _Spill:
    """Appends to many files with bounded memory and one file open at a time.

    Lines are buffered per file; when all buffers together exceed `limit`
    bytes, every buffer is appended to its file (open, write, close). So memory
    is bounded by `limit` and the number of opens by (bytes / limit) x files,
    whatever the number of conversations.
    """

    def __init__(self, root: Path, limit: int) -> None:
        self._root = root
        self._limit = limit
        self._buffers: dict[str, list[bytes]] = {}
        self._held = 0
        self.opens = 0

    def write(self, rel: str, data: bytes) -> None:
        buf = self._buffers.get(rel)
        if buf is None:
            buf = self._buffers[rel] = []
            (self._root / rel).parent.mkdir(parents=True, exist_ok=True)
        buf.append(data)
        self._held += len(data)
        if self._held >= self._limit:
            self.flush()

    def flush(self) -> None:
        for rel, buf in self._buffers.items():
            if buf:
                with (self._root / rel).open("ab") as fh:
                    fh.write(b"".join(buf))
                self.opens += 1
                buf.clear()
        self._held = 0

    def close(self) -> None:
        self.flush()


def _write_records(
    view: LogView,
    builder: BagBuilder,
    p: Plan,
    params: RenderParams,
    blobs: BlobStore,
    allow_missing: bool,
    listing: Listing,
    data_dir: Path,
    workers: int = 1,
    started: helper_process.Started | None = None,
) -> tuple[list[DossierState], int, int]:
    """Pass 2: one line per record into its file, leaves into proof/leaves.txt; returns the dossiers.

    The per-record work (authenticate, decrypt, parse, make the line) runs in `workers` processes when the
    range is long enough to repay starting them (`scan.PARALLEL_MIN_RECORDS`), a frame per chunk (`scan.Frame`:
    leaves, their subtree roots, runs of plain lines); leaf lines, the frontier grown a piece at a time, the
    consistency proof, dossier state and writes stay here, applied in record order (the package is the same
    either way). `started`: record-pass processes started ahead (used if the pass runs in processes)."""
    withheld = fold_decisions(p.decisions)
    dossiers: dict[bytes, DossierState] = {}
    spill = _Spill(builder.root / "data", SPILL_BYTES)
    frontier = p.frontier_start.copy()
    pieces = merkle.frontier_subtrees(p.frontier_start)  # then the range's, chunk by chunk: the consistency proof's
    other = builder.open("proof/other-records.jsonl")
    leaves = builder.open("proof/leaves.txt")
    media = _MediaCopier(builder, blobs, allow_missing)
    others = 0
    scanner: scan.Scanner | None = None
    if workers > 1 and p.end - p.start >= scan.PARALLEL_MIN_RECORDS:
        scanner = scan.Scanner(view, data_dir, p.start, p.end, withheld, workers, started)
    try:
        stream = scanner if scanner is not None else scan.frames(view, p.start, p.end, withheld)
        serie = params.serie
        for frame in stream:
            leaves.write(frame.leaf_lines)
            for piece in frame.pieces:
                frontier = merkle.append_subtree(frontier, piece)
            pieces += frame.pieces
            for entry in frame.entries:
                if type(entry) is scan.Run:
                    state = dossiers.get(entry.tag)
                    if state is None:
                        state = dossiers[entry.tag] = derive.new_dossier(serie, entry.source, entry.conversation)
                    line, count = entry.lines, entry.lines_n
                elif type(entry) is scan.Fallback:
                    rec = entry.record
                    event = entry.event if entry.event is not None else scan.parse_event(rec)
                    state = dossiers.get(entry.tag)
                    if state is None:
                        state = dossiers[entry.tag] = derive.new_dossier(serie, event.source, event.conversation)
                    line, count = _event_line(rec, event, state, withheld, media, listing), 1
                else:
                    assert type(entry) is scan.Others
                    other.write(entry.lines)
                    others += entry.lines_n
                    continue
                spill.write(state.events_rel, line)
                state.sha.update(line)
                state.size += len(line)
                state.records += count
            if frame.error is not None:
                raise frame.error
    finally:
        if scanner is not None:
            scanner.close()
        spill.close()
        other.close()
        leaves.close()
    builder.done("proof/other-records.jsonl", other)
    builder.done("proof/leaves.txt", leaves)
    if frontier.size != p.end or not crypto.hmac_equal(frontier.root(), p.end_root):
        raise LogIntegrityError(
            p.end - 1,
            "the range's records do not give the signed root at the month's end",
            f"size {p.end}, root {p.end_root.hex()}",
            f"size {frontier.size}, root {frontier.root().hex()}",
            check=Check.CHECKPOINT_ROOT,
        )
    builder.write("proof/consistency-proof.json", proof.consistency_json(p.start, p.end, _consistency(p, pieces)))
    moved = _settle_folders(builder, params, dossiers.values())
    for state in dossiers.values():
        builder.add(state.events_rel, state.sha.hexdigest(), state.size)
    notices = [derive.missing_line(seq, blob_id, moved[folder] + rest) for seq, blob_id, folder, rest in media.notices]
    builder.write("proof/missing-media.jsonl", b"".join(notices))
    return sorted(dossiers.values(), key=lambda s: s.folder), others, len(notices)


def _consistency(p: Plan, pieces: list[merkle.Subtree]) -> list[bytes]:
    """PROOF(start, end) (RFC 9162): each range's root from the subtrees that tile it (the start frontier's,
    then the chunks' aligned ones; `proof.ConsistencyBuilder` gives the same from the leaves)."""
    return [merkle.range_root(pieces, lo, hi) for lo, hi in proof.consistency_ranges(p.start, p.end)]


def _settle_folders(builder: BagBuilder, params: RenderParams, dossiers: Iterable[DossierState]) -> dict[str, str]:
    """Move each dossier from its pending folder to the one its room name gives (known only once the month's
    records are read); returns pending folder -> final folder. Media already written move with it."""
    moved: dict[str, str] = {}
    data = builder.root / "data"
    for state in dossiers:
        final = derive.dossier_folder(params.serie, state.source, state.conversation, params.month, state.name)
        pending, state.folder = state.folder, final
        moved[pending] = final
        if (data / pending).exists():
            os.rename(data / pending, data / final)
        prefix = pending + "/"
        for rel in [r for r in builder.payload if r.startswith(prefix)]:
            builder.payload[final + "/" + rel[len(prefix) :]] = builder.payload.pop(rel)
    return moved


def _event_line(
    rec: RangeRecord,
    event: Event,
    state: DossierState,
    withheld: dict[tuple[str, str, str], Withheld],
    media: _MediaCopier,
    listing: Listing,
) -> bytes:
    return derive.event_line(
        rec.seq,
        rec.header_bytes,
        rec.salt,
        rec.payload,
        rec.ciphertext_hash,
        rec.commitment,
        event,
        state,
        withheld,
        media,
        listing,
    )


class _MediaCopier:
    """The snapshot's media hook: decrypts a stored blob into the package, or notes it missing (if allowed)."""

    def __init__(self, builder: BagBuilder, blobs: BlobStore, allow_missing: bool) -> None:
        self._builder = builder
        self._blobs = blobs
        self._allow = allow_missing
        #: (seq, blob id, pending folder, path after it) of each missing blob, in record order
        self.notices: list[tuple[int, str, str, str]] = []

    def __call__(self, seq: int, att: Attachment, rel: str) -> bool:
        blob_id = str(att.blob_id)
        try:
            data = self._blobs.get(blob_id)
        except FileNotFoundError:
            if not self._allow:
                raise MissingMediaError(
                    seq,
                    f"media blob {blob_id} of record {seq} is missing from the blob store; restore it, or write"
                    " the package with --allow-missing-media (each absence is then listed in the package)",
                    check=Check.BLOB,
                ) from None
            folder, rest = rel.split("/media/", 1)
            self.notices.append((seq, blob_id, folder, "/media/" + rest))
            return False
        except ValueError as exc:
            raise LogIntegrityError(seq, f"media blob {blob_id} does not decrypt: {exc}", check=Check.BLOB) from None
        want = att.sha256
        if isinstance(want, str) and (got := hashlib.sha256(data).hexdigest()) != want.lower():
            raise LogIntegrityError(
                seq, f"media blob {blob_id} does not hold the content its event names", want, got, check=Check.BLOB
            )
        self._builder.write(rel, data)
        return True


def _closing(builder: BagBuilder, view: LogView, p: Plan, win: ranges.Window) -> tuple[int, str] | None:
    """Write proof/closing.json (+ checkpoint-close.txt) when the log can show the month is over; returns the
    closing checkpoint's time (ms) and note, None if the log cannot show it yet."""
    c = closing(view, p, win)
    if c is None:
        return None
    builder.write(
        "proof/closing.json",
        proof.closing_json(p.end, c.header, c.commitment, c.ciphertext_hash, c.size, c.inclusion, c.consistency),
    )
    builder.write("proof/checkpoint-close.txt", c.note.encode("utf-8"))
    cp = checkpoint.parse_checkpoint_body(checkpoint.open_note(c.note)[0])
    return (cp.timestamp_ms if cp.timestamp_ms is not None else win.end_ms), c.note


def _write_proof(
    builder: BagBuilder,
    p: Plan,
    win: ranges.Window,
    status: str,
    start_note: str | None,
    end_note: str,
    params: RenderParams,
    carried: list[Carried],
) -> None:
    builder.write("proof/range.json", derive.range_json(win, p.start, p.end, status))
    builder.write("proof/package.json", params.to_json())
    builder.write("proof/frontier-start.json", proof.frontier_json(p.frontier_start))
    if start_note is not None:
        builder.write("proof/checkpoint-start.txt", start_note.encode("utf-8"))
    builder.write("proof/checkpoint-end.txt", end_note.encode("utf-8"))
    lines = [
        proof.carried_line(
            c.record.seq, c.record.header_bytes, c.record.salt, c.record.payload, c.record.ciphertext_hash, c.inclusion
        )
        for c in carried
    ]
    builder.write("proof/decisions-before.jsonl", b"".join(lines))


def _check_destination(out: Path) -> None:
    """Refuse at once (not after the work) a package path that cannot be created."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the package at {out}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create the package at {out}: {parent} is not writable")


def _local(ms: int, timezone: str) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000, ranges.zone(timezone)).isoformat(timespec="minutes")


def interim_package(
    data_dir: Path, keys: KeyMaterial, options: ArchiveOptions, destination: Path, seal: Seal | None = None
) -> SnapshotResult:
    """The current month so far, closed by a fresh checkpoint (for the demo): `destination/<name>-interim`.

    Labelled "open month, interim" in bag-info.txt and proof/range.json; the
    real package of the month is written once it has ended.
    """
    month = ranges.month_of(now_ms(), options.timezone)
    out = destination / package_name(keys.log_id, month, interim=True)
    return snapshot(data_dir, keys, month, out, options, seal=seal, allow_open_month=True)


__all__ = [
    "STATUS_CLOSED",
    "STATUS_INTERIM",
    "ArchiveOptions",
    "MissingMediaError",
    "SnapshotResult",
    "interim_package",
    "package_name",
    "snapshot",
]
