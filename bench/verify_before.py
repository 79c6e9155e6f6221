"""BENCHMARK BASELINE ONLY: verify-package as it was before re-derivation (commit 5416d3d), frozen here.

`bench/snapshot.py` times it beside the current verifier on the same package in the same run, to
show what re-deriving every readable file costs. Not used by the product.

Verify a monthly package with only the package and the log's public key (I/O, read-only).

Checks, in order; the first failure raises `PackageIntegrityError` naming it:

1. BagIt fixity: `bagit.Bag(path).validate()` (every payload and tag file
   against its manifest, Payload-Oxum, completeness);
2. the end checkpoint (and the start checkpoint, for a package not starting
   at record 0) verify against the public key and have the range's sizes;
3. the start frontier's root is the start checkpoint's root, and the frontier
   extended with `leaves.txt` gives the end checkpoint's root;
4. every record line (each dossier's `events.jsonl`, `proof/other-records.jsonl`)
   recomputes to the leaf at its position in `leaves.txt` (the plaintext and
   salt give the commitment; header and ciphertext hash the rest), lines are in
   log order within a file, each position of the range is covered exactly
   once, the events of a dossier are of one conversation, and each media file
   has the SHA-256 its (signed) event names;
5. the RFC 9162 consistency proof from the start to the end checkpoint;
6. every `*.MDTO.xml` validates against the MDTO 1.0.1 XSD;
7. with a previous package: its end checkpoint is byte-identical to this
   package's start checkpoint, and its range ends where this one starts.

Memory is flat: lines are streamed and `leaves.txt` is read through mmap.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bagit
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.archive import mdto, proof
from bridge.errors import LogIntegrityError, UsageError
from bridge.log import checkpoint, crypto, merkle


class PackageIntegrityError(LogIntegrityError):
    """The package is not intact or not what the log signed; the message says where."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


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


def _fail(reason: str) -> PackageIntegrityError:
    return PackageIntegrityError(reason)


def verify_package(path: Path, public_key: tuple[str, Ed25519PublicKey], previous: Path | None = None) -> PackageReport:
    if not (path / "bagit.txt").is_file():
        raise UsageError(f"{path} is not a package (no bagit.txt)")
    if previous is not None and not (previous / "bagit.txt").is_file():
        raise UsageError(f"--previous {previous} is not a package (no bagit.txt)")
    _check_bag(path)
    data = path / "data"
    pdir = data / "proof"
    rng = _json(pdir / "range.json")
    start, end = rng.get("start"), rng.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise _fail("proof/range.json: start and end are not a valid range")
    end_cp = _checkpoint(pdir / "checkpoint-end.txt", public_key, end, "end")
    start_root = merkle.EMPTY_ROOT
    if start > 0:
        start_root = _checkpoint(pdir / "checkpoint-start.txt", public_key, start, "start").root
    elif (pdir / "checkpoint-start.txt").exists():
        raise _fail("proof/checkpoint-start.txt present in a package that starts at record 0")
    try:
        frontier = proof.parse_frontier((pdir / "frontier-start.json").read_bytes())
    except (ValueError, orjson.JSONDecodeError, OSError) as exc:
        raise _fail(f"proof/frontier-start.json is unreadable: {exc}") from None
    if frontier.size != start or not crypto.hmac_equal(frontier.root(), start_root):
        raise _fail("proof/frontier-start.json does not give the start checkpoint's root")
    counts = _check_leaves_and_records(data, pdir / "leaves.txt", frontier, start, end, end_cp.root)
    _check_consistency(pdir / "consistency-proof.json", start, end, start_root, end_cp.root)
    mdto_files = _check_mdto(data)
    if previous is not None:
        _check_previous(previous, pdir, start, public_key)
    return PackageReport(
        str(rng.get("month")), start, end, str(rng.get("status")), counts[0], counts[1], mdto_files, end_cp.root
    )


def _check_bag(path: Path) -> None:
    logging.getLogger("bagit").setLevel(logging.ERROR)
    try:
        bagit.Bag(str(path)).validate()
    except bagit.BagValidationError as exc:
        details = "; ".join(str(d) for d in exc.details[:3]) if exc.details else str(exc)
        raise _fail(f"bag fixity: {details}") from None
    except bagit.BagError as exc:
        raise _fail(f"bag: {exc}") from None
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        # bagit lets these through for damaged tag files (e.g. a manifest that is no longer UTF-8)
        raise _fail(f"bag: tag files unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None


def _json(p: Path) -> dict[str, object]:
    try:
        d = orjson.loads(p.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _fail(f"{p.name} is unreadable: {exc}") from None
    if not isinstance(d, dict):
        raise _fail(f"{p.name} is not a JSON object")
    return d


def _checkpoint(p: Path, key: tuple[str, Ed25519PublicKey], size: int, which: str) -> checkpoint.Checkpoint:
    try:
        note = p.read_bytes()
    except OSError:
        raise _fail(f"proof/{p.name} is missing") from None
    try:
        cp = checkpoint.verify_checkpoint_note(note, key[0], key[1], origin=key[0])
    except checkpoint.CheckpointError as exc:
        raise _fail(f"{which} checkpoint (proof/{p.name}) does not verify against the public key: {exc}") from None
    if cp.size != size:
        raise _fail(f"{which} checkpoint is for tree size {cp.size}, the range says {size}")
    return cp


def _record_files(data: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(data.rglob("events.jsonl")):
        yield f"dossier {p.parent.relative_to(data)}", p
    yield "proof/other-records.jsonl", data / "proof" / "other-records.jsonl"


def _check_leaves_and_records(
    data: Path, leaves_path: Path, frontier: merkle.Frontier, start: int, end: int, end_root: bytes
) -> tuple[int, int]:
    n = end - start
    try:
        size = leaves_path.stat().st_size
    except OSError:
        raise _fail("proof/leaves.txt is missing") from None
    if size != n * proof.LEAF_LINE_BYTES:
        raise _fail(f"proof/leaves.txt holds {size} bytes, expected {n} leaves of the range")
    with leaves_path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if n else _Empty() as mm:
        grown = frontier.copy()
        for i in range(n):
            grown.append(_leaf_at(mm, i))
        if not crypto.hmac_equal(grown.root(), end_root):
            raise _fail("proof/leaves.txt extended from the start frontier does not give the end checkpoint's root")
        seen = bytearray(n)
        files = media = 0
        for label, path in _record_files(data):
            files += 1
            media += _check_record_file(label, path, mm, seen, start, end)
    if n and (missing := seen.find(0)) >= 0:
        raise _fail(f"record {start + missing} of the range is missing from the package")
    return files, media


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
        raise _fail(f"proof/leaves.txt line {i + 1} is not a hex leaf hash") from None


def _check_record_file(label: str, path: Path, mm: mmap.mmap | bytes, seen: bytearray, start: int, end: int) -> int:
    if not path.is_file():
        raise _fail(f"{label}: file is missing")
    last = -1
    conversation: tuple[object, object] | None = None
    media = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            where = f"{label} line {number}"
            try:
                rec = proof.parse_line(line)
            except proof.LineError as exc:
                raise _fail(f"{where}: unreadable record line ({exc})") from None
            if not start <= rec.seq < end:
                raise _fail(f"{where}: record {rec.seq} is outside the package's range {start}..{end - 1}")
            if rec.seq <= last:
                raise _fail(f"{where}: record {rec.seq} is out of log order (after record {last})")
            last = rec.seq
            if seen[rec.seq - start]:
                raise _fail(f"{where}: record {rec.seq} appears twice in the package")
            seen[rec.seq - start] = 1
            if not crypto.hmac_equal(rec.leaf, _leaf_at(mm, rec.seq - start)):
                what = "event" if rec.key == "event" else "record"
                raise _fail(f"{where}: {what} altered (record {rec.seq} does not give the log's leaf)")
            if rec.key == "event" and rec.content is not None:
                conv = (rec.content.get("source"), rec.content.get("conversation"))
                if conversation is None:
                    conversation = conv
                elif conv != conversation:
                    raise _fail(f"{where}: record {rec.seq} belongs to another conversation")
                media += _check_media(where, path.parent, rec)
    return media


def _check_media(where: str, folder: Path, rec: proof.RecordLine) -> int:
    assert rec.content is not None
    atts = rec.content.get("attachments") or []
    for blob_id, rel in rec.files.items():
        sha = next((a.get("sha256") for a in atts if isinstance(a, dict) and a.get("blob_id") == blob_id), None)
        if not isinstance(sha, str):
            raise _fail(f"{where}: media {rel!r} is not an attachment of record {rec.seq}")
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:
            raise _fail(f"{where}: media path {rel!r} leaves the dossier")
        try:
            digest = _sha256_file(target)
        except OSError:
            raise _fail(f"{where}: media file {rel} is missing") from None
        if not crypto.hmac_equal(digest.encode(), sha.lower().encode()):
            raise _fail(f"{where}: media file {rel} altered (not the content record {rec.seq} names)")
    return len(rec.files)


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_consistency(p: Path, start: int, end: int, start_root: bytes, end_root: bytes) -> None:
    try:
        old, new, path = proof.parse_consistency(p.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"proof/consistency-proof.json is unreadable: {exc}") from None
    if (old, new) != (start, end) or not merkle.verify_consistency(start, end, start_root, end_root, path):
        raise _fail("proof/consistency-proof.json does not prove the end tree extends the start tree")


def _check_mdto(data: Path) -> int:
    count = 0
    for p in sorted(data.rglob("*.MDTO.xml")):
        try:
            mdto.validate(p.read_bytes())
        except mdto.MdtoError as exc:
            raise _fail(f"{p.relative_to(data)}: not valid MDTO: {exc}") from None
        count += 1
    return count


def _check_previous(previous: Path, pdir: Path, start: int, key: tuple[str, Ed25519PublicKey]) -> None:
    prev_proof = previous / "data" / "proof"
    prev_range = _json(prev_proof / "range.json")
    prev_end = prev_range.get("end")
    _checkpoint(prev_proof / "checkpoint-end.txt", key, prev_end if isinstance(prev_end, int) else -1, "previous end")
    if prev_end != start:
        raise _fail(f"the previous package ends at record {prev_end}, this one starts at {start}")
    if start > 0 and (pdir / "checkpoint-start.txt").read_bytes() != (prev_proof / "checkpoint-end.txt").read_bytes():
        raise _fail("this package's start checkpoint is not the previous package's end checkpoint")
