"""Offline verification of a log (an fsck that trusts nothing the store says).

`verify_log` opens the database read-only and recomputes everything from the
stored bytes: every header parses and carries its own position, the hash chain
links each record to the one before, every leaf hash matches the stored bytes,
every checkpoint signature verifies against the expected public key and every
checkpoint's root equals the root recomputed from the leaves. Without keys that
proves integrity, order and completeness up to the last checkpoint; with the key
file it also decrypts every record, checks the AEAD tag, the plaintext
commitment and that each event (and each decision record, which must parse)
sits under the conversation and dedup tags it claims.

The first failure raises `LogIntegrityError` naming the first bad sequence
number (or the checkpoint's tree size). Records after the last checkpoint are
reported as unsealed: a crash can leave such a tail legitimately, and the next
`run`/`import` seals it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.errors import LogIntegrityError, StorageError, UsageError
from bridge.events import EncodingError, event_from_bytes
from bridge.log import checkpoint, crypto, format, merkle
from bridge.log.decision import DECISION_SOURCE, DecisionError, parse_decision
from bridge.log.keys import KeyMaterial
from bridge.log.schema import (
    check_key_matches,
    conversation_tag,
    cursor_mac,
    db_path,
    dedup_tag,
    expected_schema,
    frontier_bytes,
    unwrap_keys,
)

Progress = Callable[[int], None]


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    sealed_size: int = 0
    decrypted: int | None = None
    signer: str = ""
    root: bytes = b""
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def unsealed(self) -> int:
        return self.records - self.sealed_size


@dataclass(frozen=True)
class _Secrets:
    log_id: bytes
    index_key: bytes
    data_keys: dict[int, bytes]


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    path = db_path(data_dir)
    if not path.exists():
        raise UsageError(f"no log at {path}; is --data-dir right?")
    try:
        return _connect(path, "mode=ro")
    except sqlite3.OperationalError as exc:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StorageError(f"{path} is not readable: {exc}") from None
        # Cleanly closed (no WAL): a read-only open must still create the -shm file, which a full or
        # read-only disk refuses. Nothing is in a WAL, so the database file alone is the whole log.
        try:
            return _connect(path, "mode=ro&immutable=1")
        except sqlite3.DatabaseError as again:
            raise StorageError(f"{path} is not a readable Chatarchief log: {again}") from None
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{path} is not a readable Chatarchief log: {exc}") from None
    except UnicodeDecodeError:  # SQLite's message quotes a damaged schema that is no longer UTF-8
        raise StorageError(f"{path} is not a readable Chatarchief log: its schema is damaged") from None


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?{mode}", uri=True)
    try:
        conn.execute("SELECT 1 FROM meta LIMIT 1")
    except BaseException:
        conn.close()
        raise
    return conn


def verify_log(
    data_dir: Path,
    keys: KeyMaterial | None = None,
    public_key: tuple[str, Ed25519PublicKey] | None = None,
    progress: Progress | None = None,
    anchors: Sequence[str] = (),
) -> VerifyReport:
    """Verify the log; `anchors` are checkpoint notes kept outside the data dir (pinned)."""
    conn = open_readonly(data_dir)
    try:
        return _verify(conn, keys, public_key, progress, anchors)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        # A corrupt page (or a TEXT value that is no longer UTF-8) is evidence of damage, not a usage error.
        raise LogIntegrityError(None, f"the database file is damaged: {exc}") from None
    finally:
        conn.close()


def _verify(
    conn: sqlite3.Connection,
    keys: KeyMaterial | None,
    public_key: tuple[str, Ed25519PublicKey] | None,
    progress: Progress | None,
    anchors: Sequence[str],
) -> VerifyReport:
    meta = {str(k): bytes(v) for k, v in conn.execute("SELECT k, v FROM meta")}
    if keys is not None:
        check_key_matches(meta, keys)  # a wrong key file is a usage error, not evidence of tampering
    name, pub = _signer(meta, keys, public_key)
    secrets = _unlock(conn, meta, keys) if keys is not None else None
    report = VerifyReport(signer=checkpoint.format_vkey(name, pub), decrypted=0 if secrets else None)
    checkpoints = _checked_checkpoints(conn, name, pub)
    report.checkpoints = len(checkpoints)
    checkpoints = sorted([*checkpoints, *(_checked_anchor(a, name, pub) for a in anchors)], key=lambda c: c.size)
    frontier = merkle.Frontier()
    prev = format.GENESIS_PREV
    cp_iter = iter(checkpoints)
    next_cp = next(cp_iter, None)
    while next_cp is not None and next_cp.size == 0:  # checkpoints of the empty tree
        _check_root(next_cp, frontier)
        next_cp = next(cp_iter, None)
    rows = conn.execute("SELECT seq, dedup, header, commitment, body, leaf FROM records ORDER BY seq")
    for seq, dedup, header_b, commit, body, stored_leaf in rows:
        i = frontier.size
        if seq != i:
            raise LogIntegrityError(i, f"record is missing (the next stored record is {seq})")
        header, leaf = _check_record(i, bytes(header_b), bytes(commit), bytes(body), bytes(stored_leaf), prev)
        if secrets is not None:
            kind = _check_plaintext(i, secrets, header, bytes(header_b), bytes(commit), bytes(body), bytes(dedup))
            report.kinds[kind] = report.kinds.get(kind, 0) + 1
            report.decrypted = (report.decrypted or 0) + 1
        frontier.append(leaf)
        prev = leaf
        while next_cp is not None and next_cp.size == frontier.size:
            _check_root(next_cp, frontier)
            report.sealed_size = max(report.sealed_size, next_cp.size)
            next_cp = next(cp_iter, None)
        if progress is not None and i % 4096 == 0:
            progress(i)
    report.records = frontier.size
    report.root = frontier.root()
    if next_cp is not None:
        raise LogIntegrityError(
            frontier.size,
            f"log truncated: a signed checkpoint covers {next_cp.size} records but only {frontier.size} are stored",
        )
    _check_bookkeeping(conn, meta, frontier)
    if secrets is not None:
        _check_cursors(conn, secrets)
    return report


def _check_cursors(conn: sqlite3.Connection, secrets: _Secrets) -> None:
    """Each source cursor carries a keyed MAC: an altered sync token would make the bot skip events."""
    for name, value, mac in conn.execute("SELECT name, value, mac FROM cursors ORDER BY name"):
        if not crypto.hmac_equal(bytes(mac), cursor_mac(secrets.index_key, str(name), str(value))):
            raise LogIntegrityError(None, f"the stored cursor of {name} was altered")


def _check_bookkeeping(conn: sqlite3.Connection, meta: dict[str, bytes], frontier: merkle.Frontier) -> None:
    """What the writer trusts besides the records: the schema and the saved frontier.

    Neither is evidence, but the writer builds on both: a damaged frontier would be
    extended into wrong roots, a damaged schema (say, a column type) changes how
    later rows are stored. Dropped triggers are tolerated: they only guard against
    accidents (see store.py); a trigger that is present must be the one we wrote.
    """
    expected = {(t, n): (tbl, sql) for t, n, tbl, sql in expected_schema()}
    found = {(str(t), str(n)): (str(tbl), sql) for t, n, tbl, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master")}  # fmt: skip
    for key, value in found.items():
        if expected.get(key) != value:
            raise LogIntegrityError(None, f"the database schema was altered: {key[0]} {key[1]!r}", found=str(value))
    missing = [name for (kind, name) in expected if kind != "trigger" and (kind, name) not in found]
    if missing:
        raise LogIntegrityError(None, f"the database schema was altered: {', '.join(missing)} missing")
    # Cursors (MAC-checked with the key, see _check_cursors) and counters: read them so damage shows, and
    # let SQLite check every b-tree and that each index (the dedup index above all) matches its table.
    conn.execute("SELECT name, value, updated_ms, mac FROM cursors").fetchall()
    conn.execute("SELECT name, value FROM counters").fetchall()
    problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)")]
    if problems != ["ok"]:
        raise LogIntegrityError(None, f"the database file is damaged: {'; '.join(problems)}")
    saved = meta.get("frontier")
    if saved is not None and not crypto.hmac_equal(saved, frontier_bytes(frontier)):
        raise LogIntegrityError(
            frontier.size,
            "the saved tree frontier (meta) does not match the records; the writer would extend it wrongly",
        )


def _signer(
    meta: dict[str, bytes], keys: KeyMaterial | None, public_key: tuple[str, Ed25519PublicKey] | None
) -> tuple[str, Ed25519PublicKey]:
    """The key checkpoints must be signed with: given by the operator, else the log's own."""
    try:
        stored = checkpoint.parse_vkey(meta["vkey"].decode("ascii"))
    except (KeyError, UnicodeDecodeError, checkpoint.CheckpointError) as exc:
        raise LogIntegrityError(None, f"the log's public key entry is damaged: {exc}") from None
    expected = public_key or ((keys.key_name, keys.public_key) if keys else None)
    if expected is None:
        return stored
    if checkpoint.format_vkey(*expected) != checkpoint.format_vkey(*stored):
        raise LogIntegrityError(
            None,
            "the log claims another signing key than the one given",
            expected=checkpoint.format_vkey(*expected),
            found=checkpoint.format_vkey(*stored),
        )
    return expected


def _unlock(conn: sqlite3.Connection, meta: dict[str, bytes], keys: KeyMaterial) -> _Secrets:
    rows = [
        (int(k), str(p), bytes(w))
        for k, p, w in conn.execute("SELECT key_id, purpose, wrapped FROM keys ORDER BY key_id")
    ]
    try:
        index_key, data_keys = unwrap_keys(rows, keys)
    except crypto.AuthError as exc:
        raise LogIntegrityError(None, f"key table altered: {exc}") from None
    return _Secrets(keys.log_id, index_key, data_keys)


def _checked_checkpoints(conn: sqlite3.Connection, name: str, pub: Ed25519PublicKey) -> list[checkpoint.Checkpoint]:
    out: list[checkpoint.Checkpoint] = []
    for size, created_ms, note in conn.execute("SELECT size, created_ms, note FROM checkpoints ORDER BY size"):
        try:
            cp = checkpoint.verify_checkpoint_note(str(note), name, pub)
        except checkpoint.CheckpointError as exc:
            raise LogIntegrityError(size, f"checkpoint for tree size {size} does not verify: {exc}") from None
        if cp.timestamp_ms is not None and created_ms != cp.timestamp_ms:
            # The writer's checkpoint interval and the archive read this column: it must be the signed time.
            raise LogIntegrityError(
                size, "checkpoint's stored time differs from the signed one", str(cp.timestamp_ms), str(created_ms)
            )
        if cp.size != size:
            raise LogIntegrityError(
                size, "checkpoint's stored tree size differs from the signed one", str(cp.size), str(size)
            )
        if cp.origin != name:
            raise LogIntegrityError(size, "checkpoint is for another log", name, cp.origin)
        out.append(cp)
    return out


def _checked_anchor(note: str, name: str, pub: Ed25519PublicKey) -> checkpoint.Checkpoint:
    try:
        return checkpoint.verify_checkpoint_note(note, name, pub)
    except checkpoint.CheckpointError as exc:
        raise UsageError(f"the pinned checkpoint does not verify against this log's key: {exc}") from None


def _check_record(
    seq: int, header_b: bytes, commit: bytes, body: bytes, stored_leaf: bytes, prev: bytes
) -> tuple[format.RecordHeader, bytes]:
    """The parsed header and the recomputed leaf, or LogIntegrityError naming `seq`."""
    try:
        header = format.unpack_header(header_b)
    except format.FormatError as exc:
        raise LogIntegrityError(seq, f"header does not parse: {exc}") from None
    if header.seq != seq:
        raise LogIntegrityError(seq, "record is out of place (swapped or moved)", str(seq), str(header.seq))
    if len(commit) != format.HASH_BYTES:
        raise LogIntegrityError(seq, "commitment has the wrong length")
    leaf = format.leaf_of(header_b, commit, body)
    if not crypto.hmac_equal(leaf, stored_leaf):
        raise LogIntegrityError(seq, "stored bytes do not match the record's leaf hash", stored_leaf.hex(), leaf.hex())
    if not crypto.hmac_equal(header.prev_leaf, prev):
        where = seq - 1 if seq > 0 else seq
        raise LogIntegrityError(
            where,
            f"hash chain broken: record {seq} committed to a different record {where}",
            header.prev_leaf.hex(),
            prev.hex(),
        )
    return header, leaf


def _check_plaintext(
    seq: int, secrets: _Secrets, header: format.RecordHeader, header_b: bytes, commit: bytes, body: bytes, dedup: bytes
) -> str:
    try:
        payload = format.open_record(secrets.log_id, secrets.data_keys, header, header_b, commit, body)
    except format.RecordAuthError as exc:
        raise LogIntegrityError(seq, str(exc)) from None
    if header.type == format.RecordType.DECISION:
        return _check_decision(seq, secrets, header, payload, dedup)
    if header.type != format.RecordType.EVENT:
        return header.type.name.lower()
    try:
        event = event_from_bytes(payload)
    except EncodingError as exc:
        raise LogIntegrityError(seq, f"decrypted payload is not an event: {exc}") from None
    tag = conversation_tag(secrets.index_key, event.source, event.conversation)
    if not crypto.hmac_equal(tag, header.conversation_tag):
        raise LogIntegrityError(seq, "event is filed under another conversation than its header says")
    if not crypto.hmac_equal(dedup, dedup_tag(secrets.index_key, event.source, event.conversation, event.event_id)):
        raise LogIntegrityError(seq, "dedup index entry does not belong to this event")
    return event.kind.value


def _check_decision(seq: int, secrets: _Secrets, header: format.RecordHeader, payload: bytes, dedup: bytes) -> str:
    """A decision record must parse and sit under the conversation and dedup tags its payload claims."""
    try:
        d = parse_decision(payload)
    except DecisionError as exc:
        raise LogIntegrityError(seq, f"decrypted payload is not a decision: {exc}") from None
    conv = d.target.conversation
    if not crypto.hmac_equal(conversation_tag(secrets.index_key, DECISION_SOURCE, conv), header.conversation_tag):
        raise LogIntegrityError(seq, "decision is filed under another conversation than its header says")
    if not crypto.hmac_equal(dedup, dedup_tag(secrets.index_key, DECISION_SOURCE, conv, d.id)):
        raise LogIntegrityError(seq, "dedup index entry does not belong to this decision")
    return "decision"


def _check_root(cp: checkpoint.Checkpoint, frontier: merkle.Frontier) -> None:
    root = frontier.root()
    if not crypto.hmac_equal(root, cp.root):
        raise LogIntegrityError(
            max(cp.size - 1, 0),
            f"records up to {cp.size - 1} do not match the signed checkpoint at tree size {cp.size}",
            cp.root.hex(),
            root.hex(),
        )
