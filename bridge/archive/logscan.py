"""Reading a month out of the log for a package (I/O: SQLite read-only, one short write).

`LogView` opens the log read-only with the key file and offers the two passes
the package writer needs:

1. `plan(window)`: scans the headers and stored leaf hashes in log order from
   record 0 to find the month's range [start, end) (see `range.py`), the tree's
   frontier at `start`, the decisions before `end` (decrypted: they say which
   events are withheld), and the roots at `start`, at `end` and at the first
   signed checkpoint at or after `end`, each checked against the signed
   checkpoints at those sizes. A prefix checkpoint is only ever signed once the
   prefix is shown consistent with a checkpoint the log already signed (or, for
   an open month, for the whole current log): a log must never sign two
   inconsistent checkpoints.
2. `records(start, end)`: every record of the range decrypted and
   authenticated, its leaf recomputed from the stored bytes and its hash chain
   link checked.

`seal_prefix` signs and inserts the checkpoint for a tree size when the table
has none (the root of a prefix is consistent with every later checkpoint).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bridge.archive.range import BoundaryScan, Window
from bridge.blobs import MediaKeys
from bridge.errors import LogIntegrityError, UsageError
from bridge.log import checkpoint, crypto, format, merkle
from bridge.log.decision import Decision, DecisionError, parse_decision
from bridge.log.keys import KeyMaterial
from bridge.log.schema import check_key_matches, db_path, now_ms, unwrap_keys
from bridge.log.verify import open_readonly

_APPENDED = slice(10, 18)  # appended_ms inside a packed header (after version, type, seq)
_TYPE = 1


@dataclass(frozen=True)
class Plan:
    """A month's range and what proves it; `start_note`/`end_note` are None until sealed."""

    start: int
    end: int
    log_size: int
    frontier_start: merkle.Frontier
    end_root: bytes
    decisions: tuple[tuple[int, Decision], ...]
    start_note: str | None
    end_note: str | None
    first_appended_ms: int | None


@dataclass(frozen=True, slots=True)
class RangeRecord:
    seq: int
    header_bytes: bytes
    header: format.RecordHeader
    commitment: bytes
    ciphertext_hash: bytes
    leaf: bytes
    salt: bytes
    payload: bytes


class LogView:
    """Read-only view of a log with its keys. Use as a context manager."""

    def __init__(self, data_dir: Path, keys: KeyMaterial) -> None:
        self._data_dir = data_dir
        self._keys = keys
        self._conn = open_readonly(data_dir)
        try:
            meta = {str(k): bytes(v) for k, v in self._conn.execute("SELECT k, v FROM meta")}
            check_key_matches(meta, keys)
            rows = [
                (int(k), str(p), bytes(w))
                for k, p, w in self._conn.execute("SELECT key_id, purpose, wrapped FROM keys")
            ]
            try:
                self._index_key, data_keys = unwrap_keys(rows, keys)
            except crypto.AuthError as exc:
                raise LogIntegrityError(None, f"key table altered: {exc}") from None
            self._data_keys = data_keys
            self._sealers = {k: crypto.Sealer(v) for k, v in data_keys.items()}
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._conn.close()

    @property
    def keys(self) -> KeyMaterial:
        return self._keys

    def media_keys(self) -> MediaKeys:
        return MediaKeys(self._keys.log_id, self._index_key, dict(self._data_keys), max(self._data_keys))

    def size(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM records").fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def first_appended_ms(self) -> int | None:
        row = self._conn.execute("SELECT header FROM records WHERE seq = 0").fetchone()
        return None if row is None else int.from_bytes(bytes(row[0])[_APPENDED], "big")

    def sealed_size(self) -> int:
        row = self._conn.execute("SELECT max(size) FROM checkpoints").fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def note_at(self, size: int) -> str | None:
        row = self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else str(row[0])

    def _first_checkpoint_from(self, size: int) -> int | None:
        row = self._conn.execute("SELECT min(size) FROM checkpoints WHERE size >= ?", (size,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- pass 1 ----------------------------------------------------------------------------------

    def plan(self, win: Window, *, open_month: bool = False) -> Plan:
        """The month's range and evidence (see the module docstring); raises UsageError if not sealed."""
        self._conn.execute("BEGIN")  # one consistent snapshot for the whole scan
        try:
            return self._plan(win, open_month)
        finally:
            self._conn.execute("COMMIT")

    def _plan(self, win: Window, open_month: bool) -> Plan:
        scan = BoundaryScan(win)
        frontier = merkle.Frontier()
        start_frontier: merkle.Frontier | None = None
        end_root: bytes | None = None
        target: int | None = None
        decisions: list[tuple[int, Decision]] = []
        first_ms: int | None = None
        sql = (
            "SELECT seq, header, leaf, CASE WHEN substr(header, 2, 1) = x'02' THEN commitment END,"
            " CASE WHEN substr(header, 2, 1) = x'02' THEN body END FROM records ORDER BY seq"
        )
        cur = self._conn.execute(sql)
        while rows := cur.fetchmany(4096):
            for seq, header, leaf, commit, body in rows:
                if seq != frontier.size:
                    raise LogIntegrityError(frontier.size, f"record is missing (the next stored record is {seq})")
                appended = int.from_bytes(header[_APPENDED], "big")
                if first_ms is None:
                    first_ms = appended
                if end_root is None:
                    scan.feed(seq, appended)
                    if scan.start == seq and start_frontier is None:
                        start_frontier = frontier.copy()
                    if scan.end is not None:
                        end_root = frontier.root()
                        target = self._first_checkpoint_from(seq)
                    elif header[_TYPE] == format.RecordType.DECISION:
                        decisions.append((seq, self._decision(seq, bytes(header), bytes(commit), bytes(body))))
                if target is not None and frontier.size == target:
                    break
                frontier.append(bytes(leaf))
            else:
                continue
            break
        size = self.size()
        if end_root is None:  # no record reached the month's end: the range runs to the log's end
            start, end = scan.finish(frontier.size)
            if start_frontier is None:
                start_frontier = frontier.copy()
            end_root = frontier.root()
            target = self._first_checkpoint_from(end)
        else:
            start, end = scan.finish(size)
        assert start_frontier is not None
        if target is not None and target > frontier.size:
            raise LogIntegrityError(
                frontier.size, f"log truncated: a signed checkpoint covers {target} records but only {size} are stored"
            )
        if target is None and not open_month:
            raise UsageError(
                f"month {win.month} ends at record {end} but the log is sealed only up to record"
                f" {self.sealed_size()}; seal it first (`chatarchief run` checkpoints every minute and when it"
                " stops; `import` at its end)"
            )
        if target is None and start > self.sealed_size():
            # An open month may end in unsealed records (pass 2 checks those), but what precedes it must be sealed.
            raise UsageError(
                f"records before {win.month} are not sealed by a checkpoint yet; seal the log first (`chatarchief run`)"
            )
        start_note = self._checked_note(start, start_frontier.root()) if start > 0 else None
        end_note = self._checked_note(end, end_root)
        if target is not None and target != end:
            self._checked_note(target, frontier.root())
        return Plan(start, end, size, start_frontier, end_root, tuple(decisions), start_note, end_note, first_ms)

    def _decision(self, seq: int, header_b: bytes, commit: bytes, body: bytes) -> Decision:
        payload = self._open(seq, header_b, format.unpack_header(header_b), commit, body)[1]
        try:
            return parse_decision(payload)
        except DecisionError as exc:
            raise LogIntegrityError(seq, f"decision record does not parse: {exc}") from None

    def _checked_note(self, size: int, root: bytes) -> str | None:
        """The stored checkpoint note at `size`, after checking its signature and root; None if none."""
        note = self.note_at(size)
        if note is None:
            return None
        name = self._keys.key_name
        try:
            cp = checkpoint.verify_checkpoint_note(note, name, self._keys.public_key, origin=name)
        except checkpoint.CheckpointError as exc:
            raise LogIntegrityError(size, f"checkpoint for tree size {size} does not verify: {exc}") from None
        if cp.size != size or not crypto.hmac_equal(cp.root, root):
            raise LogIntegrityError(
                max(size - 1, 0), f"records up to {size - 1} do not match the signed checkpoint at tree size {size}"
            )
        return note

    # -- pass 2 ----------------------------------------------------------------------------------

    def records(self, start: int, end: int, prev_leaf: bytes | None = None) -> Iterator[RangeRecord]:
        """Records [start, end) decrypted, authenticated, leaf recomputed, chain checked from `prev_leaf`."""
        cur = self._conn.execute(
            "SELECT seq, header, commitment, body, leaf FROM records WHERE seq >= ? AND seq < ? ORDER BY seq",
            (start, end),
        )
        expected = start
        while rows := cur.fetchmany(1024):
            for seq, header_b, commit, body, stored in rows:
                if seq != expected:
                    raise LogIntegrityError(expected, f"record is missing (the next stored record is {seq})")
                expected += 1
                header_b, commit, body = bytes(header_b), bytes(commit), bytes(body)
                try:
                    header = format.unpack_header(header_b)
                except format.FormatError as exc:
                    raise LogIntegrityError(seq, f"header does not parse: {exc}") from None
                if header.seq != seq:
                    raise LogIntegrityError(seq, "record is out of place (swapped or moved)")
                ct_hash = hashlib.sha256(body).digest()
                leaf = merkle.leaf_hash(format.leaf_data(header_b, commit, ct_hash))
                if not crypto.hmac_equal(leaf, bytes(stored)):
                    raise LogIntegrityError(seq, "stored bytes do not match the record's leaf hash")
                if prev_leaf is not None and not crypto.hmac_equal(header.prev_leaf, prev_leaf):
                    raise LogIntegrityError(seq, "hash chain broken")
                prev_leaf = leaf
                salt, payload = self._open(seq, header_b, header, commit, body)
                yield RangeRecord(seq, header_b, header, commit, ct_hash, leaf, salt, payload)
        if expected != end:
            raise LogIntegrityError(expected, f"record is missing (the range ends at {end})")

    def leaf_before(self, seq: int) -> bytes | None:
        if seq == 0:
            return format.GENESIS_PREV
        row = self._conn.execute("SELECT leaf FROM records WHERE seq = ?", (seq - 1,)).fetchone()
        return None if row is None else bytes(row[0])

    def _open(
        self, seq: int, header_b: bytes, header: format.RecordHeader, commit: bytes, body: bytes
    ) -> tuple[bytes, bytes]:
        sealer = self._sealers.get(header.key_id)
        if sealer is None:
            raise LogIntegrityError(seq, f"data key {header.key_id} is not in the key table")
        try:
            plaintext = sealer.open(header.nonce, body, format.associated_data(self._keys.log_id, header_b, commit))
        except crypto.AuthError:
            raise LogIntegrityError(seq, "ciphertext does not authenticate under its data key") from None
        if not crypto.hmac_equal(format.commitment(plaintext), commit):
            raise LogIntegrityError(seq, "plaintext does not match the stored commitment")
        return format.split_plaintext(plaintext)


def seal_prefix(data_dir: Path, keys: KeyMaterial, size: int, root: bytes) -> str:
    """The checkpoint note for tree size `size` with `root`: the stored one, else a new one signed now and stored.

    The caller has shown `root` to be the root of the log's first `size` leaves
    (consistent with the log's later checkpoints).
    """
    conn = sqlite3.connect(db_path(data_dir), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        name = keys.key_name
        cp = checkpoint.Checkpoint(origin=name, size=size, root=root, timestamp_ms=now_ms())
        note = checkpoint.sign_checkpoint(cp, name, keys.signing_key)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR IGNORE INTO checkpoints (size, created_ms, note) VALUES (?, ?, ?)", (size, cp.timestamp_ms, note)
        )
        stored = conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        conn.execute("COMMIT")
    finally:
        conn.close()
    stored_note = str(stored[0])
    found = checkpoint.verify_checkpoint_note(stored_note, keys.key_name, keys.public_key)
    if not crypto.hmac_equal(found.root, root):
        raise LogIntegrityError(max(size - 1, 0), f"a stored checkpoint at tree size {size} has another root")
    return stored_note
