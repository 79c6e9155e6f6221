"""In-memory `Sink`s (bridge.sources.Sink) for source tests; tests/test_sink_contract.py holds them to the contract."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.events import Event, Kind


class RecordingSink:
    """The Sink contract in memory; `commits` keeps every call, duplicates included (the Matrix source tests)."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[Event], str | None]] = []
        self.cursor: str | None = None

    async def commit(self, events: Sequence[Event], cursor: str | None) -> None:
        self.commits.append((list(events), cursor))
        if cursor is not None:  # None: a backfill page, the stored cursor stays
            self.cursor = cursor

    async def load_cursor(self) -> str | None:
        return self.cursor

    @property
    def stream(self) -> list[Event]:
        return [e for events, _ in self.commits for e in events]

    def unique(self) -> dict[tuple[str, str, str], Event]:
        """What the log would hold: first copy of each idempotency key."""
        out: dict[tuple[str, str, str], Event] = {}
        for event in self.stream:
            out.setdefault(event.key, event)
        return out

    def in_room(self, room_id: str, kind: Kind | None = None) -> list[Event]:
        return [e for e in self.unique().values() if e.conversation == room_id and (kind is None or e.kind == kind)]

    def find(self, event_id: str) -> Event | None:
        return next((e for e in self.unique().values() if e.event_id == event_id), None)


class DedupSink:
    """The Sink contract in memory, collapsing on the idempotency key like the log (the Signal source tests)."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str, str], Event] = {}
        self.offered: list[Event] = []
        self.cursor: str | None = None
        self.commits = 0

    async def commit(self, events: Sequence[Event], cursor: str | None) -> None:
        for event in events:
            self.offered.append(event)
            self.events.setdefault(event.key, event)
        if cursor is not None:
            self.cursor = cursor
        self.commits += 1

    async def load_cursor(self) -> str | None:
        return self.cursor

    def of_kind(self, kind: Kind) -> list[Event]:
        return [e for e in self.events.values() if e.kind is kind]
