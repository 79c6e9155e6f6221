"""A read-only view of a log that another process is writing (tests only).

SQLite in WAL mode lets a reader see every committed transaction while the
writer goes on; `LogView` opens the database with `mode=ro`, so it can never
take the writer's lock or change a byte. It decrypts with the key file's
material, like `verify --key-file`, and answers what the end-to-end tests ask:
which event ids are stored (`count_stored`, by dedup tag, without decrypting),
every stored event (`events`, decrypting from a sequence number on), the
cursor and the checkpoint sizes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from bridge.events import MATRIX, Event
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_events
from bridge.log.schema import open_cursor
from bridge.log.store import dedup_tag, unwrap_keys
from bridge.log.verify import open_readonly


class LogView:
    def __init__(self, data_dir: Path, keys: KeyMaterial) -> None:
        self._conn: sqlite3.Connection = open_readonly(data_dir)
        self._data_dir = data_dir
        self._keys = keys
        sql = "SELECT key_id, purpose, wrapped FROM keys"
        rows = [(int(k), str(p), bytes(w)) for k, p, w in self._conn.execute(sql)]
        self._index_key, _ = unwrap_keys(rows, keys)
        self._events: list[tuple[int, Event]] = []

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def size(self) -> int:
        (n,) = self._conn.execute("SELECT count(*) FROM records").fetchone()
        return int(n)

    def cursors(self) -> dict[str, str]:
        """Each source's cursor as the source wrote it (values are sealed at rest)."""
        rows = self._conn.execute("SELECT name, value FROM cursors")
        return {str(k): open_cursor(self._index_key, str(k), v) for k, v in rows}

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._conn.execute("SELECT name, value FROM counters")}

    def checkpoint_sizes(self) -> list[int]:
        return [int(s) for (s,) in self._conn.execute("SELECT size FROM checkpoints ORDER BY size")]

    def count_stored(self, keys: Iterable[tuple[str, str]], source: str = MATRIX) -> int:
        """How many of the (conversation, event_id) pairs are in the log (dedup index, no decryption)."""
        tags = [dedup_tag(self._index_key, source, conv, eid) for conv, eid in keys]
        found = 0
        for i in range(0, len(tags), 500):
            chunk = tags[i : i + 500]
            sql = f"SELECT count(*) FROM records WHERE dedup IN ({','.join('?' * len(chunk))})"
            found += int(self._conn.execute(sql, chunk).fetchone()[0])
        return found

    def events(self) -> list[tuple[int, Event]]:
        """Every event record, decrypted (incrementally: records read before are kept)."""
        start = self._events[-1][0] + 1 if self._events else 0
        self._events.extend(iter_events(self._data_dir, self._keys, start))
        return list(self._events)
