"""`chatarchief coverage`: the officials' rooms against the archiver's presence in them, and what the log holds.

Contract:
- `survey(opts)` asks the homeserver: with an admin token (Synapse admin API) every room each official is joined
  to, and the archiver's membership in it (and since when: its member event's time); without one, only what the
  bot itself sees (its joined rooms: covered by definition, rooms it was kept out of stay invisible; the report
  says which view it used). It logs in with the bot's password under a fixed device id and logs out again.
- `log_stats(events)` is pure: per conversation, events captured, undecryptable ones, last capture time, and the
  `capture_gap` notices recorded in it (holes the Matrix source saw, docs/synapse-module.md).
- `CoverageReport.uncovered`: official rooms the archiver is not joined to; the CLI exits 1 when there are any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.errors import SourceError, UsageError
from bridge.events import Event, Kind

DEVICE_ID = "CHATARCHIEF_COVERAGE"


@dataclass(frozen=True)
class CoverageOptions:
    homeserver: str
    archiver: str
    officials: frozenset[str]
    password_file: Path | None = None
    access_token_file: Path | None = None


@dataclass(frozen=True)
class LogStats:
    captured: int = 0
    undecryptable: int = 0
    last_captured_ms: int | None = None
    gaps: int = 0


@dataclass(frozen=True)
class RoomCoverage:
    room_id: str
    officials: tuple[str, ...]
    archiver_membership: str | None
    archiver_since_ms: int | None
    encrypted: bool
    log: LogStats = field(default_factory=LogStats)

    @property
    def covered(self) -> bool:
        return self.archiver_membership == "join"

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "officials": list(self.officials),
            "covered": self.covered,
            "archiver_membership": self.archiver_membership,
            "archiver_since_ms": self.archiver_since_ms,
            "encrypted": self.encrypted,
            "captured": self.log.captured,
            "undecryptable": self.log.undecryptable,
            "last_captured_ms": self.log.last_captured_ms,
            "gaps": self.log.gaps,
        }


@dataclass(frozen=True)
class CoverageReport:
    #: "admin_api" (every official room) or "bot_view" (only rooms the bot is in).
    via: str
    rooms: tuple[RoomCoverage, ...]

    @property
    def uncovered(self) -> list[RoomCoverage]:
        return [r for r in self.rooms if not r.covered]

    def to_json(self) -> dict[str, Any]:
        return {
            "via": self.via,
            "rooms": [r.to_json() for r in self.rooms],
            "uncovered": [r.room_id for r in self.uncovered],
        }


def log_stats(events: Iterable[Event]) -> dict[str, LogStats]:
    """Per conversation: events captured, undecryptable ones, the last `received_at` (pure)."""
    out: dict[str, LogStats] = {}
    for e in events:
        s = out.get(e.conversation, LogStats())
        last = e.received_at if s.last_captured_ms is None else max(s.last_captured_ms, e.received_at)
        gap = e.kind is Kind.NOTICE and e.content.get("notice") == "capture_gap"
        out[e.conversation] = LogStats(
            s.captured + 1, s.undecryptable + (e.kind is Kind.UNDECRYPTABLE), last, s.gaps + gap
        )
    return out


def with_log(report: CoverageReport, stats: dict[str, LogStats]) -> CoverageReport:
    rooms = tuple(
        RoomCoverage(
            r.room_id,
            r.officials,
            r.archiver_membership,
            r.archiver_since_ms,
            r.encrypted,
            stats.get(r.room_id, LogStats()),
        )
        for r in report.rooms
    )
    return CoverageReport(report.via, rooms)


def room_from_state(room_id: str, state: list[dict[str, Any]], opts: CoverageOptions) -> RoomCoverage:
    """One room's coverage from its state events (pure)."""
    members: dict[str, dict[str, Any]] = {}
    encrypted = False
    for ev in state:
        if ev.get("type") == "m.room.encryption":
            encrypted = True
        if ev.get("type") == "m.room.member" and isinstance(ev.get("state_key"), str):
            members[ev["state_key"]] = ev
    joined = sorted(
        u for u, ev in members.items() if u in opts.officials and ev.get("content", {}).get("membership") == "join"
    )
    archiver = members.get(opts.archiver)
    membership = archiver.get("content", {}).get("membership") if archiver else None
    since = archiver.get("origin_server_ts") if archiver and membership == "join" else None
    return RoomCoverage(room_id, tuple(joined), membership, since if isinstance(since, int) else None, encrypted)


class HomeserverClient:
    """A small JSON client of the homeserver (client-server and Synapse admin API) with the bot's token."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base
        self.token: str | None = None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.request(method, self._base + path, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SourceError(f"homeserver {self._base}: {method} {path.split('?')[0]} failed: {exc}") from None

    async def login(self, opts: CoverageOptions, device_id: str, command: str) -> bool:
        """Authenticate as the bot: its access token file, else a password login under `device_id` (True: the
        caller logs that device out again)."""
        if opts.access_token_file is not None:
            self.token = opts.access_token_file.read_text("utf-8").strip()
            return False
        if opts.password_file is None:
            raise UsageError(f"{command} needs matrix.password_file or matrix.access_token_file")
        password = opts.password_file.read_text("utf-8").strip()
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": opts.archiver},
            "password": password,
            "device_id": device_id,
            "initial_device_display_name": f"chatarchief {command}",
        }
        status, data = await self.call("POST", "/_matrix/client/v3/login", body)
        if status != 200:
            raise UsageError(f"{command}: the bot {opts.archiver} cannot log in ({status}): check matrix.password_file")
        self.token = str(data["access_token"])
        return True

    async def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, data = await self.call(method, path, body)
        if status != 200:
            raise SourceError(f"homeserver {self._base}: {method} {path} answered {status}: {data}")
        return data


async def survey(opts: CoverageOptions) -> CoverageReport:
    """The officials' rooms and the archiver's place in them (see module docstring)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = HomeserverClient(session, opts.homeserver)
        logged_in = await client.login(opts, DEVICE_ID, "coverage")
        try:
            return await _survey(client, opts)
        finally:
            if logged_in:
                await client.call("POST", "/_matrix/client/v3/logout", {})


async def _survey(client: HomeserverClient, opts: CoverageOptions) -> CoverageReport:
    rooms: set[str] = set()
    via = "admin_api"
    for official in sorted(opts.officials):
        status, data = await client.call("GET", f"/_synapse/admin/v1/users/{quote(official)}/joined_rooms")
        if status in (401, 403, 404) and not rooms:
            via = "bot_view"
            break
        if status != 200:
            raise SourceError(f"admin API: joined rooms of {official} answered {status}: {data}")
        rooms.update(str(r) for r in data.get("joined_rooms", []))
    if via == "bot_view":
        rooms = {str(r) for r in (await client.ok("GET", "/_matrix/client/v3/joined_rooms")).get("joined_rooms", [])}

    async def one(room_id: str) -> RoomCoverage:
        if via == "admin_api":
            state = (await client.ok("GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/state")).get("state", [])
        else:
            state = await client.ok("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state")
        return room_from_state(room_id, state if isinstance(state, list) else [], opts)

    found = await asyncio.gather(*(one(r) for r in sorted(rooms)))
    if via == "bot_view":
        found = [r for r in found if r.officials]
    return CoverageReport(via, tuple(found))
