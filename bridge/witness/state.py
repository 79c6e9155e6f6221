"""The witness's memory: per log origin, the latest checkpoint it cosigned (SQLite, durable before answering).

One row per origin: size, root, the log's signed note and our cosignature line. `advance` is a
compare-and-swap in one transaction (`UPDATE ... WHERE size = old`), so two requests, or two witness
processes on one state file, can never roll a log back (tlog-witness.md's race). WAL with
`synchronous=FULL`: a row is on disk when `advance` returns, before the witness answers.
Fork evidence is written beside it: one file per refused, validly signed checkpoint, never overwritten.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.durable import write_exclusive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL,
    cosignature TEXT NOT NULL, updated_ms INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Latest:
    size: int
    root: bytes
    note: str
    cosignature: str


class WitnessState:
    def __init__(self, path: Path, evidence_dir: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self.evidence_dir = evidence_dir

    def close(self) -> None:
        self._conn.close()

    def latest(self, origin: str) -> Latest | None:
        row = self._conn.execute(
            "SELECT size, root, note, cosignature FROM latest WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else Latest(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]))

    def advance(self, origin: str, old_size: int, new: Latest) -> bool:
        """Record `new` as the latest for `origin` iff the stored size is still `old_size` (0: none yet)."""
        now = int(time.time() * 1000)
        values = (new.size, new.root, new.note, new.cosignature, now)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self._conn.execute(
                "UPDATE latest SET size = ?, root = ?, note = ?, cosignature = ?, updated_ms = ?"
                " WHERE origin = ? AND size = ?",
                (*values, origin, old_size),
            )
            done = cur.rowcount == 1
            if not done and old_size == 0:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO latest (size, root, note, cosignature, updated_ms, origin)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (*values, origin),
                )
                done = cur.rowcount == 1
            self._conn.execute("COMMIT" if done else "ROLLBACK")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return done

    def write_evidence(self, origin: str, reason: str, known: Latest | None, submitted: bytes) -> Path:
        """A fork-evidence file: why, the checkpoint we had cosigned (log signature + ours), the new request."""
        self.evidence_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tag = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:16]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        digest = hashlib.sha256(submitted).hexdigest()[:12]
        path = self.evidence_dir / f"{tag}-{stamp}-{digest}.txt"
        known_text = "(none)\n" if known is None else known.note + known.cosignature
        doc = (
            f"chatarchief witness evidence\norigin: {origin}\nreason: {reason}\n\n"
            f"--- cosigned checkpoint we hold ---\n{known_text}\n"
            f"--- refused add-checkpoint request body ---\n"
        ).encode() + submitted
        if path.exists():
            return path  # the same request refused twice in one second: one file is the evidence
        write_exclusive(path, doc, 0o600)
        return path
