"""A read-only view of the log for readers such as the archive (I/O: SQLite read-only, never writes).

`LogView(data_dir, keys)` opens the database with `mode=ro`, so it can never
take the writer's lock or change a byte, and works beside a running bot. It
offers what a reader needs, and nothing that signs or appends:

- `scan()`: every record's seq, packed header and stored leaf in log order
  (plus commitment and body for DECISION records, which readers fold);
- `records(start, end, prev_leaf)`: the records of [start, end) with the leaf
  recomputed from the stored bytes, the hash chain checked from `prev_leaf`,
  and the content authenticated: encrypted records decrypted under their data
  key (AEAD and commitment), clear records (KEY, BLOB) opened with
  `format.open_clear` (commitment) without any key;
- `leaves(start, end)`: stored leaf hashes of a range (no checks: callers
  compare them with a signed root);
- `note_at(size)`, `first_checkpoint_from(size)`, `sealed_size()`: stored
  checkpoint notes (not verified here; callers verify them);
- `leaf_before(seq)`, `size()`, `decision(...)`, `media_keys()`.

Use `with view.consistent():` around a multi-statement read that must see one
snapshot of the log. Every failure of the stored bytes raises
`LogIntegrityError(seq, ...)` naming the record.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from bridge.blobs import MediaKeys
from bridge.errors import Check, LogIntegrityError
from bridge.log import audit, crypto, format, merkle, rotation
from bridge.log.decision import Decision, DecisionError, parse_decision
from bridge.log.keys import KeyMaterial
from bridge.log.rotation import KeyChain
from bridge.log.schema import check_key_matches, check_schema_version, frontier_from_bytes, unwrap_keys
from bridge.log.verify import open_readonly

#: Byte offset of appended_ms inside a packed header (after version, type, seq).
APPENDED = slice(10, 18)
TYPE_OFFSET = 1
_BATCH = 4096


def appended_ms(header: bytes) -> int:
    return int.from_bytes(header[APPENDED], "big")


@dataclass(frozen=True, slots=True)
class ScanRow:
    """One record in a header scan; `commitment`/`body` only for DECISION records (else empty)."""

    seq: int
    header: bytes
    leaf: bytes
    commitment: bytes
    body: bytes

    @property
    def type(self) -> int:
        return self.header[TYPE_OFFSET]


class RangeRecord(NamedTuple):
    """A record of a range, authenticated: leaf recomputed, chain checked, content opened (a named tuple:
    one is built per record)."""

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
        self._keys = keys
        self._conn = open_readonly(data_dir)
        try:
            meta = {str(k): bytes(v) for k, v in self._conn.execute("SELECT k, v FROM meta")}
            check_schema_version(self._conn, meta)
            check_key_matches(meta, keys)
            rows = [
                (int(k), str(p), bytes(w))
                for k, p, w in self._conn.execute("SELECT key_id, purpose, wrapped FROM keys")
            ]
            try:
                self._index_key, self._data_keys = unwrap_keys(rows, keys)
            except crypto.AuthError as exc:
                raise LogIntegrityError(None, f"key table altered: {exc}", check=Check.KEY_TABLE) from None
            self._sealers = crypto.sealers(self._data_keys)
            self._prefix = format.ad_prefix(keys.log_id)
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

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same snapshot of the log."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # -- sizes and checkpoints -------------------------------------------------------------------

    def size(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM records").fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def sealed_size(self) -> int:
        """The largest stored checkpoint size, -1 if none (not verified)."""
        row = self._conn.execute("SELECT max(size) FROM checkpoints").fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def first_appended_ms(self) -> int | None:
        row = self._conn.execute("SELECT header FROM records WHERE seq = 0").fetchone()
        return None if row is None else appended_ms(bytes(row[0]))

    def last_appended(self) -> tuple[int, int] | None:
        """(seq, appended_ms) of the log's last record, None while it holds no event yet (a fresh log's key
        records are no sign of a bot that ran)."""
        rows = self._conn.execute("SELECT seq, header FROM records ORDER BY seq DESC")
        last: tuple[int, int] | None = None
        for seq, header in rows:
            if last is None:
                last = (int(seq), appended_ms(bytes(header)))
            if bytes(header)[TYPE_OFFSET] == format.RecordType.EVENT:
                return last
        return None

    def note_at(self, size: int) -> str | None:
        row = self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else str(row[0])

    def first_checkpoint_from(self, size: int) -> int | None:
        row = self._conn.execute("SELECT min(size) FROM checkpoints WHERE size >= ?", (size,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- scans -----------------------------------------------------------------------------------

    def scan(self) -> Iterator[ScanRow]:
        """Every record from 0 in log order: seq, header, stored leaf (+ commitment, body of decisions)."""
        sql = (
            "SELECT seq, header, leaf, CASE WHEN substr(header, 2, 1) = x'02' THEN commitment END,"
            " CASE WHEN substr(header, 2, 1) = x'02' THEN body END FROM records ORDER BY seq"
        )
        cur = self._conn.execute(sql)
        while rows := cur.fetchmany(_BATCH):
            for seq, header, leaf, commit, body in rows:
                yield ScanRow(int(seq), bytes(header), bytes(leaf), bytes(commit or b""), bytes(body or b""))

    def boundary(self, ms: int) -> int | None:
        """The first seq (in log order) whose appended_ms >= `ms`, None if no record has one: a scan in
        SQLite (the big-endian time compares as bytes), not a search, so the answer is `range.py`'s rule."""
        row = self._conn.execute(
            "SELECT seq FROM records WHERE substr(header, ?, 8) >= ? ORDER BY seq LIMIT 1",
            (APPENDED.start + 1, max(ms, 0).to_bytes(8, "big")),
        ).fetchone()
        return None if row is None else int(row[0])

    def decision_rows(self, end: int) -> Iterator[ScanRow]:
        """The DECISION records before `end`, in log order, as `scan()` gives them."""
        cur = self._conn.execute(
            "SELECT seq, header, leaf, commitment, body FROM records WHERE seq < ? AND substr(header, 2, 1) = x'02'"
            " ORDER BY seq",
            (end,),
        )
        for seq, header, leaf, commit, body in cur:
            yield ScanRow(int(seq), bytes(header), bytes(leaf), bytes(commit), bytes(body))

    def signing_chain(self) -> KeyChain:
        """The log's signing keys from the key file's (pinned) key through its rotation records, each checked
        (`bridge.log.rotation`); a bad rotation record raises LogIntegrityError naming it."""
        return rotation.chain_from_rows(
            (self._keys.key_name, self._keys.public_key), self._conn.execute(rotation.ROTATION_ROWS_SQL)
        )

    def rotation_records(self) -> Iterator[RangeRecord]:
        """The SIGNING_KEY records (opened, leaf recomputed from the stored bytes), in log order."""
        for seq in self.signing_chain().rotations:
            yield next(self.records(seq, seq + 1))

    def stored_frontier(self, size: int) -> merkle.Frontier | None:
        """The tree's right edge stored with the checkpoint at `size` (not verified: callers check its root
        against the signed note), None if there is none or it does not parse."""
        row = self._conn.execute("SELECT frontier FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            return None
        try:
            frontier = frontier_from_bytes(bytes(row[0]))
        except ValueError:
            return None
        return frontier if frontier.size == size else None

    def leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(seq, stored leaf) of [start, end) in order; gaps raise."""
        cur = self._conn.execute("SELECT seq, leaf FROM records WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end))
        expected = start
        while rows := cur.fetchmany(_BATCH):
            for seq, leaf in rows:
                audit.check_position(expected, seq)
                expected += 1
                yield int(seq), bytes(leaf)
        if expected != end:
            raise LogIntegrityError(
                expected, f"record is missing (the range ends at {end})", end, expected, check=Check.MISSING_RECORD
            )

    def leaf_before(self, seq: int) -> bytes | None:
        if seq == 0:
            return format.GENESIS_PREV
        row = self._conn.execute("SELECT leaf FROM records WHERE seq = ?", (seq - 1,)).fetchone()
        return None if row is None else bytes(row[0])

    def decision(self, row: ScanRow) -> Decision:
        """The decision a DECISION row of `scan()` holds, decrypted and authenticated."""
        header = self._header(row.seq, row.header)
        payload = self._open(row.seq, row.header, header, row.commitment, row.body)[1]
        try:
            return parse_decision(payload)
        except DecisionError as exc:
            raise LogIntegrityError(row.seq, f"decision record does not parse: {exc}", check=Check.PAYLOAD) from None

    def leaf_parts(self, seq: int) -> tuple[bytes, bytes, bytes]:
        """(header, commitment, SHA-256 of the stored body) of record `seq`, checked against its stored leaf."""
        row = self._conn.execute("SELECT header, commitment, body, leaf FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise LogIntegrityError(seq, "record is missing", check=Check.MISSING_RECORD)
        header, commit, body, stored = (bytes(v) for v in row)
        ct_hash = hashlib.sha256(body).digest()
        leaf = merkle.leaf_hash(format.leaf_data(header, commit, ct_hash))
        if not crypto.hmac_equal(leaf, stored):
            raise LogIntegrityError(
                seq, "stored bytes do not match the record's leaf hash", stored, leaf, check=Check.LEAF
            )
        return header, commit, ct_hash

    def opened(self, row: ScanRow) -> RangeRecord:
        """A DECISION row of `scan()` authenticated (leaf recomputed, content opened) like `records` does."""
        header = self._header(row.seq, row.header)
        ct_hash = hashlib.sha256(row.body).digest()
        leaf = merkle.leaf_hash(format.leaf_data(row.header, row.commitment, ct_hash))
        if header.seq != row.seq:
            raise LogIntegrityError(
                row.seq, "record is out of place (swapped or moved)", row.seq, header.seq, check=Check.POSITION
            )
        if not crypto.hmac_equal(leaf, row.leaf):
            raise LogIntegrityError(
                row.seq, "stored bytes do not match the record's leaf hash", row.leaf, leaf, check=Check.LEAF
            )
        salt, payload = self._open(row.seq, row.header, header, row.commitment, row.body)
        return RangeRecord(row.seq, row.header, header, row.commitment, ct_hash, leaf, salt, payload)

    def records(self, start: int, end: int, prev_leaf: bytes | None = None) -> Iterator[RangeRecord]:
        """Records [start, end) authenticated (see the module docstring), chain checked from `prev_leaf`."""
        cur = self._conn.execute(
            "SELECT seq, header, commitment, body, leaf FROM records WHERE seq >= ? AND seq < ? ORDER BY seq",
            (start, end),
        )
        expected = start
        sha256 = hashlib.sha256
        compare = hmac.compare_digest
        while rows := cur.fetchmany(1024):
            for seq, header_b, commit, body, stored in rows:
                if seq != expected:
                    audit.check_position(expected, seq)
                expected += 1
                if type(header_b) is not bytes or type(commit) is not bytes or type(body) is not bytes:
                    header_b, commit, body = bytes(header_b), bytes(commit), bytes(body)
                header = self._header(seq, header_b)
                if header.seq != seq:
                    raise LogIntegrityError(
                        seq, "record is out of place (swapped or moved)", seq, header.seq, check=Check.POSITION
                    )
                ct_hash = sha256(body).digest()
                leaf = sha256(b"\x00" + header_b + commit + ct_hash).digest()  # merkle.leaf_hash(format.leaf_data())
                if not compare(leaf, stored if type(stored) is bytes else bytes(stored)):  # crypto.hmac_equal
                    raise LogIntegrityError(
                        seq, "stored bytes do not match the record's leaf hash", bytes(stored), leaf, check=Check.LEAF
                    )
                if prev_leaf is not None and not compare(header.prev_leaf, prev_leaf):
                    raise LogIntegrityError(seq, "hash chain broken", header.prev_leaf, prev_leaf, check=Check.CHAIN)
                prev_leaf = leaf
                salt, payload = self._open(seq, header_b, header, commit, body)
                yield RangeRecord(seq, header_b, header, commit, ct_hash, leaf, salt, payload)
        if expected != end:
            raise LogIntegrityError(
                expected, f"record is missing (the range ends at {end})", end, expected, check=Check.MISSING_RECORD
            )

    @staticmethod
    def _header(seq: int, header_b: bytes) -> format.RecordHeader:
        try:
            return format.unpack_header(header_b)
        except format.FormatError as exc:
            raise LogIntegrityError(seq, f"header does not parse: {exc}", check=Check.HEADER) from None

    def _open(
        self, seq: int, header_b: bytes, header: format.RecordHeader, commit: bytes, body: bytes
    ) -> tuple[bytes, bytes]:
        if header.type in format.CLEAR_TYPES:
            try:
                return format.open_clear(header, commit, body)
            except format.RecordAuthError as exc:
                raise LogIntegrityError(seq, f"clear record: {exc}", check=audit.auth_check(exc)) from None
        sealer = self._sealers.get(header.key_id)
        if sealer is None:
            raise LogIntegrityError(seq, f"data key {header.key_id} is not in the key table", check=Check.KEY_TABLE)
        try:
            plaintext = sealer.open(header.nonce, body, self._prefix + header_b + commit)  # format.associated_data
        except crypto.AuthError:
            raise LogIntegrityError(
                seq, "ciphertext does not authenticate under its data key", check=Check.AEAD
            ) from None
        if header.version == format.VERSION_COMPRESSED:
            try:
                salt, payload = format.expand_parts(plaintext)
            except format.RecordAuthError as exc:
                raise LogIntegrityError(seq, str(exc), check=audit.auth_check(exc)) from None
            h = hashlib.sha256(salt)
            h.update(payload)
            if not hmac.compare_digest(got := h.digest(), commit):  # format.commitment of salt || payload
                raise LogIntegrityError(
                    seq, "plaintext does not match the stored commitment", commit, got, check=Check.COMMITMENT
                )
            return salt, payload
        if not crypto.hmac_equal(got := hashlib.sha256(plaintext).digest(), commit):  # format.commitment
            raise LogIntegrityError(
                seq, "plaintext does not match the stored commitment", commit, got, check=Check.COMMITMENT
            )
        if len(plaintext) < crypto.SALT_BYTES:
            raise LogIntegrityError(seq, "plaintext shorter than its salt", check=Check.PAYLOAD)
        return plaintext[: crypto.SALT_BYTES], plaintext[crypto.SALT_BYTES :]  # format.split_plaintext


__all__ = ["APPENDED", "LogView", "RangeRecord", "ScanRow", "appended_ms"]
