"""The monthly package: a month of the log as a sealed BagIt bag in the MDTO SIP layout (I/O).

Theory of operation
-------------------
`snapshot` makes the package of one month in three streaming passes:

1. plan (`LogView.plan`): the month's leaf range [start, end), the frontier
   at `start`, the decisions before `end`, the checkpoints at `start` and
   `end` (signed now for a prefix when the table has none);
2. records: every record of the range is decrypted once and written as one
   line (see `proof.py`) to its dossier's `events.jsonl` (events) or to
   `proof/other-records.jsonl` (decisions), its leaf to `proof/leaves.txt`;
   media of the dossier's events are decrypted into `media/`. Many
   conversations mean many files: lines of all dossiers are buffered up to
   `SPILL_BYTES` in all, then appended to their files one at a time, so file
   handles and memory are bounded; beyond that, memory
   holds per dossier only its edit/deletion targets and media names;
3. render (`render.py`): per dossier, `events.jsonl` is read back to write
   `transcript.html` and the MDTO XML; then the Serie, the pakbon, the proof
   files and the bag's tag files.

Determinism: every byte derives from the log, the config and the checkpoints
(stored once signed, so a rerun reuses them): names are sorted, times come from
the log, and Bagging-Date is the first day after the month (an interim
package: the day of its checkpoint). Atomicity and no-overwrite: `bag.py`.

Layout (under the bag's `data/`)::

    pakbon.xml
    <serie>.MDTO.xml
    <serie>/<dossier>.MDTO.xml
    <serie>/<dossier>/events.jsonl (+ .bestand.MDTO.xml)
    <serie>/<dossier>/transcript.html (+ .bestand.MDTO.xml)
    <serie>/<dossier>/media/<seq>-<name> (+ .bestand.MDTO.xml)
    proof/range.json, frontier-start.json, leaves.txt, consistency-proof.json,
          checkpoint-start.txt (not for a package starting at record 0),
          checkpoint-end.txt, other-records.jsonl
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

from bridge.archive import proof
from bridge.archive import range as ranges
from bridge.archive.bag import BagBuilder
from bridge.archive.logscan import LogView, Plan, RangeRecord, seal_prefix
from bridge.archive.mdto import Organisation
from bridge.archive.names import safe_name
from bridge.archive.render import render_package
from bridge.blobs import BlobStore
from bridge.config import Settings
from bridge.errors import LogIntegrityError, UsageError
from bridge.events import Event
from bridge.log import checkpoint, crypto, format
from bridge.log.keys import KeyMaterial
from bridge.log.schema import now_ms
from bridge.policy import Withheld, fold_decisions, withheld_for

log = logging.getLogger(__name__)

SPILL_BYTES = 16 << 20  # event lines held in memory before they are appended to their files
MEDIA_NAME_BYTES = 200
LEAF_BATCH = 4096  # leaf lines (65 bytes each) held before they are written
STATUS_CLOSED = "closed month"
STATUS_INTERIM = "open month, interim"


@dataclass(frozen=True)
class ArchiveOptions:
    organisation: Organisation
    timezone: str = "Europe/Amsterdam"

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveOptions:
        o = settings.organisation
        org = Organisation(o.name, o.archive_creator_id, o.appraisal, o.retention_years)
        return cls(org, settings.archive.timezone)


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    month: str
    start: int
    end: int
    status: str
    written: bool  # False: an identical package was already there
    transcripts: tuple[Path, ...]


@dataclass
class DossierState:
    """What pass 2 knows about one conversation-month (bounded: no per-event state)."""

    source: str
    conversation: str
    folder: str  # relative to data/
    name: str | None = None  # the room's name (last m.room.name of the month)
    sha: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    records: int = 0
    edited: dict[str, str] = field(default_factory=dict)
    deleted: dict[str, str | None] = field(default_factory=dict)
    media: dict[str, str] = field(default_factory=dict)  # blob id -> path relative to the folder
    media_info: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (rel, type, filename)

    @property
    def events_rel(self) -> str:
        return f"{self.folder}/events.jsonl"


def package_name(log_id: bytes, month: ranges.Month, interim: bool = False) -> str:
    return f"chatarchief-{log_id.hex()[:8]}-{month}" + ("-interim" if interim else "")


def snapshot(
    data_dir: Path,
    keys: KeyMaterial,
    month: ranges.Month,
    out: Path,
    options: ArchiveOptions,
    *,
    allow_open_month: bool = False,
) -> SnapshotResult:
    """Write the package of `month` to `out` (a new directory); see the module docstring.

    Refuses (UsageError) a month that has not ended unless `allow_open_month`
    (then the package covers the range so far, closed by a fresh checkpoint,
    and says "open month, interim" in bag-info.txt), a month whose end is not
    sealed by a checkpoint yet, and a different package already at `out`.
    """
    win = ranges.window(month, options.timezone)
    interim = now_ms() < win.end_ms
    if interim and not allow_open_month:
        raise UsageError(f"month {month} has not ended yet (it ends {_local(win.end_ms, options.timezone)})")
    with LogView(data_dir, keys) as view:
        plan = view.plan(win, open_month=interim)
        builder = BagBuilder(out)
        try:
            dossiers, other_count = _write_records(
                view, builder, plan, month, BlobStore(data_dir / "blobs", view.media_keys())
            )
            # Sign missing checkpoints only now: pass 2 has recomputed every leaf of the range from its bytes.
            start_note, end_note = _seal(data_dir, keys, plan)
            status = STATUS_INTERIM if interim else STATUS_CLOSED
            end_cp = checkpoint.parse_checkpoint_body(checkpoint.open_note(end_note)[0])
            sealed_ms = end_cp.timestamp_ms if end_cp.timestamp_ms is not None else win.end_ms
            _write_proof(builder, plan, win, status, start_note, end_note)
            transcripts = render_package(builder, keys, month, options, dossiers, plan, sealed_ms, status)
            bagging = _local_date(sealed_ms if interim else win.end_ms, options.timezone)
            builder.finish(
                [
                    ("Bag-Software-Agent", "chatarchief"),
                    ("Bagging-Date", bagging.isoformat()),
                    ("Source-Organization", options.organisation.name),
                    ("External-Identifier", package_name(keys.log_id, month, interim)),
                    (
                        "External-Description",
                        f"Chatarchief package of {month} ({options.timezone}), records"
                        f" {plan.start}..{plan.end - 1}, {len(dossiers)} conversations, {other_count} other records",
                    ),
                    ("Chatarchief-Month", str(month)),
                    ("Chatarchief-Range", f"{plan.start} {plan.end}"),
                    ("Chatarchief-Status", status),
                    ("Chatarchief-Log", keys.key_name),
                ]
            )
            written = builder.publish()
        except BaseException:
            builder.discard()
            raise
    paths = tuple(out / "data" / t for t in transcripts)
    return SnapshotResult(out, str(month), plan.start, plan.end, status, written, paths)


def _seal(data_dir: Path, keys: KeyMaterial, plan: Plan) -> tuple[str | None, str]:
    """The checkpoints at start and end, signing (and storing) a prefix checkpoint where none exists."""
    start_note = plan.start_note
    if start_note is None and plan.start > 0:
        start_note = seal_prefix(data_dir, keys, plan.start, plan.frontier_start.root())
    end_note = plan.end_note or seal_prefix(data_dir, keys, plan.end, plan.end_root)
    return start_note, end_note


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
    view: LogView, builder: BagBuilder, plan: Plan, month: ranges.Month, blobs: BlobStore
) -> tuple[list[DossierState], int]:
    """Pass 2: one line per record into its file, leaves into proof/leaves.txt; returns the dossiers."""
    withheld = fold_decisions(plan.decisions)
    serie = serie_folder(view.keys.log_id)
    dossiers: dict[bytes, DossierState] = {}
    folders: set[str] = set()
    spill = _Spill(builder.root / "data", SPILL_BYTES)
    frontier = plan.frontier_start.copy()
    consistency = proof.ConsistencyBuilder(plan.frontier_start, plan.end)
    other = builder.open("proof/other-records.jsonl")
    leaves = builder.open("proof/leaves.txt")
    leaf_lines: list[bytes] = []  # written LEAF_BATCH at a time
    others = 0
    try:
        for rec in view.records(plan.start, plan.end, view.leaf_before(plan.start)):
            leaf_lines.append(proof.leaf_line(rec.leaf))
            if len(leaf_lines) == LEAF_BATCH:
                leaves.write(b"".join(leaf_lines))
                leaf_lines.clear()
            frontier.append(rec.leaf)
            consistency.add(rec.leaf)
            if rec.header.type != format.RecordType.EVENT:
                other.write(
                    proof.content_line(
                        "decision", rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None
                    )
                )
                others += 1
                continue
            d = orjson.loads(rec.payload)
            state = dossiers.get(rec.header.conversation_tag)
            if state is None:
                state = _new_dossier(d, serie, month, folders)
                dossiers[rec.header.conversation_tag] = state
            line = _event_line(rec, d, state, withheld, builder, blobs)
            spill.write(state.events_rel, line)
            state.sha.update(line)
            state.size += len(line)
            state.records += 1
        leaves.write(b"".join(leaf_lines))
    finally:
        spill.close()
        other.close()
        leaves.close()
    builder.done("proof/other-records.jsonl", other)
    builder.done("proof/leaves.txt", leaves)
    if frontier.size != plan.end or not crypto.hmac_equal(frontier.root(), plan.end_root):
        raise LogIntegrityError(plan.end - 1, "the range's records do not give the signed root at the month's end")
    builder.write("proof/consistency-proof.json", proof.consistency_json(plan.start, plan.end, consistency.proof()))
    for state in dossiers.values():
        builder.add(state.events_rel, state.sha.hexdigest(), state.size)
    return sorted(dossiers.values(), key=lambda s: s.folder), others


def serie_folder(log_id: bytes) -> str:
    return f"chatarchief-{log_id.hex()}"


def _new_dossier(d: dict[str, Any], serie: str, month: ranges.Month, taken: set[str]) -> DossierState:
    source, conversation = str(d["source"]), str(d["conversation"])
    name = safe_name(f"{source}_{conversation}_{month}", 200)
    if name in taken:  # two texts with the same safe name (cannot happen with hashed names; stay safe)
        name = safe_name(f"{name}_{len(taken)}", 200)
    taken.add(name)
    return DossierState(source, conversation, f"{serie}/{name}")


def _event_line(
    rec: RangeRecord,
    d: dict[str, Any],
    state: DossierState,
    withheld: dict[tuple[str, str, str], Withheld],
    builder: BagBuilder,
    blobs: BlobStore,
) -> bytes:
    hidden = withheld_for(Event.from_json(d), withheld) if withheld else None
    if hidden is not None:
        tomb = {"reason": hidden.reason, "by": hidden.by, "at_ms": hidden.at_ms, "decision_seq": hidden.decision_seq}
        return proof.sealed_line(rec.seq, rec.header_bytes, rec.commitment, rec.ciphertext_hash, tomb)
    kind, target = d.get("kind"), d.get("relates_to")
    if isinstance(target, str):
        if kind == "edit":
            state.edited[target] = str(d["event_id"])
        elif kind == "deletion":
            sender = d.get("sender")
            state.deleted[target] = sender if isinstance(sender, str) else None
    if kind == "state" and isinstance(content := d.get("content"), dict) and content.get("type") == "m.room.name":
        inner = content.get("content")
        name = inner.get("name") if isinstance(inner, dict) else None
        state.name = name if isinstance(name, str) and name else state.name
    files: dict[str, str] = {}
    for att in d.get("attachments") or ():
        blob_id = att.get("blob_id")
        if att.get("status") != "stored" or not isinstance(blob_id, str):
            continue
        rel = state.media.get(blob_id) or _extract_media(rec.seq, att, blob_id, state, builder, blobs)
        if rel is not None:
            files[blob_id] = rel
    return proof.content_line("event", rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, files)


def _extract_media(
    seq: int, att: dict[str, Any], blob_id: str, state: DossierState, builder: BagBuilder, blobs: BlobStore
) -> str | None:
    try:
        data = blobs.get(blob_id)
    except (FileNotFoundError, ValueError):
        log.warning(
            "media blob missing from the blob store; the package lists it as absent",
            extra={"seq": seq, "blob_id": blob_id},
        )
        return None
    want = att.get("sha256")
    if isinstance(want, str) and hashlib.sha256(data).hexdigest() != want.lower():
        raise LogIntegrityError(seq, f"media blob {blob_id} does not hold the content its event names")
    filename = att.get("filename") if isinstance(att.get("filename"), str) else None
    rel = f"media/{seq}-{safe_name(filename or blob_id[:16], MEDIA_NAME_BYTES)}"
    builder.write(f"{state.folder}/{rel}", data)
    state.media[blob_id] = rel
    media_type = att.get("media_type") if isinstance(att.get("media_type"), str) else None
    state.media_info.append((rel, media_type, filename))
    return rel


def _write_proof(
    builder: BagBuilder,
    plan: Plan,
    win: ranges.Window,
    status: str,
    start_note: str | None,
    end_note: str,
) -> None:
    doc = {
        "month": str(win.month),
        "timezone": win.timezone,
        "month_start_ms": win.start_ms,
        "month_end_ms": win.end_ms,
        "start": plan.start,
        "end": plan.end,
        "status": status,
        "rule": "start/end = first record whose appended_ms >= the month's/next month's first instant",
    }
    builder.write("proof/range.json", proof.pretty_json(doc))
    builder.write("proof/frontier-start.json", proof.frontier_json(plan.frontier_start))
    if start_note is not None:
        builder.write("proof/checkpoint-start.txt", start_note.encode("utf-8"))
    builder.write("proof/checkpoint-end.txt", end_note.encode("utf-8"))


def _local(ms: int, timezone: str) -> str:
    return datetime.fromtimestamp(ms / 1000, ranges.zone(timezone)).isoformat(timespec="minutes")


def _local_date(ms: int, timezone: str) -> date:
    return datetime.fromtimestamp(ms / 1000, ranges.zone(timezone)).date()


def interim_package(data_dir: Path, keys: KeyMaterial, options: ArchiveOptions, destination: Path) -> SnapshotResult:
    """The current month so far, closed by a fresh checkpoint (for the demo): `destination/<name>-interim`.

    Labelled "open month, interim" in bag-info.txt and proof/range.json; the
    real package of the month is written once it has ended.
    """
    month = ranges.month_of(now_ms(), options.timezone)
    out = destination / package_name(keys.log_id, month, interim=True)
    return snapshot(data_dir, keys, month, out, options, allow_open_month=True)


__all__ = ["ArchiveOptions", "SnapshotResult", "interim_package", "package_name", "snapshot"]
