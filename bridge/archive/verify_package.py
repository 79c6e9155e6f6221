"""Verify a monthly package with only the package and the log's public key (I/O, read-only).

Checks, in order; the first failure raises `PackageIntegrityError` naming it:

1. shape and BagIt fixity: the bag root holds exactly the tag files a package
   has (`bagit.txt` gone from a folder with `data/` is tampering, not a usage
   error), then `bagit.Bag(path).validate()` (every payload and tag file against
   its manifest, Payload-Oxum, completeness);
2. the end checkpoint (and the start checkpoint, for a package not starting at
   record 0) verify against the public key and have the range's sizes; the start
   frontier gives the start root and, extended with `leaves.txt`, the end root;
3. the render parameters (`proof/package.json`: declared, not proven) give the
   month's window; `proof/range.json` must be the one derived from them, the
   range and the status the signed end checkpoint's time gives;
4. record lines, streamed with a cap of `MAX_LINE_BYTES` per line: first the
   decisions from before the range (`decisions-before.jsonl`, each with an RFC
   9162 inclusion proof against the start checkpoint), then
   `proof/other-records.jsonl` (decisions, KEY and BLOB records: never an
   event), then each dossier's `events.jsonl`. Every line recomputes to the leaf
   at its position, covers it once, in log order, within the month's window of
   append times; and every line equals the line the package writer derives from
   the same record (`derive.event_line`): the `files` of a stored attachment,
   the tombstone of a withheld event (which must be what folding the package's
   decisions gives, for a decision about that conversation), and no bare line.
   A dossier holds one conversation (one conversation tag, unique among
   dossiers) and its folder name is the one derived from that conversation;
   every stored attachment is in the package with its SHA-256, unless
   `proof/missing-media.jsonl` declares it missing;
5. the RFC 9162 consistency proof from the start to the end checkpoint;
6. every `*.MDTO.xml` validates against the MDTO 1.0.1 XSD;
7. re-derivation: the package writer's renderers run again over the proven
   lines into a sink that compares (`_Rederive`): transcripts, MDTO XML,
   pakbon, bag-info.txt, LEESMIJ.txt and both manifests must be byte-identical,
   and no payload file may exist that the records do not give;
8. with a previous package: its end checkpoint is byte-identical to this
   package's start checkpoint, and its range ends where this one starts.

Memory is flat: lines are streamed (each at most `MAX_LINE_BYTES`), files are
hashed in chunks, `leaves.txt` is read through mmap; only per-dossier edit,
deletion and media names and the decisions are held, as in `snapshot`.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import bagit
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge import helper_process
from bridge.archive import derive, mdto, proof, scan
from bridge.archive import range as ranges
from bridge.archive.bag import HashOnly, OutFile, tag_files
from bridge.archive.derive import DossierState, RenderParams
from bridge.archive.gaps import LISTING_REL, Listing, Summary
from bridge.archive.leesmij import DOCS
from bridge.archive.render import default_workers, render_helpers, render_package
from bridge.archive.signing_keys import FILE as SIGNING_KEYS_FILE
from bridge.archive.signing_keys import SigningKeysError, chain_from_package
from bridge.archive.witnessed import FILE as WITNESSED_FILE
from bridge.archive.witnessed import WitnessedError, check_witnessed
from bridge.errors import Check, Evidence, LogIntegrityError, UsageError
from bridge.events import Attachment, EncodingError, Event
from bridge.log import checkpoint, crypto, merkle
from bridge.log.decision import Decision, DecisionError, parse_decision
from bridge.log.rotation import KeyChain
from bridge.policy import Withheld, fold_decisions
from bridge.witness.note import Verifier

#: The longest record line read (64 MiB): one event's payload holds its normalised content and its raw
#: original, each bounded by `max_message_bytes` (16 MiB by default), plus JSON escaping and base64 fields.
#: Media are files, never inline. A longer line is refused (exit 1) without being read into memory.
MAX_LINE_BYTES = 64 << 20
_LINE_PIECE = 1 << 20
#: The dossiers' lines are read in worker processes (`scan.DossierScanner`) when their files hold at least this
#: many bytes in all and more than one process may be used (starting an interpreter costs about a few megabytes' work).
SCAN_MIN_BYTES = 8 << 20
#: The largest small proof file read whole (range.json, package.json, checkpoints, frontier, proofs).
MAX_SMALL_FILE = 4 << 20
_T = TypeVar("_T")
TAG_FILES = frozenset(
    {"bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt", "LEESMIJ.txt", DOCS, "data"}
)
PROOF_INPUTS = (  # payload files taken as they are (each checked above, not rendered)
    "proof/range.json",
    "proof/package.json",
    "proof/frontier-start.json",
    "proof/leaves.txt",
    "proof/consistency-proof.json",
    "proof/checkpoint-start.txt",
    "proof/checkpoint-end.txt",
    "proof/other-records.jsonl",
    "proof/decisions-before.jsonl",
    "proof/missing-media.jsonl",
    "proof/closing.json",
    "proof/checkpoint-close.txt",
    WITNESSED_FILE,
    SIGNING_KEYS_FILE,
)


class PackageIntegrityError(LogIntegrityError):
    """The package is not intact or not what the log signed; the message says where (file, line, record)."""

    def __init__(
        self, check: Check, reason: str, expected: Evidence = None, found: Evidence = None, *, seq: int | None = None
    ) -> None:
        super().__init__(seq, reason, expected, found, check=check)

    def _detail(self) -> str:
        detail = self.reason  # names the file, its line and the record itself
        if self.expected is not None or self.found is not None:
            detail += f" (expected {self.expected}, found {self.found})"
        return detail


@dataclass(frozen=True)
class PackageReport:
    month: str
    start: int
    end: int
    status: str
    record_files: int
    media_files: int
    mdto_files: int
    root: bytes
    missing_media: int = 0
    #: Pinned witnesses (names) that cosigned a checkpoint extending this package (`--witness-key`).
    witnessed_by: tuple[str, ...] = ()
    #: From proof/liveness.json as re-derived (None: a package made before the listing, with nothing to list).
    liveness: Summary | None = None

    def to_json(self) -> dict[str, object]:
        """The report as `verify-package --json` prints it."""
        return {
            "intact": True,
            "month": self.month,
            "start": self.start,
            "end": self.end,
            "status": self.status,
            "record_files": self.record_files,
            "media_files": self.media_files,
            "mdto_files": self.mdto_files,
            "missing_media": self.missing_media,
            "root": self.root.hex(),
            "witnessed_by": list(self.witnessed_by),
            "liveness": None if self.liveness is None else self.liveness.to_json(),
        }


def _fail(
    check: Check, reason: str, expected: Evidence = None, found: Evidence = None, *, seq: int | None = None
) -> PackageIntegrityError:
    return PackageIntegrityError(check, reason, expected, found, seq=seq)


def verify_package(
    path: Path,
    public_key: tuple[str, Ed25519PublicKey],
    previous: Path | None = None,
    *,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
    workers: int | None = None,
) -> PackageReport:
    """Every check of the module docstring; the first failure raises `PackageIntegrityError`. Rendering (step 7)
    runs in up to `workers` processes (default: the CPUs this process may use).

    The bag's fixity (step 1: hashing every file) runs on a thread beside the other checks, which need only its
    manifest; whatever they find, a bag that is not intact is what is reported, as if it had been checked first.
    """
    _check_shape(path, "")
    if previous is not None:
        _check_shape(previous, "--previous ")
    bag = _BagCheck(path)
    try:
        report = _verify(path, bag.manifest, public_key, previous, witnesses, quorum, workers)
    except Exception:
        bag.result()  # the bag's own error first, if it has one
        raise
    bag.result()
    return report


def _verify(
    path: Path,
    manifest: dict[str, str],
    public_key: tuple[str, Ed25519PublicKey],
    previous: Path | None,
    witnesses: Sequence[Verifier],
    quorum: int,
    workers: int | None,
) -> PackageReport:
    """Steps 2 to 8, given the bag's payload manifest (path relative to data/ -> sha256 hex). The processes that
    read the dossiers' lines, when they will be used, start first: they import while the first checks run."""
    procs = default_workers() if workers is None else workers
    early = scan.dossier_workers(procs) if _scans(sorted((path / "data").rglob("events.jsonl")), procs) else None
    helpers: helper_process.Started | None = None
    try:
        if early is not None:  # a package this large renders in helpers too: they import meanwhile as well
            helpers = render_helpers(procs - 1)
        return _verify_steps(path, manifest, public_key, previous, witnesses, quorum, procs, early, helpers)
    finally:
        if early is not None:
            early.close()
        if helpers is not None:
            helpers.close()


def _scans(paths: list[Path], procs: int) -> bool:
    """Whether the dossiers' lines are read in worker processes (`scan.DossierScanner`)."""
    return procs > 1 and len(paths) > 1 and sum(_size(p) for p in paths) >= SCAN_MIN_BYTES


def _verify_steps(
    path: Path,
    manifest: dict[str, str],
    public_key: tuple[str, Ed25519PublicKey],
    previous: Path | None,
    witnesses: Sequence[Verifier],
    quorum: int,
    procs: int,
    early: helper_process.Started | None,
    helpers: helper_process.Started | None = None,
) -> PackageReport:
    data = path / "data"
    pdir = data / "proof"
    rng = _json(pdir / "range.json")
    start, end = rng.get("start"), rng.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise _fail(Check.PACKAGE_RANGE, "proof/range.json: start and end are not a valid range")
    chain = _signing_chain(pdir, manifest, public_key)
    end_cp = _checkpoint(pdir / "checkpoint-end.txt", chain, end, "end")
    start_root = merkle.EMPTY_ROOT
    if start > 0:
        start_root = _checkpoint(pdir / "checkpoint-start.txt", chain, start, "start").root
    elif (pdir / "checkpoint-start.txt").exists():
        raise _fail(Check.PACKAGE_CHECKPOINT, "proof/checkpoint-start.txt present in a package that starts at record 0")
    try:
        frontier = proof.parse_frontier(_small(pdir / "frontier-start.json"))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise _fail(Check.PACKAGE_RANGE, f"proof/frontier-start.json is unreadable: {exc}") from None
    if frontier.size != start or not crypto.hmac_equal(frontier.root(), start_root):
        raise _fail(
            Check.PACKAGE_RANGE,
            "proof/frontier-start.json does not give the start checkpoint's root",
            f"size {start}, root {start_root.hex()}",
            f"size {frontier.size}, root {frontier.root().hex()}",
        )
    params, win = _params(pdir)
    sealed_ms = end_cp.timestamp_ms if end_cp.timestamp_ms is not None else win.end_ms
    closed_ms = _check_closing(pdir, chain, win, end, end_cp.root, sealed_ms)
    status = derive.status_of(sealed_ms, win, closed_ms is not None)
    _check_range(pdir, rng, win, start, end, status, sealed_ms)
    sink = _Rederive(path, manifest)
    records = _Records(data, sink, params, win, start, end, start_root, procs, early)
    counts = records.check(pdir / "leaves.txt", frontier, end_cp.root)
    _check_consistency(pdir / "consistency-proof.json", start, end, start_root, end_cp.root)
    mdto_files = _check_mdto(data)
    witnessed_by = _check_witnessed(pdir, manifest, chain, end, end_cp.root, witnesses, quorum)
    for rel in PROOF_INPUTS:
        if rel in manifest:
            sink.take(rel)
    listed = LISTING_REL in manifest or not records.listing.empty  # packages made before the listing have none
    if listed:
        sink.write(LISTING_REL, records.listing.to_json(win, sealed_ms))
    dossiers = sorted(records.dossiers.values(), key=lambda s: s.folder)
    rendered = render_package(
        sink, params, public_key[0], dossiers, start, end, sealed_ms, status,
        workers=procs, helpers=helpers,
    )  # fmt: skip
    sink.finish_payload()
    tags = derive.tag_files(
        params,
        public_key[0],
        win,
        (start, end),
        rendered.dossiers,
        records.others,
        (sealed_ms, closed_ms),
        status,
        rendered.coverage,
        liveness=listed,
        witnessed=WITNESSED_FILE in manifest,
        signing_keys=SIGNING_KEYS_FILE in manifest,
    )
    _check_docs(path, tags.files)
    _check_tags(path, tag_files(sink.payload, tags.info, tags.files))
    if previous is not None:
        _check_previous(previous, pdir, (start, end), chain, params, frontier)
    liveness = records.listing.summary(win, sealed_ms) if listed else None
    return PackageReport(
        str(params.month),
        start,
        end,
        status,
        counts[0],
        counts[1],
        mdto_files,
        end_cp.root,
        records.missing_count,
        tuple(witnessed_by),
        liveness,
    )


def _signing_chain(pdir: Path, manifest: dict[str, str], public_key: tuple[str, Ed25519PublicKey]) -> KeyChain:
    """The log's signing keys from the pinned one through proof/signing-keys.json (when the package has it)."""
    data = _small(pdir / "signing-keys.json") if SIGNING_KEYS_FILE in manifest else None
    try:
        return chain_from_package(data, public_key)
    except SigningKeysError as exc:
        raise _fail(Check.PACKAGE_CHECKPOINT, str(exc)) from None


def _check_witnessed(
    pdir: Path,
    manifest: dict[str, str],
    public_key: KeyChain,
    end: int,
    end_root: bytes,
    witnesses: Sequence[Verifier],
    quorum: int,
) -> list[str]:
    """proof/witnessed.json, when present, is checked whole; with pinned witnesses, `quorum` must have cosigned."""
    data = _small(pdir / "witnessed.json") if WITNESSED_FILE in manifest else None
    try:
        smallest, names = check_witnessed(data, public_key, end, end_root, witnesses)
    except WitnessedError as exc:
        raise _fail(Check.WITNESS, str(exc)) from None
    if len(names) < quorum:
        where = "the package carries no witnessed checkpoint" if smallest is None else f"checkpoints from {smallest}"
        raise _fail(
            Check.WITNESS,
            f"end checkpoint (tree size {end}): {len(names)} pinned witness(es) cosigned a checkpoint extending it"
            f" ({where}), the quorum is {quorum}",
            quorum,
            len(names),
        )
    return names


# -- shape, bag, small files -------------------------------------------------------------------------


def _check_shape(path: Path, what: str) -> None:
    if not path.is_dir():
        raise UsageError(f"{what}{path} is not a package (not a directory)")
    if not (path / "bagit.txt").is_file():
        if (path / "data" / "proof").is_dir():  # a package's payload without its bag declaration
            raise _fail(
                Check.PACKAGE_SHAPE,
                f"{what}{path}: bagit.txt is missing from a package that has data/proof/ (tampered)",
            )
        raise UsageError(f"{what}{path} is not a package (no bagit.txt)")


class _BagCheck:
    """BagIt validation: the bag's shape and manifests now (`manifest`: the payload manifest, path relative to
    data/ -> sha256 hex), the hashing of every file on a thread; `result()` waits for it and raises what it
    found. (hashlib lets other threads run while it hashes, so the other checks go on beside it.)"""

    def __init__(self, path: Path) -> None:
        extra = sorted(p.name for p in path.iterdir() if p.name not in TAG_FILES)
        if extra:
            raise _fail(
                Check.PACKAGE_SHAPE, f"{extra[0]}: a file at the bag's root that no package has", found=extra[0]
            )
        logging.getLogger("bagit").setLevel(logging.ERROR)
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        bag = self._guarded(lambda: bagit.Bag(str(path)))
        if bag is None:
            assert self._error is not None
            raise self._error from None
        self.manifest = {
            rel[len("data/") :]: str(hashes.get("sha256", "")) for rel, hashes in bag.entries.items()
            if rel.startswith("data/")
        }  # fmt: skip
        self._thread = threading.Thread(target=self._guarded, args=(bag.validate,), daemon=True)
        self._thread.start()

    def _guarded(self, step: Callable[[], _T]) -> _T | None:
        """`step()`, or None with its error kept for `result` (any error: one on the thread must not be lost)."""
        try:
            return step()
        except bagit.BagValidationError as exc:
            details = "; ".join(str(d) for d in exc.details[:3]) if exc.details else str(exc)
            self._error = _fail(Check.PACKAGE_FIXITY, f"bag fixity: {details}")
        except bagit.BagError as exc:
            self._error = _fail(Check.PACKAGE_FIXITY, f"bag: {exc}")
        except (UnicodeDecodeError, ValueError, OSError) as exc:
            # bagit lets these through for damaged tag files (e.g. a manifest that is no longer UTF-8)
            self._error = _fail(
                Check.PACKAGE_FIXITY, f"bag: tag files unreadable ({type(exc).__name__}: {str(exc)[:120]})"
            )
        except Exception as exc:  # raised as it is, as it was before the hashing had a thread
            self._error = exc
        return None

    def result(self) -> None:
        """Wait for the hashing; raise what the bag check found (nothing: the bag is intact)."""
        if self._thread is not None:
            self._thread.join()
        if isinstance(self._error, PackageIntegrityError):
            raise self._error from None
        if self._error is not None:
            raise self._error


def _small(p: Path) -> bytes:
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_SMALL_FILE + 1)
    except OSError:
        raise _fail(Check.PACKAGE_SHAPE, f"proof/{p.name} is missing or unreadable") from None
    if len(data) > MAX_SMALL_FILE:
        raise _fail(
            Check.PACKAGE_SHAPE, f"proof/{p.name} is larger than {MAX_SMALL_FILE} bytes", f"<= {MAX_SMALL_FILE} bytes"
        )
    return data


def _json(p: Path) -> dict[str, object]:
    try:
        d = orjson.loads(_small(p))
    except orjson.JSONDecodeError as exc:
        raise _fail(Check.PACKAGE_RANGE, f"{p.name} is unreadable: {exc}") from None
    if not isinstance(d, dict):
        raise _fail(Check.PACKAGE_RANGE, f"{p.name} is not a JSON object")
    return d


def _checkpoint(p: Path, key: KeyChain, size: int, which: str) -> checkpoint.Checkpoint:
    note = _small(p)
    try:
        cp = key.verify_checkpoint(note)
    except checkpoint.CheckpointError as exc:
        rotated = " (or the key its rotations in proof/signing-keys.json lead to)" if key.rotations else ""
        raise _fail(
            Check.PACKAGE_CHECKPOINT,
            f"{which} checkpoint (proof/{p.name}) does not verify against the public key{rotated}: {exc}",
        ) from None
    if cp.size != size:
        raise _fail(
            Check.PACKAGE_CHECKPOINT,
            f"{which} checkpoint is for tree size {cp.size}, the range says {size}",
            size,
            cp.size,
        )
    return cp


def _params(pdir: Path) -> tuple[RenderParams, ranges.Window]:
    try:
        params = RenderParams.parse(_small(pdir / "package.json"))
        return params, ranges.window(params.month, params.timezone)
    except (ValueError, orjson.JSONDecodeError, UsageError) as exc:
        raise _fail(Check.PACKAGE_RANGE, f"proof/package.json (the render parameters) is unreadable: {exc}") from None


def _check_closing(
    pdir: Path, key: KeyChain, win: ranges.Window, end: int, end_root: bytes, sealed_ms: int
) -> int | None:
    """The closing checkpoint's time (ms) if proof/closing.json shows the month over: record `end`, appended
    after the month's end, is in a later signed checkpoint whose tree extends the end tree; else None."""
    path = pdir / "closing.json"
    if not path.exists():
        if (pdir / "checkpoint-close.txt").exists():
            raise _fail(Check.PACKAGE_CLOSING, "proof/checkpoint-close.txt without proof/closing.json")
        return None
    if sealed_ms >= win.end_ms:
        raise _fail(
            Check.PACKAGE_CLOSING, "proof/closing.json in a package whose end checkpoint already closes the month"
        )
    try:
        c = proof.parse_closing(_small(path))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise _fail(Check.PACKAGE_CLOSING, f"proof/closing.json is unreadable: {exc}") from None
    close = _checkpoint(pdir / "checkpoint-close.txt", key, c.size, "closing")
    if c.seq != end or c.header.seq != end or c.size <= end:
        raise _fail(Check.PACKAGE_CLOSING, "proof/closing.json is not about the first record after the range")
    if c.header.appended_ms < win.end_ms:
        raise _fail(Check.PACKAGE_CLOSING, f"proof/closing.json: record {end} was appended before the month's end")
    if not merkle.verify_inclusion(c.leaf, end, c.size, c.inclusion, close.root):
        raise _fail(
            Check.PACKAGE_CLOSING,
            f"proof/closing.json: record {end} is not in the closing checkpoint (inclusion proof fails)",
        )
    if not merkle.verify_consistency(end, c.size, end_root, close.root, c.consistency):
        raise _fail(
            Check.PACKAGE_CLOSING, "proof/closing.json: the closing checkpoint does not extend the end checkpoint"
        )
    return close.timestamp_ms if close.timestamp_ms is not None else win.end_ms


def _check_range(
    pdir: Path, rng: dict[str, object], win: ranges.Window, start: int, end: int, status: str, sealed_ms: int
) -> None:
    if rng.get("status") != status:
        raise _fail(
            Check.PACKAGE_RANGE,
            f"proof/range.json says status {rng.get('status')!r}, but the signed checkpoints give {status!r}"
            f" (end checkpoint signed at {sealed_ms} ms, the month ends at {win.end_ms} ms)",
        )
    if rng.get("month") != str(win.month):
        raise _fail(
            Check.PACKAGE_RANGE, f"proof/range.json says month {rng.get('month')!r}, proof/package.json {win.month}"
        )
    if _small(pdir / "range.json") != derive.range_json(win, start, end, status):
        raise _fail(Check.PACKAGE_RANGE, "proof/range.json is not the one the month's window and the range give")


# -- record lines --------------------------------------------------------------------------------------


def _same_line(line: bytes, want: bytes, where: str, what: str, seq: int) -> None:
    """A record line must be byte for byte the line the package writer derives from the same record."""
    if line != want:
        raise _fail(
            Check.PACKAGE_RECORD,
            f"{where}: not the line the package writer gives for {what} {seq}",
            _digest(want),
            _digest(line),
            seq=seq,
        )


def iter_lines(path: Path, label: str, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file, each line at most `limit` bytes (a longer one is refused unread; default
    `MAX_LINE_BYTES`)."""
    if limit is None:
        limit = MAX_LINE_BYTES
    try:
        fh = path.open("rb")
    except OSError:
        raise _fail(Check.PACKAGE_SHAPE, f"{label}: file is missing") from None
    with fh:
        number = 0
        while True:
            # read a line in pieces of at most 1 MiB, so an oversized one costs at most `limit` bytes before it is
            # refused (one `readline(limit + 1)` buffers and copies it: twice the limit and more)
            parts: list[bytes] = []
            size = 0
            while chunk := fh.readline(min(_LINE_PIECE, limit + 1 - size)):
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise _fail(
                        Check.PACKAGE_RECORD,
                        f"{label} line {number + 1}: longer than the limit of {limit} bytes",
                        f"<= {limit} bytes",
                    )
                if chunk.endswith(b"\n"):
                    break
            if not parts:
                return
            number += 1
            yield number, parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass
class _Position:
    seen: bytearray
    start: int
    end: int
    mm: mmap.mmap | bytes


class _Records:
    """Pass over every record line: position, leaf, and the line the package writer derives from it."""

    def __init__(
        self,
        data: Path,
        sink: _Rederive,
        params: RenderParams,
        win: ranges.Window,
        start: int,
        end: int,
        start_root: bytes,
        workers: int = 1,
        early: helper_process.Started | None = None,
    ) -> None:
        self._workers = workers
        self._early = early
        self._data = data
        self._sink = sink
        self._params = params
        self._win = win
        self._start = start
        self._end = end
        self._start_root = start_root
        self.decisions: dict[int, Decision] = {}
        self.dossiers: dict[str, DossierState] = {}
        self._tags: dict[bytes, str] = {}
        self.others = 0
        self.media = 0
        self.missing: dict[tuple[int, str], str] = {}
        self.missing_count = 0
        self._withheld: dict[tuple[str, str, str], Withheld] = {}
        self.listing = Listing()

    def check(self, leaves_path: Path, frontier: merkle.Frontier, end_root: bytes) -> tuple[int, int]:
        n = self._end - self._start
        try:
            size = leaves_path.stat().st_size
        except OSError:
            raise _fail(Check.PACKAGE_LEAVES, "proof/leaves.txt is missing") from None
        if size != n * proof.LEAF_LINE_BYTES:
            raise _fail(
                Check.PACKAGE_LEAVES,
                f"proof/leaves.txt holds {size} bytes, expected {n} leaves of the range",
                f"{n * proof.LEAF_LINE_BYTES} bytes",
                f"{size} bytes",
            )
        with leaves_path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if n else _Empty() as mm:
            grown = proof.extend_leaf_lines(frontier, mm, n, lambda i: _leaf_at(mm, i))
            if not crypto.hmac_equal(grown.root(), end_root):
                raise _fail(
                    Check.PACKAGE_LEAVES,
                    "proof/leaves.txt extended from the start frontier does not give the end checkpoint's root",
                    end_root,
                    grown.root(),
                )
            pos = _Position(bytearray(n), self._start, self._end, mm)
            self._decisions_before()
            self._other_records(pos)
            self._missing_media()
            paths = sorted(self._data.rglob("events.jsonl"))
            files = 1 + len(paths)
            scanner: scan.DossierScanner | None = None
            if _scans(paths, self._workers):
                scanner = scan.DossierScanner(paths, self._withheld, self._workers, MAX_LINE_BYTES, workers=self._early)
            try:
                for i, p in enumerate(paths):
                    self._dossier(p, pos, None if scanner is None else scanner.lines(i, _own_lines(p, self._data)))
            finally:
                if scanner is not None:
                    scanner.close()
        if n and (missing := pos.seen.find(0)) >= 0:
            raise _fail(
                Check.PACKAGE_MISSING_RECORD,
                f"record {self._start + missing} of the range is missing from the package",
                seq=self._start + missing,
            )
        unused = sorted(self.missing.items())
        if unused:
            (seq, blob_id), _ = unused[0]
            raise _fail(
                Check.PACKAGE_MEDIA,
                f"proof/missing-media.jsonl lists blob {blob_id} of record {seq}, not a stored attachment",
                seq=seq,
            )
        return files, self.media

    # -- proof/decisions-before.jsonl and proof/other-records.jsonl --

    def _decisions_before(self) -> None:
        label = "proof/decisions-before.jsonl"
        last = -1
        for number, line in iter_lines(self._data / "proof" / "decisions-before.jsonl", label):
            where = f"{label} line {number}"
            rec = _parse(line, where, inclusion=True)
            if rec.key != "decision" or not last < rec.seq < self._start:
                raise _fail(
                    Check.PACKAGE_ORDER,
                    f"{where}: record {rec.seq} is not a decision from before the range, in log order",
                    seq=rec.seq,
                )
            last = rec.seq
            if not merkle.verify_inclusion(rec.leaf, rec.seq, self._start, rec.inclusion, self._start_root):
                raise _fail(
                    Check.PACKAGE_CONSISTENCY,
                    f"{where}: decision {rec.seq} is not under the start checkpoint (inclusion proof fails)",
                    self._start_root,
                    seq=rec.seq,
                )
            want = proof.carried_line(
                rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, rec.inclusion
            )
            _same_line(line, want, where, "decision", rec.seq)
            self.decisions[rec.seq] = _decision(rec, where)

    def _other_records(self, pos: _Position) -> None:
        label = "proof/other-records.jsonl"
        last = -1
        for number, line in iter_lines(self._data / "proof" / "other-records.jsonl", label):
            where = f"{label} line {number}"
            rec = _parse(line, where)
            last = self._place(rec, where, pos, last)
            if rec.key is None or rec.key == "event":
                raise _fail(
                    Check.PACKAGE_DOSSIER,
                    f"{where}: record {rec.seq} is an event; it belongs in its conversation's dossier, not here",
                    seq=rec.seq,
                )
            want = proof.content_line(
                rec.key, rec.seq, rec.header_bytes, rec.salt, rec.payload, rec.ciphertext_hash, None
            )
            _same_line(line, want, where, "record", rec.seq)
            if rec.key == "decision":
                self.decisions[rec.seq] = _decision(rec, where)
            self.others += 1
        self._withheld = fold_decisions(sorted(self.decisions.items()))

    def _missing_media(self) -> None:
        label = "proof/missing-media.jsonl"
        for number, line in iter_lines(self._data / "proof" / "missing-media.jsonl", label):
            try:
                d = orjson.loads(line)
                seq, blob_id, rel = d["seq"], d["blob_id"], d["path"]
                if not (isinstance(seq, int) and isinstance(blob_id, str) and isinstance(rel, str)):
                    raise TypeError
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise _fail(Check.PACKAGE_MEDIA, f"{label} line {number}: not a missing-media notice") from None
            if line != derive.missing_line(seq, blob_id, rel):
                raise _fail(Check.PACKAGE_MEDIA, f"{label} line {number}: not the notice the package writer gives")
            self.missing[(seq, blob_id)] = rel

    def _place(self, rec: proof.RecordLine, where: str, pos: _Position, last: int) -> int:
        return self._place_at(rec.seq, rec.key, rec.leaf, rec.header.appended_ms, where, pos, last)

    def _place_at(
        self, seq: int, key: str | None, leaf_of: bytes, appended: int, where: str, pos: _Position, last: int
    ) -> int:
        if not pos.start <= seq < pos.end:
            raise _fail(
                Check.PACKAGE_ORDER,
                f"{where}: record {seq} is outside the package's range {pos.start}..{pos.end - 1}",
                seq=seq,
            )
        if seq <= last:
            raise _fail(
                Check.PACKAGE_ORDER, f"{where}: record {seq} is out of log order (after record {last})", seq=seq
            )
        if pos.seen[seq - pos.start]:
            raise _fail(Check.PACKAGE_ORDER, f"{where}: record {seq} appears twice in the package", seq=seq)
        pos.seen[seq - pos.start] = 1
        off = (seq - pos.start) * proof.LEAF_LINE_BYTES
        if pos.mm[off : off + 64] != binascii.hexlify(leaf_of) and not crypto.hmac_equal(
            leaf_of, leaf := _leaf_at(pos.mm, seq - pos.start)
        ):  # (the line's own hex, lowercase as the writer gives it, else the leaf it reads to)
            what = "event" if key == "event" else "record"
            raise _fail(
                Check.PACKAGE_RECORD,
                f"{where}: {what} altered (record {seq} does not give the log's leaf)",
                leaf,
                leaf_of,
                seq=seq,
            )
        if appended >= self._win.end_ms or (seq == self._start and appended < self._win.start_ms):
            raise _fail(
                Check.PACKAGE_ORDER,
                f"{where}: record {seq} was appended at {appended} (ms), outside month {self._win.month}",
                f"{self._win.start_ms} <= appended_ms < {self._win.end_ms}",
                appended,
                seq=seq,
            )
        return seq

    # -- dossiers --

    def _dossier(
        self, path: Path, pos: _Position, scanned: Iterator[tuple[int, scan.PlainLine | bytes]] | None = None
    ) -> None:
        """One dossier's lines in order: each placed, its conversation checked and re-derived. A line a worker
        proved plain (`scan.plain_line`: a plain event, exactly the writer's line) is placed and its
        conversation checked here like any other; re-deriving it would change no state."""
        folder = path.parent.relative_to(self._data).as_posix()
        label = f"dossier {folder}"
        state: DossierState | None = None
        tag: bytes | None = None
        last = -1
        for number, got in iter_lines(path, label) if scanned is None else scanned:
            where = f"{label} line {number}"
            if type(got) is tuple:
                seq, leaf, appended, rtag, source, conversation = got
                last = self._place_at(seq, "event", leaf, appended, where, pos, last)
                conv = (source, conversation)
                rec: proof.RecordLine | None = None
                event: Event | None = None
            else:
                assert isinstance(got, bytes)
                line = got
                rec = _parse(line, where)
                seq, rtag = rec.seq, rec.header.conversation_tag
                last = self._place(rec, where, pos, last)
                event = _event(rec, where) if rec.key == "event" else None
                if event is not None:
                    conv = (str(event.source), str(event.conversation))
                elif rec.key is None and rec.withheld is not None:
                    conv = self._backing(rec, where).target.key[:2]
                else:
                    raise _fail(
                        Check.PACKAGE_DOSSIER,
                        f"{where}: record {rec.seq} is a {rec.key} record; it belongs in proof/other-records.jsonl",
                        seq=rec.seq,
                    )
            if state is None:
                state = derive.new_dossier(self._params.serie, conv[0], conv[1], folder)
                suffix = f"-{self._params.month}-{derive.conversation_hash(*conv)}"
                if not folder.startswith(f"{self._params.serie}/") or not folder.endswith(suffix):
                    raise _fail(
                        Check.PACKAGE_DOSSIER,
                        f"{label}: its records are of conversation {conv[1]!r} ({conv[0]}), whose folder ends"
                        f" in {suffix!r}",
                        suffix,
                        folder,
                        seq=seq,
                    )
                tag = rtag
                if tag in self._tags:
                    raise _fail(
                        Check.PACKAGE_DOSSIER,
                        f"{where}: record {seq} is of the conversation of dossier {self._tags[tag]}",
                        seq=seq,
                    )
                self._tags[tag] = folder
            elif (state.source, state.conversation) != conv or rtag != tag:
                raise _fail(Check.PACKAGE_DOSSIER, f"{where}: record {seq} belongs to another conversation", seq=seq)
            if rec is not None:
                want = self._derived(rec, event, state, where)
                _same_line(line, want, where, "record", rec.seq)
            state.records += 1
        if state is None:
            raise _fail(Check.PACKAGE_DOSSIER, f"{label}: events.jsonl holds no record")
        named = derive.dossier_folder(
            self._params.serie, state.source, state.conversation, self._params.month, state.name
        )
        if named != folder:
            raise _fail(
                Check.PACKAGE_DOSSIER,
                f"{label}: the room's name in its records gives the folder {named!r}",
                named,
                folder,
            )
        self.dossiers[folder] = state
        self._sink.take(state.events_rel)

    def _backing(self, rec: proof.RecordLine, where: str) -> Decision:
        """The decision a tombstone names; it must be one the package carries."""
        tomb = rec.withheld or {}
        seq = tomb.get("decision_seq")
        decision = self.decisions.get(seq) if isinstance(seq, int) and not isinstance(seq, bool) else None
        if decision is None or decision.decision != "withhold":
            raise _fail(
                Check.PACKAGE_WITHHELD,
                f"{where}: record {rec.seq} is withheld by decision {seq!r}, which the package does not hold",
                seq=rec.seq,
            )
        return decision

    def _derived(self, rec: proof.RecordLine, event: Event | None, state: DossierState, where: str) -> bytes:
        if event is not None:
            return derive.event_line(
                rec.seq,
                rec.header_bytes,
                rec.salt,
                rec.payload,
                rec.ciphertext_hash,
                rec.commitment,
                event,
                state,
                self._withheld,
                lambda seq, att, rel: self._media(seq, att, rel, where),
                self.listing,
            )
        decision = self._backing(rec, where)
        folded = self._withheld.get(decision.target.key)
        if folded is None or folded.decision_seq != (rec.withheld or {}).get("decision_seq"):
            raise _fail(
                Check.PACKAGE_WITHHELD,
                f"{where}: record {rec.seq}'s tombstone is not what the package's decisions give (decision"
                f" {(rec.withheld or {}).get('decision_seq')} is released or superseded)",
                None if folded is None else f"decision {folded.decision_seq}",
                f"decision {(rec.withheld or {}).get('decision_seq')}",
                seq=rec.seq,
            )
        source, conversation = decision.target.key[:2]
        self.listing.withhold(rec.seq, source, conversation, folded.decision_seq)
        return proof.sealed_line(
            rec.seq, rec.header_bytes, rec.commitment, rec.ciphertext_hash, derive.tombstone(folded)
        )

    def _media(self, seq: int, att: Attachment, rel: str, where: str) -> bool:
        blob_id = str(att.blob_id)
        declared = self.missing.pop((seq, blob_id), None)
        if declared is not None:
            if declared != rel:
                raise _fail(
                    Check.PACKAGE_MEDIA,
                    f"{where}: missing-media notice for record {seq} names {declared!r}, expected {rel!r}",
                    seq=seq,
                )
            self.missing_count += 1
            return False
        p = self._data / rel
        try:
            digest = _sha256_file(p)
        except OSError:
            raise _fail(
                Check.PACKAGE_MEDIA,
                f"{where}: record {seq} stored attachment {blob_id}, but {rel} is not in the package"
                " (nor listed in proof/missing-media.jsonl)",
                seq=seq,
            ) from None
        sha = att.sha256
        if isinstance(sha, str) and not crypto.hmac_equal(digest.encode(), sha.lower().encode()):
            raise _fail(
                Check.PACKAGE_MEDIA,
                f"{where}: media file {rel} altered (not the content record {seq} names)",
                sha.lower(),
                digest,
                seq=seq,
            )
        self._sink.take(rel)
        self.media += 1
        return True


def _parse(line: bytes, where: str, *, inclusion: bool = False) -> proof.RecordLine:
    try:
        return proof.parse_line(line, inclusion=inclusion)
    except proof.LineError as exc:
        seq = _seq_of(line)
        at = f" (record {seq})" if seq is not None else ""
        raise _fail(Check.PACKAGE_RECORD, f"{where}: unreadable record line{at}: {exc}", seq=seq) from None


def _event(rec: proof.RecordLine, where: str) -> Event:
    """The event of a proven event line (its content is the record's payload, which the leaf vouches for)."""
    try:
        return Event.from_json(rec.content or {})
    except EncodingError as exc:
        raise _fail(Check.PACKAGE_RECORD, f"{where}: record {rec.seq} is not an event: {exc}", seq=rec.seq) from None


def _seq_of(line: bytes) -> int | None:
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    seq = d.get("seq") if isinstance(d, dict) else None
    return seq if isinstance(seq, int) else None


def _decision(rec: proof.RecordLine, where: str) -> Decision:
    try:
        return parse_decision(rec.payload)
    except DecisionError as exc:
        raise _fail(Check.PACKAGE_RECORD, f"{where}: decision {rec.seq} does not parse: {exc}", seq=rec.seq) from None


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _own_lines(path: Path, data: Path) -> Callable[[], Iterator[tuple[int, bytes]]]:
    """The verifier's own reading of a dossier, for where a worker could not read on."""
    label = f"dossier {path.parent.relative_to(data).as_posix()}"
    return lambda: iter_lines(path, label)


class _Empty:
    def __enter__(self) -> bytes:
        return b""

    def __exit__(self, *exc: object) -> None:
        return None


def _leaf_at(mm: mmap.mmap | bytes, i: int) -> bytes:
    off = i * proof.LEAF_LINE_BYTES
    line = mm[off : off + proof.LEAF_LINE_BYTES]
    try:
        if line[64:] != b"\n":
            raise ValueError
        return bytes.fromhex(line[:64].decode("ascii"))
    except ValueError:
        raise _fail(Check.PACKAGE_LEAVES, f"proof/leaves.txt line {i + 1} is not a hex leaf hash") from None


def _digest(data: bytes) -> str:
    """Evidence for two lines or files that differ: their SHA-256 and size (never their content)."""
    return f"sha256 {hashlib.sha256(data).hexdigest()}, {len(data)} bytes"


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- re-derivation sink --------------------------------------------------------------------------------


class _Rederive:
    """A `PackageSink` that compares: each rendered file must be the package's file, byte for byte.

    The manifest's SHA-256 (checked against the files by bagit) stands for the
    package's bytes, so equal digests are equal files. Files taken as they are
    (`take`: record files and media checked line by line or by their signed
    hash, proof inputs) join the payload with their manifest digest.
    """

    writes = False

    def __init__(self, root: Path, manifest: dict[str, str]) -> None:
        self._root = root
        self._manifest = manifest
        self.payload: dict[str, tuple[str, int]] = {}

    def data_path(self, rel: str) -> Path:
        return self._root / "data" / rel

    def open(self, rel: str) -> OutFile:
        return HashOnly()

    def done(self, rel: str, fh: OutFile) -> None:
        self._compare(rel, fh.hexdigest(), fh.size)

    def write(self, rel: str, data: bytes) -> tuple[str, int]:
        self._compare(rel, hashlib.sha256(data).hexdigest(), len(data))
        return self.payload[rel]

    def record(self, rel: str, digest: str, size: int) -> None:
        self._compare(rel, digest, size)

    def take(self, rel: str) -> None:
        digest = self._manifest.get(rel)
        if digest is None:
            raise _fail(Check.PACKAGE_DERIVED, f"{rel} is missing from the package")
        self.payload[rel] = (digest, os.stat(self.data_path(rel)).st_size)

    def _compare(self, rel: str, digest: str, size: int) -> None:
        want = self._manifest.get(rel)
        if want is None:
            raise _fail(Check.PACKAGE_DERIVED, f"{rel} is missing from the package (its records give it)")
        if not crypto.hmac_equal(want.encode(), digest.encode()):
            raise _fail(
                Check.PACKAGE_DERIVED,
                f"{rel} is not the file its records give (re-derived bytes differ)",
                f"sha256 {digest}",
                f"sha256 {want}",
            )
        self.payload[rel] = (digest, size)

    def finish_payload(self) -> None:
        extra = sorted(set(self._manifest) - set(self.payload))
        if extra:
            raise _fail(
                Check.PACKAGE_DERIVED, f"data/{extra[0]}: a file no record of the package gives (added)", found=extra[0]
            )


def _check_tags(path: Path, tags: dict[str, bytes]) -> None:
    for name in sorted(tags, key=lambda n: (n != "bag-info.txt", n)):
        try:
            found = _read_limited(path / name)
        except OSError:
            raise _fail(Check.PACKAGE_SHAPE, f"{name} is missing") from None
        if found != tags[name]:
            what = " (month, range, status, names...)" if name == "bag-info.txt" else ""
            raise _fail(
                Check.PACKAGE_DERIVED,
                f"{name} is not the one the records and the signed checkpoint give{what}",
                _digest(tags[name]),
                _digest(found),
            )


def _check_docs(path: Path, files: dict[str, bytes]) -> None:
    """`documentatie/` holds exactly the files a package writer puts there (each compared by `_check_tags`)."""
    want = sorted(n for n in files if n.startswith(f"{DOCS}/"))
    docs = path / DOCS
    found = sorted(p.relative_to(path).as_posix() for p in docs.rglob("*") if not p.is_dir()) if docs.is_dir() else []
    if found != want:
        extra = sorted(set(found) - set(want)) or sorted(set(want) - set(found))
        raise _fail(
            Check.PACKAGE_SHAPE, f"{extra[0]}: {DOCS}/ is not what a package holds", ", ".join(want), ", ".join(found)
        )


def _check_consistency(p: Path, start: int, end: int, start_root: bytes, end_root: bytes) -> None:
    try:
        old, new, path = proof.parse_consistency(_small(p))
    except ValueError as exc:
        raise _fail(Check.PACKAGE_CONSISTENCY, f"proof/consistency-proof.json is unreadable: {exc}") from None
    if (old, new) != (start, end) or not merkle.verify_consistency(start, end, start_root, end_root, path):
        raise _fail(
            Check.PACKAGE_CONSISTENCY, "proof/consistency-proof.json does not prove the end tree extends the start tree"
        )


def _check_mdto(data: Path) -> int:
    count = 0
    for p in sorted(data.rglob("*.MDTO.xml")):
        try:
            mdto.validate(_read_limited(p))
        except mdto.MdtoError as exc:
            raise _fail(Check.PACKAGE_MDTO, f"{p.relative_to(data)}: not valid MDTO: {exc}") from None
        count += 1
    return count


def _read_limited(p: Path) -> bytes:
    with p.open("rb") as fh:
        data = fh.read(MAX_LINE_BYTES + 1)
    if len(data) > MAX_LINE_BYTES:
        raise _fail(
            Check.PACKAGE_SHAPE, f"{p.name} is larger than {MAX_LINE_BYTES} bytes", f"<= {MAX_LINE_BYTES} bytes"
        )
    return data


def _check_previous(
    previous: Path,
    pdir: Path,
    span: tuple[int, int],
    key: KeyChain,
    params: RenderParams,
    frontier: merkle.Frontier,
) -> None:
    """The chain: the previous month's package ends where this one starts, with the same checkpoint; or the
    previous package is an interim package of this same month, and this one extends it (same start, and this
    package's leaves give the interim end checkpoint's root at its size)."""
    start, end = span
    prev_proof = previous / "data" / "proof"
    prev_range = _json(prev_proof / "range.json")
    prev_start, prev_end = prev_range.get("start"), prev_range.get("end")
    prev_cp = _checkpoint(
        prev_proof / "checkpoint-end.txt", key, prev_end if isinstance(prev_end, int) else -1, "previous end"
    )
    if prev_range.get("month") == str(params.month) and prev_range.get("status") == derive.STATUS_INTERIM:
        _check_extends_interim(previous, pdir, (start, end), prev_start, prev_cp, frontier)
        return
    if prev_end != start:
        raise _fail(
            Check.PACKAGE_PREVIOUS,
            f"the previous package ends at record {prev_end}, this one starts at {start}",
            start,
            str(prev_end),
        )
    if start > 0 and _small(pdir / "checkpoint-start.txt") != _small(prev_proof / "checkpoint-end.txt"):
        raise _fail(
            Check.PACKAGE_PREVIOUS, "this package's start checkpoint is not the previous package's end checkpoint"
        )


def _check_extends_interim(
    previous: Path,
    pdir: Path,
    span: tuple[int, int],
    prev_start: object,
    prev_cp: checkpoint.Checkpoint,
    frontier: merkle.Frontier,
) -> None:
    start, end = span
    if prev_start != start or not start <= prev_cp.size <= end:
        raise _fail(
            Check.PACKAGE_PREVIOUS,
            f"the interim package holds records from {prev_start} to {prev_cp.size}; this package of the same"
            f" month holds {start} to {end} and so does not extend it",
        )
    prev_start_cp = previous / "data" / "proof" / "checkpoint-start.txt"
    if start > 0 and _small(prev_start_cp) != _small(pdir / "checkpoint-start.txt"):
        raise _fail(Check.PACKAGE_PREVIOUS, "the interim package starts from another checkpoint than this one")
    tree = frontier.copy()
    with (pdir / "leaves.txt").open("rb") as fh:
        mm: mmap.mmap | bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if end > start else b""
        try:
            for i in range(prev_cp.size - start):
                tree.append(_leaf_at(mm, i))
        finally:
            if isinstance(mm, mmap.mmap):
                mm.close()
    if not crypto.hmac_equal(tree.root(), prev_cp.root):
        raise _fail(
            Check.PACKAGE_PREVIOUS,
            f"this package's first {prev_cp.size - start} records are not the interim package's records"
            " (its end checkpoint's root differs)",
            prev_cp.root.hex(),
            tree.root().hex(),
        )


__all__ = ["MAX_LINE_BYTES", "PackageIntegrityError", "PackageReport", "iter_lines", "verify_package"]
