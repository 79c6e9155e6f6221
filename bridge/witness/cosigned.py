"""The log's side: cosignatures its witnesses returned, kept beside the log (`cosignatures.sqlite3`).

Why a file beside `log.sqlite3` and not a table in it: `verify` holds the log's schema to exactly what this
version writes, so a new table would need a schema version and a migration for every existing log, while a
cosignature needs no protection from the log at all (each is signed by its witness; deleting or altering
one can only make `verify --witness-key ... --quorum N` fail, which is the right failure). Rows are only
inserted (never updated); a row is checked against its witness key before it is stored and again, against
the keys the verifier pins, whenever it is used.

    cosignatures(checkpoint TEXT, size INTEGER, witness TEXT, line TEXT, timestamp INTEGER, received_ms INTEGER,
                 PRIMARY KEY (witness, checkpoint))

`checkpoint` is the note text the cosignature signs (origin, size, root, extension lines); `witness` the
witness's vkey.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bridge.witness.note import NoteError, NoteSignature, Verifier, parse_checkpoint, parse_signature_lines

DB_NAME = "cosignatures.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosignatures (
    checkpoint TEXT NOT NULL, size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,
    timestamp INTEGER NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY (witness, checkpoint));
CREATE INDEX IF NOT EXISTS cosignatures_by_checkpoint ON cosignatures (checkpoint);
CREATE INDEX IF NOT EXISTS cosignatures_by_witness_size ON cosignatures (witness, size);
"""


class CosignatureStore:
    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        path = data_dir / DB_NAME
        if readonly:
            if not path.exists():
                self._conn: sqlite3.Connection | None = None
                return
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            found = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cosignatures'").fetchone()
            if found is None:  # created but never written: nothing cosigned
                self._conn.close()
                self._conn = None
        else:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def add(self, text: str, sig: NoteSignature, witness: Verifier) -> None:
        """Store a cosignature by `witness` over checkpoint `text`; refuses one that does not verify."""
        if self._conn is None:
            raise RuntimeError("read-only cosignature store")
        ts = witness.timestamp(sig)
        if not witness.matches(sig) or ts is None or not witness.verify(text, sig):
            raise NoteError(f"cosignature by {witness.name} does not verify over the checkpoint")
        size = parse_checkpoint(text).size
        self._conn.execute(
            "INSERT OR IGNORE INTO cosignatures (checkpoint, size, witness, line, timestamp, received_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (text, size, witness.vkey, sig.line, ts, int(time.time() * 1000)),
        )

    def last_cosigned(self, witness: Verifier, origin: str) -> int:
        """The largest size of `origin` that `witness` cosigned for us (0: none)."""
        if self._conn is None:
            return 0
        row = self._conn.execute(
            "SELECT MAX(size) FROM cosignatures WHERE witness = ? AND substr(checkpoint, 1, ?) = ?",
            (witness.vkey, len(origin) + 1, origin + "\n"),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def latest(self, witness: str) -> tuple[int, int] | None:
        """(largest size `witness` (a vkey) cosigned, that cosignature's own timestamp, unix seconds), or None.

        One index lookup (witness, size): read at every metrics scrape, so it must not scan a year of rows."""
        if self._conn is None:
            return None
        row = self._conn.execute(
            "SELECT size, timestamp FROM cosignatures WHERE witness = ? ORDER BY size DESC, timestamp DESC LIMIT 1",
            (witness,),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def signatures_for(self, text: str) -> list[NoteSignature]:
        """Every stored cosignature line over checkpoint `text` (unverified: the caller verifies)."""
        if self._conn is None:
            return []
        lines = [str(r[0]) for r in self._conn.execute("SELECT line FROM cosignatures WHERE checkpoint = ?", (text,))]
        sigs: list[NoteSignature] = []
        for line in lines:
            try:
                sigs += parse_signature_lines(line + "\n")
            except NoteError:
                continue  # a damaged row counts for nothing
        return sigs

    def rows_from(self, size: int) -> list[tuple[int, str, str]]:
        """(size, witness vkey, checkpoint text) of every cosignature at or above `size`, smallest first."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT size, witness, checkpoint FROM cosignatures WHERE size >= ? ORDER BY size, witness", (size,)
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def cosigned_note(self, note: str) -> str:
        """`note` (a checkpoint note) with every stored cosignature over its text appended."""
        text, _, _ = note.rpartition("\n\n")
        extra = "".join(sorted(f"{s.line}\n" for s in self.signatures_for(text + "\n")))
        return note + extra
