"""The Matrix source's hole watch: the pure `holes.Holes` fed by the source, plus the admin-API seams (I/O).

Contract (used by `source.MatrixSource` only):
- `connect(client, heads)` on every connection: the detector from the committed heads, whether the bot may use
  the admin API (`dag.is_admin`), and a seam in every room (the first batch after a restart or reconnect).
- `at_seam(client, room_id, raw)`: fetch the parents of the event at a seam (admin rights only, a known room).
- `see(room_id, raw, check)`: feed an event (with the fetched parents, if any).
- `notice(room_id, unfilled, before_ms)`: the one `capture_gap` notice for the room's holes in this batch (and an
  unfilled backfill), or None.
- `heads()` for the commit; `batch_done()` once a sync batch is committed (the seam is passed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bridge.clock import now_ms
from bridge.events import MATRIX, ConversationId, Event
from bridge.sources.matrix.client import RawKeepingClient
from bridge.sources.matrix.dag import is_admin, prev_events
from bridge.sources.matrix.holes import Holes, notice_detail
from bridge.sources.matrix.state import RoomHeads
from bridge.sources.outage import Outage, gap_notice

__all__ = ["EMPTY", "HoleWatch"]

log = logging.getLogger(__name__)

#: A limited gap whose /messages pages held no event (a hole only if prev_events or membership show one).
EMPTY = "messages gave no event"


class HoleWatch:
    """See the module docstring."""

    def __init__(self) -> None:
        self.holes = Holes()
        self._admin = False
        self._prevs: dict[str, tuple[str, ...]] = {}
        self.seam = True

    async def connect(self, client: RawKeepingClient, heads: Mapping[str, RoomHeads]) -> None:
        self.holes = Holes(heads, client.user_id)
        self._admin = await is_admin(client)
        self._prevs = {}
        self.seam = True

    def batch_done(self) -> None:
        self.seam = False

    def heads(self) -> dict[str, RoomHeads]:
        return self.holes.heads()

    async def at_seam(self, client: RawKeepingClient, room_id: str, raw: object) -> None:
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        if not self._admin or not isinstance(event_id, str) or not self.holes.known(room_id):
            return
        parents = await prev_events(client, event_id, lambda parent: self.holes.has(room_id, parent))
        if parents is not None:
            self._prevs[event_id] = parents

    def see(self, room_id: str, raw: object, check: bool) -> None:
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        parents = self._prevs.pop(event_id, None) if isinstance(event_id, str) else None
        self.holes.see(room_id, raw, check, parents)

    def notice(self, room_id: str, unfilled: str | None, before_ms: int | None) -> Event | None:
        holes = self.holes.take(room_id)
        if not holes and (unfilled is None or unfilled == EMPTY):
            return None
        reason, detail = notice_detail(holes, unfilled)
        end = next((h.end_ms for h in holes if h.end_ms is not None), None) or now_ms()
        start = next((h.start_ms for h in holes if h.start_ms is not None), None) or before_ms or end
        log.warning("hole in a room's history recorded", extra={"room_id": room_id, "reason": reason})
        return gap_notice(MATRIX, ConversationId(room_id), Outage(start, reason), end, detail)
