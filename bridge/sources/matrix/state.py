"""The Matrix source's own small state beside nio's crypto store.

Contract: `SourceState.load(store_dir)` / `.save()` (atomic rename, fsync) hold
- `backfilled`: rooms whose visible history has been paged in once, so a
  restart does not page every room back to its creation again;
- `pending`: encrypted events stored as `undecryptable`, kept (raw, with room)
  so they can be decrypted when their room key arrives later.
The sync token is NOT here: it lives in the log, committed with the events.
`save()` runs after a commit; a crash in between only causes duplicate work
(backfill again, or an already appended late decryption appended again), which
the log's idempotency key absorbs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.durable import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "source_state.json"
#: Bound on remembered undecryptable events; the oldest are forgotten first
#: (they stay in the log as undecryptable; only the late retry is given up).
MAX_PENDING = 10_000


@dataclass(slots=True)
class PendingEvent:
    room_id: str
    raw: dict[str, Any]


@dataclass(slots=True)
class SourceState:
    path: Path
    backfilled: set[str] = field(default_factory=set)
    pending: dict[str, PendingEvent] = field(default_factory=dict)  # insertion order = age
    dirty: bool = False

    @classmethod
    def load(cls, store_dir: Path) -> SourceState:
        path = store_dir / STATE_FILE
        if not path.exists():
            return cls(path)
        d = json.loads(path.read_text(encoding="utf-8"))
        pending = {event_id: PendingEvent(p["room_id"], p["raw"]) for event_id, p in d.get("pending", {}).items()}
        return cls(path, set(d.get("backfilled", [])), pending)

    def mark_backfilled(self, room_id: str) -> None:
        if room_id not in self.backfilled:
            self.backfilled.add(room_id)
            self.dirty = True

    def add_pending(self, event_id: str, room_id: str, raw: dict[str, Any]) -> None:
        if event_id in self.pending:
            return
        self.pending[event_id] = PendingEvent(room_id, raw)
        while len(self.pending) > MAX_PENDING:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            log.warning("forgetting undecryptable event: too many pending", extra={"event_id": oldest})
        self.dirty = True

    def drop_pending(self, event_id: str) -> None:
        if self.pending.pop(event_id, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        payload = {
            "backfilled": sorted(self.backfilled),
            "pending": {eid: {"room_id": p.room_id, "raw": p.raw} for eid, p in self.pending.items()},
        }
        write_atomic(self.path, json.dumps(payload).encode("utf-8"))
        self.dirty = False
