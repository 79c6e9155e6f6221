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

Clear records are checked without a key: KEY records (the wrapped keys) must
be exactly what the `keys` table holds, BLOB records name media files that must
exist in `blobs/` with the SHA-256 and size recorded (with the key, each also
decrypts to the content its id names, and every stored attachment of an event
names a blob recorded before it). Each checkpoint's stored tree edge must be the
one recomputed at its size (the writer resumes from it).

The first failure raises `LogIntegrityError` naming the first bad sequence
number (or the checkpoint's tree size). Records after the last checkpoint are
vouched for by nothing but their AEAD: keyless, they fail unless the caller
allows them (beside a running bot); with the key, they are authenticated and
reported as unsealed (a crash can leave such a tail; the next writer seals it).
"""

from __future__ import annotations

import bisect
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.blobs import BlobStore, MediaKeys
from bridge.errors import Check, LogIntegrityError, StorageError, UsageError
from bridge.events import Event
from bridge.log import audit, checkpoint, crypto, db, format, merkle, rotation, verify_workers
from bridge.log.clear import BlobRecord, KeyRecord
from bridge.log.keys import KeyMaterial
from bridge.log.rotation import SigningKeyRecord
from bridge.log.schema import (
    META_KEYS,
    check_key_matches,
    check_schema_version,
    cursor_mac,
    db_path,
    frontier_bytes,
    meta_dict,
    open_cursor,
    unwrap_keys,
)

Progress = Callable[[int], None]
#: Records fetched per call (fewer round trips through the driver; memory stays a few MB).
_FETCH = 2048


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    sealed_size: int = 0
    decrypted: int | None = None
    signer: str = ""
    root: bytes = b""
    kinds: dict[str, int] = field(default_factory=dict)
    #: The note text of the newest stored checkpoint (verified): what witnesses cosign.
    newest_checkpoint: str = ""
    #: Positions of the signing-key rotation records (checked from the pinned key; `signer` is the newest key).
    rotations: list[int] = field(default_factory=list)

    @property
    def unsealed(self) -> int:
        return self.records - self.sealed_size

    def to_json(self) -> dict[str, object]:
        """The report as `verify --json` prints it."""
        return {
            "intact": True,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "sealed_size": self.sealed_size,
            "unsealed": self.unsealed,
            "decrypted": self.decrypted,
            "kinds": dict(sorted(self.kinds.items())),
            "signer": self.signer,
            "rotations": self.rotations,
            "root": self.root.hex(),
        }


def open_readonly(data_dir: Path) -> db.ReadConnection:
    """A read-only connection to the log of `data_dir`: SQLite `mode=ro`, or a read-only PostgreSQL session."""
    if db.backend_of(data_dir) == db.POSTGRESQL:
        return db.open_readonly(data_dir)
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
    *,
    allow_unsealed: bool = False,
    workers: int | None = None,
) -> VerifyReport:
    """Verify the log; `anchors` are checkpoint notes kept outside the data dir (pinned).

    Keyless, records after the last checkpoint are tampering (nothing vouches
    for them) unless `allow_unsealed`; with the key they are authenticated by
    decryption and only reported as unsealed. `workers` (default: the usable CPUs) is how many helper
    processes check records of a large log (`verify_workers`); 1 checks them all in this process. The
    result, and the first failure, are the same for any number.
    """
    workers = verify_workers.default_workers() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    conn = open_readonly(data_dir)
    try:
        report = _verify(conn, data_dir, keys, public_key, progress, anchors, workers)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        # A corrupt page (or a TEXT value that is no longer UTF-8) is evidence of damage, not a usage error.
        raise LogIntegrityError(None, f"the database file is damaged: {exc}", check=Check.DATABASE) from None
    finally:
        conn.close()
    if report.unsealed and keys is None and not allow_unsealed:
        raise LogIntegrityError(
            report.sealed_size,
            f"{report.unsealed} records after the last signed checkpoint (tree size {report.sealed_size}) are"
            " vouched for by nothing; check them with --key-file, or pass --allow-unsealed beside a running bot",
            check=Check.UNSEALED,
        )
    return report


def _verify(
    conn: db.ReadConnection,
    data_dir: Path,
    keys: KeyMaterial | None,
    public_key: tuple[str, Ed25519PublicKey] | None,
    progress: Progress | None,
    anchors: Sequence[str],
    workers: int,
) -> VerifyReport:
    conn.execute("BEGIN")  # one consistent snapshot, also beside a running writer
    meta = meta_dict(conn.execute("SELECT k, v FROM meta"))
    check_schema_version(conn, meta)
    if keys is not None:  # a wrong key file is a usage error, not evidence of tampering
        # rows are only evidence here; a damaged one (wrong types) is skipped, and the key table check names it
        wrapped = conn.execute("SELECT key_id, purpose, wrapped FROM keys").fetchall()
        typed = [(k, p, w) for k, p, w in wrapped if (type(k), type(p), type(w)) == (int, str, bytes)]
        check_key_matches(meta, keys, typed)
    name, pub = _signer(meta, keys, public_key)
    chain = rotation.chain_from_rows((name, pub), conn.execute(rotation.ROTATION_ROWS_SQL))
    secrets = _unlock(conn, keys) if keys is not None else None
    report = VerifyReport(signer=rotation.vkey_of(chain.current), decrypted=0 if secrets else None)
    report.rotations = chain.rotations
    stored = _checked_checkpoints(conn, name, chain)
    report.checkpoints = len(stored)
    report.newest_checkpoint = stored[-1][0].body() if stored else ""
    edges = {cp.size: edge for cp, edge in stored}
    pinned = [_checked_anchor(a, chain) for a in anchors]
    checkpoints = sorted([*(cp for cp, _ in stored), *pinned], key=lambda c: c.size)
    walk = _Walk(report, chain, secrets, checkpoints, edges, _BlobCheck(data_dir / "blobs", secrets), progress)
    walk.at_checkpoints(0, walk.frontier)  # checkpoints of the empty tree
    total = _parallel_total(conn, workers)
    # SQLite's integrity check (~2 µs a record) runs beside the helpers instead of after them.
    early = _EarlyIntegrity(data_dir) if total is not None and isinstance(conn, sqlite3.Connection) else None
    if total is None:
        walk.serial(conn, 0, None)
    else:
        walk.parallel(conn, data_dir, total, workers)
    frontier, next_cp = walk.frontier, walk.next_cp
    if secrets is not None:
        report.decrypted = walk.decrypted
    report.records = frontier.size
    report.root = frontier.root()
    if next_cp is not None:
        raise LogIntegrityError(
            frontier.size,
            f"log truncated: a signed checkpoint covers {next_cp.size} records but only {frontier.size} are stored",
            check=Check.TRUNCATED,
        )
    _check_key_table(conn, walk.key_records)
    _check_bookkeeping(conn, meta, early)
    if secrets is not None:
        _check_cursors(conn, secrets)
    conn.execute("COMMIT")
    return report


class _Walk:
    """The walk over the records in log order: the checks that span records (the chain, the tree and the
    checkpoints on it, key records, blobs, rotations) and the counts. `serial` reads and checks every record
    here; `parallel` leaves the per-record lean checks of whole ranges to helper processes
    (`verify_workers`) and runs here only what they send back, in the same order, so the first failure and
    its text are the serial walk's."""

    def __init__(
        self,
        report: VerifyReport,
        chain: rotation.KeyChain,
        secrets: audit.Secrets | None,
        checkpoints: list[checkpoint.Checkpoint],
        edges: dict[int, bytes],
        blobs: _BlobCheck,
        progress: Progress | None,
    ) -> None:
        self.report = report
        self.chain = chain
        self.secrets = secrets
        self.edges = edges
        self.blobs = blobs
        self.progress = progress
        self.frontier = merkle.Frontier()
        self.key_records: dict[int, tuple[int, KeyRecord]] = {}
        self.decrypted = 0
        # The common record (an EVENT without attachments) takes audit's lean path; anything it does not
        # accept takes the full checks, which name what is wrong (or accept what the lean path does not handle).
        self.quick = audit.QuickEvents(secrets) if secrets is not None else None
        self._cps = iter(checkpoints)
        self.next_cp = next(self._cps, None)

    def at_checkpoints(self, size: int, frontier: merkle.Frontier) -> None:
        """Check every checkpoint of tree size `size` against `frontier` (the tree of the first `size` records)."""
        while self.next_cp is not None and self.next_cp.size == size:
            _check_root(self.next_cp, frontier, self.edges)
            self.report.sealed_size = max(self.report.sealed_size, size)
            self.next_cp = next(self._cps, None)

    def serial(self, conn: db.ReadConnection, start: int, end: int | None) -> None:
        """Check records from `start` (the tree holds the ones before) up to `end` (None: all), here."""
        quick, kinds, frontier = self.quick, self.report.kinds, self.frontier
        progress = self.progress
        decrypted = 0
        append = frontier.append
        prev = format.GENESIS_PREV if start == 0 else self._stored_leaf(conn, start - 1)
        stop = self.next_cp.size if self.next_cp is not None else -1
        sql = "SELECT seq, dedup, header, commitment, body, leaf FROM records ORDER BY seq"
        if start:
            sql = "SELECT seq, dedup, header, commitment, body, leaf FROM records WHERE seq >= ? ORDER BY seq"
        rows = conn.execute(sql, (start,) if start else ())
        i = start
        try:
            while i != end and (batch := rows.fetchmany(_FETCH)):
                for seq, dedup, header_b, commit, body, stored_leaf in batch:
                    lean = seq == i and type(dedup) is bytes
                    leaf = audit.quick_leaf(i, header_b, commit, body, stored_leaf, prev) if lean else b""
                    kind = quick.kind(header_b, commit, body, dedup) if leaf and quick is not None else ""
                    if not leaf or (quick is not None and not kind):
                        leaf, kind = self.full(i, seq, dedup, header_b, commit, body, stored_leaf, prev)
                    if kind:
                        kinds[kind] = kinds.get(kind, 0) + 1
                        decrypted += 1
                    append(leaf)
                    prev = leaf
                    i += 1
                    if i == stop:
                        self.at_checkpoints(i, frontier)
                        stop = self.next_cp.size if self.next_cp is not None else -1
                    if progress is not None and i % 4096 == 1:
                        progress(i - 1)
                    if i == end:
                        break
        finally:
            self.decrypted += decrypted

    def full(
        self, i: int, seq: object, dedup: object, header_b: object, commit: object, body: object, stored: object,
        prev: bytes,
    ) -> tuple[bytes, str]:  # fmt: skip
        """Every check of record `i` (the lean path did not accept it): its leaf and the kind it counts as."""
        audit.check_position(i, seq)  # type: ignore[arg-type]
        header_b, commit, body, stored_leaf, dedup = audit.blobs_of(i, header_b, commit, body, stored, dedup)
        header, leaf = audit.check_stored(i, header_b, commit, body, stored_leaf, prev)
        if header.type in format.CLEAR_TYPES:
            clear = audit.open_clear_record(i, header, commit, body)
            if isinstance(clear, KeyRecord):
                if clear.key_id in self.key_records:
                    raise LogIntegrityError(
                        i,
                        f"key {clear.key_id} is recorded twice",
                        found=f"key {clear.key_id} at record {self.key_records[clear.key_id][0]}",
                        check=Check.KEY_TABLE,
                    )
                self.key_records[clear.key_id] = (i, clear)
            elif isinstance(clear, SigningKeyRecord):
                if i not in self.chain.rotations:  # the chain was read through the dedup index
                    raise LogIntegrityError(
                        i, "signing-key rotation record is not indexed as one (its dedup entry was altered)",
                        check=Check.TAGS,
                    )  # fmt: skip
            else:
                self.blobs.check_record(i, clear)
        if self.secrets is None:
            return leaf, ""
        opened = audit.check_plaintext(i, self.secrets, header, header_b, commit, body, dedup)
        if isinstance(opened, Event):
            self.blobs.check_event(i, opened)
        return leaf, audit.kind_of(opened)

    def parallel(self, conn: db.ReadConnection, data_dir: Path, total: int, workers: int) -> None:
        """Check records 0..total-1 (exactly the stored ones) with `workers` helper processes."""
        chunk = verify_workers.CHUNK
        ranges = [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
        pending = [cp.size for cp in self._pending_checkpoints()]  # sorted by size
        # the checkpoint sizes inside each range, (start, end]
        sizes = [pending[bisect.bisect_right(pending, a) : bisect.bisect_right(pending, b)] for a, b in ranges]
        helpers: list[verify_workers.Helper] = []
        try:
            for _ in range(min(workers, len(ranges))):
                helpers.append(verify_workers.Helper(data_dir, self.secrets))
            n = len(helpers)
            for j in range(min(2 * n, len(ranges))):  # two ranges queued per helper: none waits for us
                helpers[j % n].submit(*ranges[j], sizes[j])
            hashes: list[bytes] = []
            for j, (a, b) in enumerate(ranges):
                result = helpers[j % n].result()
                if j + 2 * n < len(ranges):
                    helpers[j % n].submit(*ranges[j + 2 * n], sizes[j + 2 * n])
                if result is None or not result.complete:
                    self.frontier = merkle.Frontier.from_hashes(a, hashes)
                    self.serial(conn, a, b)
                    hashes = list(self.frontier.hashes)
                else:
                    self._merge(conn, a, b, hashes, result)
                    hashes = verify_workers.join(hashes, a, result.hashes, b - a)
                if self.progress is not None:
                    self.progress(b)
            self.frontier = merkle.Frontier.from_hashes(total, hashes)
        except BaseException:
            for helper in helpers:
                helper.stop(wait=False)
            raise
        for helper in helpers:
            helper.finish()  # all at once: they exit side by side
        for helper in helpers:
            helper.stop()

    def _merge(
        self, conn: db.ReadConnection, a: int, b: int, hashes: list[bytes], result: verify_workers.RangeResult
    ) -> None:
        """A helper's range: its counts, then the records it left to us and its checkpoints, in log order."""
        kinds = self.report.kinds
        for kind, count in result.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
            self.decrypted += count
        slow = iter(result.slow)
        i = next(slow, None)
        for size in sorted({*(a + m for m in result.cuts), b}):
            while i is not None and i < size:
                prev = self._stored_leaf(conn, i - 1) if i else format.GENESIS_PREV
                row = conn.execute(
                    "SELECT seq, dedup, header, commitment, body, leaf FROM records WHERE seq = ?", (i,)
                ).fetchone()
                seq, dedup, header_b, commit, body, stored = row
                _, kind = self.full(i, seq, dedup, header_b, commit, body, stored, prev)
                if kind:
                    kinds[kind] = kinds.get(kind, 0) + 1
                    self.decrypted += 1
                i = next(slow, None)
            cut = result.cuts.get(size - a)
            if cut is not None:
                tree = verify_workers.join(hashes, a, cut, size - a)
                self.at_checkpoints(size, merkle.Frontier.from_hashes(size, tree))

    def _pending_checkpoints(self) -> list[checkpoint.Checkpoint]:
        out = [] if self.next_cp is None else [self.next_cp]
        rest = list(self._cps)
        self._cps = iter(rest)
        return out + rest

    @staticmethod
    def _stored_leaf(conn: db.ReadConnection, seq: int) -> bytes:
        """The stored leaf of record `seq`, already checked: the next record's `prev`."""
        row = conn.execute("SELECT leaf FROM records WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0])


def _parallel_total(conn: db.ReadConnection, workers: int) -> int | None:
    """The number of records when helpers should check them: the stored sequence numbers are exactly
    0..n-1 (else the serial walk names the gap) and there are enough of them to be worth the processes."""
    if workers < 2:
        return None
    try:
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM records").fetchone()
    except sqlite3.DatabaseError:
        return None  # the serial walk meets the damage where it is, and names it
    if not count or count < verify_workers.PARALLEL_MIN or low != 0 or high != count - 1:
        return None
    return int(count)


class _BlobCheck:
    """Media under the proof: each BLOB record's file exists with its hash and size; with the key it
    decrypts to the content its id names, and each stored attachment names a blob recorded before it."""

    def __init__(self, root: Path, secrets: audit.Secrets | None) -> None:
        self._root = root
        self._recorded: set[str] = set()
        self._store: BlobStore | None = None
        if secrets is not None:
            media = MediaKeys(secrets.log_id, secrets.index_key, secrets.data_keys, max(secrets.data_keys))
            self._store = BlobStore(root, media)

    def check_record(self, seq: int, rec: BlobRecord) -> None:
        path = self._root / rec.blob_id[:2] / rec.blob_id
        try:
            raw = path.read_bytes()
        except OSError:
            raise LogIntegrityError(
                seq, f"media blob {rec.blob_id} is missing from the blob store", check=Check.BLOB
            ) from None
        digest = hashlib.sha256(raw).hexdigest()
        if len(raw) != rec.size or not crypto.hmac_equal(digest.encode(), rec.sha256.encode()):
            raise LogIntegrityError(
                seq,
                f"media blob {rec.blob_id} was altered (not the file its record names)",
                f"sha256 {rec.sha256}, {rec.size} bytes",
                f"sha256 {digest}, {len(raw)} bytes",
                check=Check.BLOB,
            )
        if self._store is not None:
            try:
                self._store.get(rec.blob_id)  # decrypts and checks the plaintext against the id
            except LogIntegrityError as exc:
                raise LogIntegrityError(seq, exc.reason, exc.expected, exc.found, check=exc.check) from None
        self._recorded.add(rec.blob_id)

    def check_event(self, seq: int, event: Event) -> None:
        for att in event.attachments:
            if att.status == "stored" and att.blob_id is not None and att.blob_id not in self._recorded:
                raise LogIntegrityError(
                    seq,
                    f"a stored attachment names media blob {att.blob_id}, which no earlier record vouches for",
                    check=Check.BLOB,
                )


def _check_key_table(conn: db.ReadConnection, records: dict[int, tuple[int, KeyRecord]]) -> None:
    """The key table is an index of the KEY records (the evidence): it must hold exactly them."""
    table = {
        int(k): (int(seq), KeyRecord(int(k), str(p), int(c), bytes(w)))
        for k, p, c, w, seq in conn.execute("SELECT key_id, purpose, created_ms, wrapped, seq FROM keys")
    }
    for key_id in sorted(records.keys() | table.keys()):
        if key_id not in table:
            raise LogIntegrityError(
                records[key_id][0], f"key {key_id} is missing from the key table", check=Check.KEY_TABLE
            )
        if key_id not in records:
            raise LogIntegrityError(
                table[key_id][0],
                f"the key table holds key {key_id}, which no key record vouches for",
                check=Check.KEY_TABLE,
            )
        if table[key_id] != records[key_id]:
            raise LogIntegrityError(
                records[key_id][0],
                f"key {key_id} in the key table differs from its key record",
                _key_row(records[key_id]),
                _key_row(table[key_id]),
                check=Check.KEY_TABLE,
            )
    purposes = {rec.purpose for _, rec in records.values()}
    if purposes != {"index", "data"}:
        raise LogIntegrityError(
            None,
            "the log holds no index key record or no data key record",
            "index, data",
            ", ".join(sorted(purposes)) or "none",
            check=Check.KEY_TABLE,
        )


def _key_row(row: tuple[int, KeyRecord]) -> str:
    """A key row as evidence: its record, purpose, time and wrapped key's hash (never the wrapped key)."""
    seq, rec = row
    wrapped = hashlib.sha256(rec.wrapped).hexdigest()
    return f"record {seq}, {rec.purpose}, created {rec.created_ms}, wrapped sha256 {wrapped}"


def _check_cursors(conn: db.ReadConnection, secrets: audit.Secrets) -> None:
    """Each source cursor carries a keyed MAC: an altered sync token would make the bot skip events."""
    for name, stored, mac in conn.execute("SELECT name, value, mac FROM cursors ORDER BY name"):
        try:
            value: str | None = open_cursor(secrets.index_key, str(name), stored)
        except crypto.AuthError:
            value = None
        if value is None or not crypto.hmac_equal(bytes(mac), cursor_mac(secrets.index_key, str(name), value)):
            raise LogIntegrityError(None, f"the stored cursor of {name} was altered", check=Check.CURSOR)


class _EarlyIntegrity:
    """`PRAGMA integrity_check` on a connection of its own, in a thread (SQLite releases the GIL), while the
    walk runs. Only its "ok" is used: anything else (problems, an error) makes `_check_bookkeeping` run the
    check again on the walk's connection, so what is reported is exactly what the serial order reports."""

    def __init__(self, data_dir: Path) -> None:
        self._ok = False
        self._thread = threading.Thread(target=self._run, args=(data_dir,), daemon=True)
        self._thread.start()

    def _run(self, data_dir: Path) -> None:
        try:
            conn = open_readonly(data_dir)
            try:
                self._ok = db.integrity_problems(conn) == []
            finally:
                conn.close()
        except Exception:  # the check on the walk's connection names it
            self._ok = False

    def ok(self) -> bool:
        self._thread.join()
        return self._ok


def _check_bookkeeping(conn: db.ReadConnection, meta: dict[str, bytes], early: _EarlyIntegrity | None = None) -> None:
    """What the writer reads besides the records: the schema and the meta table.

    Neither is evidence, but a damaged schema (say, a column type) changes how
    later rows are stored, and a meta entry this version never writes (such as
    an earlier version's saved frontier or current-key pointer) is a sign of a
    hand-edited data dir. Dropped triggers are tolerated: they only guard against
    accidents (see store.py); a trigger that is present must be the one we wrote.
    """
    want, have = db.schema_objects(conn)
    expected = {(t, n): (tbl, sql) for t, n, tbl, sql in want}
    found = {(t, n): (tbl, sql) for t, n, tbl, sql in have}
    for key, value in found.items():
        if expected.get(key) != value:
            raise LogIntegrityError(
                None,
                f"the database schema was altered: {key[0]} {key[1]!r}",
                None if key not in expected else str(expected[key]),
                str(value),
                check=Check.SCHEMA,
            )
    missing = [name for (kind, name) in expected if kind != "trigger" and (kind, name) not in found]
    if missing:
        raise LogIntegrityError(
            None,
            f"the database schema was altered: {', '.join(missing)} missing",
            found="missing",
            check=Check.SCHEMA,
        )
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise LogIntegrityError(
            None,
            f"the meta table holds entries this log never writes: {', '.join(unknown)}",
            check=Check.META,
        )
    # Cursors (MAC-checked with the key, see _check_cursors) and counters: read them so damage shows, and
    # let SQLite check every b-tree and that each index (the dedup index above all) matches its table.
    conn.execute("SELECT name, value, updated_ms, mac FROM cursors").fetchall()
    conn.execute("SELECT name, value FROM counters").fetchall()
    problems = [] if early is not None and early.ok() else db.integrity_problems(conn)
    if problems:
        raise LogIntegrityError(
            None,
            f"the database file is damaged: {'; '.join(problems)}",
            "ok",
            "; ".join(problems),
            check=Check.DATABASE,
        )


def _checked_checkpoints(
    conn: db.ReadConnection, name: str, chain: rotation.KeyChain
) -> list[tuple[checkpoint.Checkpoint, bytes]]:
    """Every stored checkpoint with its stored tree edge, after checking signature (by the key of the chain
    current at its size), size, time and origin."""
    out: list[tuple[checkpoint.Checkpoint, bytes]] = []
    rows = conn.execute("SELECT size, created_ms, note, frontier FROM checkpoints ORDER BY size")
    for size, created_ms, note, edge in rows:
        try:
            cp = chain.verify_checkpoint(str(note), check_origin=False)
        except checkpoint.CheckpointError as exc:
            raise LogIntegrityError(
                size, f"checkpoint for tree size {size} does not verify: {exc}", check=Check.CHECKPOINT_SIGNATURE
            ) from None
        if cp.timestamp_ms is not None and created_ms != cp.timestamp_ms:
            # The writer's checkpoint interval and the archive read this column: it must be the signed time.
            raise LogIntegrityError(
                size,
                "checkpoint's stored time differs from the signed one",
                cp.timestamp_ms,
                created_ms,
                check=Check.CHECKPOINT_ROW,
            )
        if cp.size != size:
            raise LogIntegrityError(
                size,
                "checkpoint's stored tree size differs from the signed one",
                cp.size,
                size,
                check=Check.CHECKPOINT_ROW,
            )
        if cp.origin != name:
            raise LogIntegrityError(
                size, "checkpoint is for another log", name, cp.origin, check=Check.CHECKPOINT_SIGNATURE
            )
        out.append((cp, bytes(edge)))
    return out


def _unlock(conn: db.ReadConnection, keys: KeyMaterial) -> audit.Secrets:
    rows = list(conn.execute("SELECT key_id, purpose, wrapped FROM keys ORDER BY key_id"))
    if not all(type(k) is int and type(p) is str and type(w) is bytes for k, p, w in rows):
        raise LogIntegrityError(None, "key table altered: a row's values have the wrong types", check=Check.KEY_TABLE)
    try:
        index_key, data_keys = unwrap_keys(rows, keys)
    except crypto.AuthError as exc:
        raise LogIntegrityError(None, f"key table altered: {exc}", check=Check.KEY_TABLE) from None
    if not data_keys:
        raise LogIntegrityError(None, "key table altered: it holds no data key", check=Check.KEY_TABLE)
    return audit.Secrets(keys.log_id, index_key, data_keys)


def _check_root(cp: checkpoint.Checkpoint, frontier: merkle.Frontier, edges: dict[int, bytes]) -> None:
    root = frontier.root()
    if not crypto.hmac_equal(root, cp.root):
        raise LogIntegrityError(
            max(cp.size - 1, 0),
            f"records up to {cp.size - 1} do not match the signed checkpoint at tree size {cp.size}",
            cp.root,
            root,
            check=Check.CHECKPOINT_ROOT,
        )
    edge = edges.get(cp.size)
    if edge is not None and not crypto.hmac_equal(edge, want := frontier_bytes(frontier)):
        # The writer resumes from the newest edge only after checking it against the signed root; a
        # wrong one is a hand-edited data dir all the same.
        raise LogIntegrityError(
            cp.size,
            f"the stored tree edge at checkpoint {cp.size} is not the recomputed one",
            hashlib.sha256(want).hexdigest(),
            hashlib.sha256(edge).hexdigest(),
            check=Check.EDGE,
        )


def _signer(
    meta: dict[str, bytes], keys: KeyMaterial | None, public_key: tuple[str, Ed25519PublicKey] | None
) -> tuple[str, Ed25519PublicKey]:
    """The key checkpoints must be signed with: given by the operator, else the log's own."""
    try:
        stored = checkpoint.parse_vkey(meta["vkey"].decode("ascii"))
    except (KeyError, UnicodeDecodeError, checkpoint.CheckpointError) as exc:
        raise LogIntegrityError(
            None, f"the log's public key entry is damaged: {exc}", check=Check.SIGNING_KEY
        ) from None
    expected = public_key or ((keys.key_name, keys.public_key) if keys else None)
    if expected is None:
        return stored
    if checkpoint.format_vkey(*expected) != checkpoint.format_vkey(*stored):
        raise LogIntegrityError(
            None,
            "the log claims another signing key than the one given (pin the log's original KEY.pub; verify"
            " follows any signing-key rotation from it)",
            expected=checkpoint.format_vkey(*expected),
            found=checkpoint.format_vkey(*stored),
            check=Check.SIGNING_KEY,
        )
    return expected


def _checked_anchor(note: str, chain: rotation.KeyChain) -> checkpoint.Checkpoint:
    try:
        return chain.verify_checkpoint(note, check_origin=False)
    except checkpoint.CheckpointError as exc:
        raise UsageError(f"the pinned checkpoint does not verify against this log's key: {exc}") from None
