"""Bench only: a stand-in for a peer archiver that lives inside Synapse, for `bench/capture.py`.

Loaded by the bench's Synapse from `modules:` (this directory on Synapse's PYTHONPATH). On Synapse's
`on_new_event` (called once an event is persisted) it stores each plain-room `m.room.message` durably in its own
SQLite file (WAL, synchronous=FULL: one fsync per message, as the bot's log), in Synapse's thread pool so the
reactor is not blocked. Each row also keeps `seen` (CLOCK_MONOTONIC when the callback ran: the message is
persisted by then), which the bench uses as "Synapse persisted" in its breakdown. It cannot read encrypted rooms:
that is the point of the comparison.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any


class PeerArchive:
    def __init__(self, config: dict[str, Any], api: Any) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(config["database"], check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS messages (event_id TEXT PRIMARY KEY, room_id TEXT, json TEXT, seen REAL)"
        )
        api.register_third_party_rules_callbacks(on_new_event=self.on_new_event)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config

    async def on_new_event(self, event: Any, state_events: Any) -> None:
        if event.type != "m.room.message":
            return
        seen = time.monotonic()
        body = json.dumps(event.get_dict())
        await self._api.defer_to_thread(self._store, event.event_id, event.room_id, body, seen)

    def _store(self, event_id: str, room_id: str, body: str, seen: float) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?)", (event_id, room_id, body, seen))
            self._conn.execute("COMMIT")
