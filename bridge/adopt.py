"""`chatarchief adopt`: bring the archiver into the officials' existing rooms, and say what it cannot read there.

Contract:
- `adopt(opts)` needs the bot to be a Synapse server admin (its token reaches the admin API; else `UsageError`,
  exit 2). It lists every room each official is joined to (`/_synapse/admin/v1/users/{id}/joined_rooms`); for
  each room the archiver is not joined to, an official of that room invites it (through the admin API's
  login-as-user, with the invite's `reason` saying it was `chatarchief adopt` by the server admin, so the room's
  history does not pass it off as the official's own act) and the archiver joins. A room where no official may
  invite, or the join is refused, is not adopted; its reason is reported.
- The running bot (`chatarchief run`) then sees the room in its next sync and backfills what it may read: the
  history the room's `history_visibility` shows the archiver (`shared`/`world_readable`: everything; `joined`
  or `invited`: nothing from before its join).
- What it cannot decrypt, per room: encrypted events sent before the archiver joined (Megolm room keys go to the
  devices present when a message is sent; the archiver's device was not, so those events stay `undecryptable`
  unless an official's client forwards the keys). Counted by paging /messages backwards from the join (at most
  `SCAN_LIMIT` events; `at_least` when the scan stopped there).
- Pure parts: `room_state(state)` (members, encryption, visibility), `unreadable(chunk, join_ms)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.coverage import CoverageOptions, HomeserverClient
from bridge.errors import SourceError, UsageError

DEVICE_ID = "CHATARCHIEF_ADOPT"
SCAN_LIMIT = 10_000
PAGE = 500
ENCRYPTED = "m.room.encrypted"
_LEGACY_VERSIONS = frozenset(str(v) for v in range(1, 12))  # room versions before privileged creators


@dataclass(frozen=True)
class RoomState:
    members: dict[str, str]  # user id -> membership
    encrypted: bool
    history_visibility: str
    invite_level: int
    levels: dict[str, int]
    #: Room creators of room versions 12+: more powerful than any power level (and never listed in it).
    creators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Adopted:
    room_id: str
    officials: tuple[str, ...]
    outcome: str  # "joined", "already_in", "failed"
    reason: str | None = None
    invited_by: str | None = None
    encrypted: bool = False
    history_visibility: str = "shared"
    undecryptable: int = 0
    at_least: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def adopted(self) -> bool:
        return self.outcome != "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "officials": list(self.officials),
            "outcome": self.outcome,
            "adopted": self.adopted,
            "reason": self.reason,
            "invited_by": self.invited_by,
            "encrypted": self.encrypted,
            "history_visibility": self.history_visibility,
            "undecryptable_before_join": self.undecryptable,
            "undecryptable_at_least": self.at_least,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AdoptReport:
    rooms: tuple[Adopted, ...]

    @property
    def failed(self) -> list[Adopted]:
        return [r for r in self.rooms if not r.adopted]

    def to_json(self) -> dict[str, Any]:
        return {"rooms": [r.to_json() for r in self.rooms], "failed": [r.room_id for r in self.failed]}


def room_state(state: Iterable[Mapping[str, Any]]) -> RoomState:
    """Members, encryption, history visibility and who may invite, from a room's state events (pure)."""
    members: dict[str, str] = {}
    encrypted, visibility, invite = False, "shared", 0
    levels: dict[str, int] = {}
    creators: frozenset[str] = frozenset()
    for ev in state:
        raw_content = ev.get("content")
        content: Mapping[str, Any] = raw_content if isinstance(raw_content, dict) else {}
        kind = ev.get("type")
        if kind == "m.room.member" and isinstance(ev.get("state_key"), str):
            members[str(ev["state_key"])] = str(content.get("membership"))
        elif kind == "m.room.create" and str(content.get("room_version", "1")) not in _LEGACY_VERSIONS:
            extra = content.get("additional_creators")
            creators = frozenset([str(ev.get("sender")), *(extra if isinstance(extra, list) else [])])
        elif kind == "m.room.encryption":
            encrypted = True
        elif kind == "m.room.history_visibility" and isinstance(content.get("history_visibility"), str):
            visibility = str(content["history_visibility"])
        elif kind == "m.room.power_levels":
            invite = _int(content.get("invite"), 0)
            users = content.get("users")
            default = _int(content.get("users_default"), 0)
            levels = {"": default} | (
                {str(u): _int(v, default) for u, v in users.items()} if isinstance(users, dict) else {}
            )
    return RoomState(members, encrypted, visibility, invite, levels, creators)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def may_invite(state: RoomState, user_id: str) -> bool:
    if state.members.get(user_id) == "join" and user_id in state.creators:
        return True
    return (
        state.members.get(user_id) == "join"
        and state.levels.get(user_id, state.levels.get("", 0)) >= state.invite_level
    )


def unreadable(chunk: Iterable[Mapping[str, Any]], join_ms: int | None) -> int:
    """Encrypted events of a /messages chunk sent before the archiver joined (pure)."""
    return sum(
        1
        for ev in chunk
        if ev.get("type") == ENCRYPTED
        and (join_ms is None or (isinstance(ts := ev.get("origin_server_ts"), int) and ts < join_ms))
    )


async def adopt(opts: CoverageOptions) -> AdoptReport:
    """Adopt every official room the archiver is not in (see module docstring)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = HomeserverClient(session, opts.homeserver)
        logged_in = await client.login(opts, DEVICE_ID, "adopt")
        try:
            return await _adopt(session, client, opts)
        finally:
            if logged_in:
                await client.call("POST", "/_matrix/client/v3/logout", {})


async def _adopt(session: aiohttp.ClientSession, client: HomeserverClient, opts: CoverageOptions) -> AdoptReport:
    rooms: dict[str, set[str]] = {}
    for official in sorted(opts.officials):
        status, data = await client.call("GET", f"/_synapse/admin/v1/users/{quote(official)}/joined_rooms")
        if status in (401, 403):
            raise UsageError(
                f"adopt needs the bot {opts.archiver} to be a Synapse server admin (the admin API answered {status})"
            )
        if status == 404:
            continue  # not a local user (or gone): no rooms to adopt through it
        if status != 200:
            raise SourceError(f"admin API: joined rooms of {official} answered {status}: {data}")
        for room_id in data.get("joined_rooms", []):
            rooms.setdefault(str(room_id), set()).add(official)
    results = []
    for room_id in sorted(rooms):
        results.append(await _one(session, client, opts, room_id, tuple(sorted(rooms[room_id]))))
    return AdoptReport(tuple(results))


async def _one(
    session: aiohttp.ClientSession,
    client: HomeserverClient,
    opts: CoverageOptions,
    room_id: str,
    officials: tuple[str, ...],
) -> Adopted:
    room = quote(room_id)
    state = room_state((await client.ok("GET", f"/_synapse/admin/v1/rooms/{room}/state")).get("state", []))
    base = Adopted(room_id, officials, "failed", encrypted=state.encrypted, history_visibility=state.history_visibility)
    membership = state.members.get(opts.archiver)
    if membership == "join":
        return replace(base, outcome="already_in")
    if membership == "ban":
        return replace(base, reason="the archiver is banned from the room")
    inviter = next((u for u in officials if may_invite(state, u)), None)
    if membership != "invite":
        if inviter is None:
            return replace(base, reason=f"no official in the room may invite (needs power level {state.invite_level})")
        failure = await _invite_as(session, client, opts, room, inviter)
        if failure is not None:
            return replace(base, reason=failure, invited_by=inviter)
    status, data = await client.call("POST", f"/_matrix/client/v3/join/{room}", {})
    if status != 200:
        errcode = data.get("errcode") if isinstance(data, dict) else None
        return replace(base, reason=f"the archiver's join was refused ({status} {errcode})", invited_by=inviter)
    join_ms = await _join_time(client, room, opts.archiver)
    count, at_least = await _count_unreadable(client, room, join_ms) if state.encrypted else (0, False)
    notes = []
    if count:
        notes.append(
            f"{'at least ' if at_least else ''}{count} encrypted event(s) sent before the archiver joined cannot be"
            " decrypted: Megolm keys were shared only with the devices in the room when they were sent"
            " (an official's client can forward them); they are stored as undecryptable"
        )
    if state.history_visibility in ("joined", "invited"):
        notes.append(f"history_visibility is {state.history_visibility}: nothing before the join is visible to the bot")
    else:
        notes.append("the running bot backfills the visible history on its next sync")
    return replace(
        base, outcome="joined", invited_by=inviter, undecryptable=count, at_least=at_least, notes=tuple(notes)
    )


async def _invite_as(
    session: aiohttp.ClientSession, client: HomeserverClient, opts: CoverageOptions, room: str, inviter: str
) -> str | None:
    """The official `inviter` invites the archiver (admin login-as-user); None on success, else why not."""
    status, data = await client.call("POST", f"/_synapse/admin/v1/users/{quote(inviter)}/login", {})
    if status != 200 or not isinstance(data, dict) or "access_token" not in data:
        return f"the admin API would not act as {inviter} ({status})"
    as_official = HomeserverClient(session, opts.homeserver)
    as_official.token = str(data["access_token"])
    try:
        body = {"user_id": opts.archiver, "reason": "chatarchief adopt: archiver added by the server admin"}
        status, data = await as_official.call("POST", f"/_matrix/client/v3/rooms/{room}/invite", body)
    finally:
        await as_official.call("POST", "/_matrix/client/v3/logout", {})
    if status != 200:
        errcode = data.get("errcode") if isinstance(data, dict) else None
        return f"{inviter} could not invite the archiver ({status} {errcode})"
    return None


async def _join_time(client: HomeserverClient, room: str, archiver: str) -> int | None:
    status, data = await client.call(
        "GET", f"/_matrix/client/v3/rooms/{room}/state/m.room.member/{quote(archiver)}?format=event"
    )
    ts = data.get("origin_server_ts") if status == 200 and isinstance(data, dict) else None
    return ts if isinstance(ts, int) else None


async def _count_unreadable(client: HomeserverClient, room: str, join_ms: int | None) -> tuple[int, bool]:
    """Encrypted events before the join, paging /messages backwards as the archiver (bounded by SCAN_LIMIT)."""
    count = scanned = 0
    token: str | None = None
    while scanned < SCAN_LIMIT:
        path = f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={PAGE}"
        if token:
            path += f"&from={quote(token)}"
        data = await client.ok("GET", path)
        chunk = data.get("chunk") or []
        count += unreadable(chunk, join_ms)
        scanned += len(chunk)
        token = data.get("end")
        if not chunk or not token:
            return count, False
        await asyncio.sleep(0)
    return count, True
