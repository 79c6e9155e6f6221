"""Bridged rooms: which network a room mirrors and who a ghost user really is.

A bridge (mautrix-whatsapp, -signal, ...) mirrors a chat on another network into
a Matrix room. It announces itself with room state `m.bridge` (MSC2346) or the
older `uk.half-shot.bridge`, and speaks for the remote people through "ghost"
users (puppets) such as `@whatsapp_31612345678:server`. The archive must show
the original network and sender, not only the ghost's Matrix id.

Contract: `BridgeTracker.learn(room_id, raw)` is fed every raw event in room
order (and `learn_state` a sync's state section); `annotate(event)` returns the
event with `content["bridge"]` added when its room has bridge state, else the
event unchanged. The raw event is never touched. Shape of `content["bridge"]`:

    {
      "state": [{"type": "m.bridge", "state_key": "...", "content": {...}}, ...],
                   # every bridge state event of the room, as sent (sorted)
      "protocol": {"id": "whatsapp", "displayname": "WhatsApp"},   # from the
      "network":  {...}, "channel": {...}, "bridgebot": "@...",    # first one
      "sender": {
        "user_id": "@whatsapp_31612345678:server",
        "role": "ghost" | "bridge_bot" | "matrix",
        "remote_id": "31612345678" | null,   # the sender on the remote network
        "network": "whatsapp" | null,
        "displayname": "Jan de Vries" | null,
        "profile": {"com.beeper.bridge.remote_id": ..., "fi.mau....": ...}
      }
    }

A sender is a ghost when its member event carries the Beeper profile fields
mautrix bridges publish (`com.beeper.bridge.remote_id`, `.network`,
`.identifiers`; taken as given) or, failing those, when its localpart is
`<protocol id>_<remote id>` (mautrix's default username template). Keys of the
member content under `com.beeper.` and `fi.mau.` are kept in `profile`.
An `m.bridge` event with empty content removes that bridge (the room was
unbridged); events after it are no longer annotated.

Pure and in memory: the source feeds it the full-state sync that starts every
connection, so a restart relearns it from the server.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bridge.events import Event, JSONDict

BRIDGE_TYPES = ("m.bridge", "uk.half-shot.bridge")
PROFILE_PREFIXES = ("com.beeper.", "fi.mau.")
REMOTE_ID = "com.beeper.bridge.remote_id"
REMOTE_NETWORK = "com.beeper.bridge.network"
#: Rooms whose members we remember are bounded by the bridged rooms; members per room by this.
MAX_MEMBERS_PER_ROOM = 50_000


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _member_info(content: dict[str, Any]) -> JSONDict:
    displayname = content.get("displayname")
    return {
        "displayname": displayname if isinstance(displayname, str) else None,
        "profile": {k: v for k, v in content.items() if k.startswith(PROFILE_PREFIXES)},
    }


class BridgeTracker:
    """Bridge state and ghost profiles per room (see module docstring)."""

    def __init__(self) -> None:
        self._bridges: dict[str, dict[tuple[str, str], JSONDict]] = {}
        self._members: dict[str, dict[str, JSONDict]] = {}

    def learn_state(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """A state section (unordered): bridge state first, so members of a bridged room are kept."""
        for raw in events:
            if raw.get("type") in BRIDGE_TYPES:
                self.learn(room_id, raw)
        for raw in events:
            if raw.get("type") not in BRIDGE_TYPES:
                self.learn(room_id, raw)

    def learn(self, room_id: str, raw: dict[str, Any]) -> None:
        etype, state_key = raw.get("type"), raw.get("state_key")
        if not isinstance(state_key, str):
            return
        content = _dict(raw.get("content"))
        if etype in BRIDGE_TYPES:
            bridges = self._bridges.setdefault(room_id, {})
            if content:
                bridges[(str(etype), state_key)] = content
            else:
                bridges.pop((str(etype), state_key), None)
            if not bridges:
                del self._bridges[room_id]
                self._members.pop(room_id, None)
        elif etype == "m.room.member" and room_id in self._bridges:
            members = self._members.setdefault(room_id, {})
            known = state_key in members
            if known or (content.get("membership") in ("join", "invite") and len(members) < MAX_MEMBERS_PER_ROOM):
                members[state_key] = _member_info(content)

    def bridged(self, room_id: str) -> bool:
        return room_id in self._bridges

    def annotate(self, event: Event) -> Event:
        """`event` with `content["bridge"]` when its room is bridged (idempotent)."""
        bridges = self._bridges.get(event.conversation)
        if not bridges or "bridge" in event.content:
            return event
        state: list[dict[str, Any]] = [
            {"type": etype, "state_key": key, "content": content} for (etype, key), content in sorted(bridges.items())
        ]
        first = state[0]["content"]
        info: JSONDict = {"state": state}
        for field in ("protocol", "network", "channel", "bridgebot"):
            if field in first:
                info[field] = first[field]
        if event.sender is not None:
            info["sender"] = self._sender(event.conversation, event.sender, first)
        return replace(event, content={**event.content, "bridge": info})

    def _sender(self, room_id: str, user_id: str, bridge: dict[str, Any]) -> JSONDict:
        member = self._members.get(room_id, {}).get(user_id) or {"displayname": None, "profile": {}}
        profile = _dict(member.get("profile"))
        protocol = _dict(bridge.get("protocol")).get("id")
        protocol = protocol if isinstance(protocol, str) and protocol else None
        localpart = user_id[1:].split(":", 1)[0]
        remote_id: Any = profile.get(REMOTE_ID)
        network: Any = profile.get(REMOTE_NETWORK) or protocol
        if user_id == bridge.get("bridgebot"):
            role = "bridge_bot"
        elif remote_id is not None:
            role = "ghost"
        elif protocol is not None and localpart.lower().startswith(protocol.lower() + "_"):
            role = "ghost"
            remote_id = localpart[len(protocol) + 1 :]
        else:
            role, network = "matrix", None
        return {
            "user_id": user_id,
            "role": role,
            "remote_id": remote_id if isinstance(remote_id, str) else None,
            "network": network if isinstance(network, str) else None,
            "displayname": member.get("displayname"),
            "profile": profile,
        }
