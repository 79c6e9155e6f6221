"""The archiver module's decisions, as pure functions of plain values (no Synapse import).

Contract:
- `parse(raw)` turns the `config:` mapping under Synapse's `modules:` into a frozen `Policy`, or raises
  `ValueError` with one line naming the key (Synapse shows it and refuses to start).
- `Policy.is_official(user_id)`: listed in `officials`, or any local user with `all_local_users: true`; never the
  archiver itself.
- `initial_invites(policy, creator, invite)`: the invite list of a `createRoom` by `creator`, with the archiver
  added when the creator is an official (so the archiver is a member before the first message and its devices get
  the room key).
- `guard(policy, ...)`: why a membership change of the archiver is refused (kick, ban, revoking its invite, its own
  leave from a joined room or from an official's invite), or None when allowed. Admins may do anything; the
  archiver may decline an invite from anyone else.
- `spooled(policy, ...)`: whether an event goes to the sealed spool (`spool:` configured, the archiver joined;
  encrypted rooms as their ciphertext); the spool's format and sealing are `chatarchief_synapse.spool`.
- `reaction(policy, ...)`: what to do after an event: `JOIN` the archiver (it was invited by an official or admin,
  or is invited and an official joined), `INVITE_AND_JOIN` (an official joined a room the archiver is not in;
  the official invites), or None.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "Policy", "SpoolConfig", "guard", "initial_invites", "parse", "reaction", "spooled"]

MEMBER = "m.room.member"
#: The archiver's memberships in which it is (or is about to be) in the room.
PRESENT = frozenset({"join", "invite"})


class Action(enum.Enum):
    JOIN = "join"
    INVITE_AND_JOIN = "invite_and_join"


@dataclass(frozen=True)
class SpoolConfig:
    """`spool: {path, public_key, keep_days}`: where the events of the archiver's rooms are appended, sealed to the
    bot's X25519 key; spool files last written more than `keep_days` days ago are removed when a new file starts
    (None: kept until the operator removes them)."""

    path: str
    public_key: bytes
    keep_days: int | None = None


@dataclass(frozen=True)
class Policy:
    archiver: str
    officials: frozenset[str]
    all_local_users: bool
    admins: frozenset[str]
    server_name: str = ""
    spool: SpoolConfig | None = None

    def is_official(self, user_id: str) -> bool:
        if user_id == self.archiver:
            return False
        if user_id in self.officials:
            return True
        return self.all_local_users and user_id.startswith("@") and user_id.endswith(f":{self.server_name}")

    def with_server(self, server_name: str) -> Policy:
        return Policy(self.archiver, self.officials, self.all_local_users, self.admins, server_name, self.spool)


def _user_id(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("@") or ":" not in value:
        raise ValueError(f"chatarchief_synapse: '{key}' must be a full Matrix user id such as @archive:example.org")
    return value


def _user_ids(key: str, value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple):
        raise ValueError(f"chatarchief_synapse: '{key}' must be a list of Matrix user ids")
    return frozenset(_user_id(key, v) for v in value)


KNOWN_KEYS = frozenset({"archiver", "officials", "all_local_users", "admins", "spool"})


def _spool(value: Any) -> SpoolConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not {"path", "public_key"} <= set(value) <= {"path", "public_key", "keep_days"}:
        raise ValueError(
            "chatarchief_synapse: 'spool' must be a mapping with 'path' and 'public_key' (and optionally 'keep_days')"
        )
    keep = value.get("keep_days")
    if keep is not None and (type(keep) is not int or keep < 1):
        raise ValueError("chatarchief_synapse: 'spool.keep_days' must be a whole number of days, at least 1")
    path, key = value["path"], value["public_key"]
    if not isinstance(path, str) or not path:
        raise ValueError("chatarchief_synapse: 'spool.path' must be a directory path")
    try:
        raw = base64.b64decode(key, validate=True) if isinstance(key, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "chatarchief_synapse: 'spool.public_key' must be the bot's X25519 public key, base64 of 32 bytes"
            " (`chatarchief spool-key --config FILE` prints it)"
        )
    return SpoolConfig(path, raw, keep)


def parse(raw: Mapping[str, Any] | None) -> Policy:
    """The module's config (see module docstring); refuses unknown keys and an empty official set."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"chatarchief_synapse: unknown config key '{unknown[0]}'; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    if "archiver" not in raw:
        raise ValueError("chatarchief_synapse: 'archiver' (the archive bot's user id) is required")
    archiver = _user_id("archiver", raw["archiver"])
    all_local = raw.get("all_local_users", False)
    if not isinstance(all_local, bool):
        raise ValueError("chatarchief_synapse: 'all_local_users' must be true or false")
    officials = _user_ids("officials", raw.get("officials"))
    if not officials and not all_local:
        raise ValueError("chatarchief_synapse: set 'officials' (a list of user ids) or 'all_local_users: true'")
    admins = _user_ids("admins", raw.get("admins"))
    return Policy(archiver, officials, all_local, admins, spool=_spool(raw.get("spool")))


def initial_invites(policy: Policy, creator: str, invite: Sequence[str]) -> list[str] | None:
    """The new `invite` list of a createRoom request, or None to leave it as it is."""
    if not policy.is_official(creator) or policy.archiver in invite:
        return None
    return [*invite, policy.archiver]


def guard(
    policy: Policy, state_key: str, membership: str, sender: str, current: str | None, current_by: str | None = None
) -> str | None:
    """Why this `m.room.member` change is refused, or None.

    `current`: the archiver's membership before the change; `current_by`: who set it (the inviter of an invite).
    """
    if state_key != policy.archiver or membership not in ("leave", "ban") or sender in policy.admins:
        return None
    if sender == policy.archiver:
        official_invite = current_by is not None and (policy.is_official(current_by) or current_by in policy.admins)
        if current == "invite" and membership == "leave" and not official_invite:
            return None  # declining an invite it was never meant to take (the bot's own inviter rules)
        return "the archiver may not leave an official room; only an admin listed in the module config may remove it"
    if current not in PRESENT and membership == "leave":
        return None  # nothing to remove (a no-op leave)
    what = "ban" if membership == "ban" else ("revoking the invite of" if current == "invite" else "kick")
    return f"{what} the archiver is refused: only an admin listed in the module config may remove it"


def reaction(
    policy: Policy,
    state_key: str,
    membership: str,
    sender: str,
    archiver_membership: str | None,
    *,
    covered_at_creation: bool,
) -> Action | None:
    """What to do after a new `m.room.member` event (see module docstring).

    `archiver_membership`: the archiver's membership in the room's current state; `covered_at_creation`: the event
    is the creator's first join in a room whose createRoom already invited the archiver.
    """
    if state_key == policy.archiver:
        if membership == "invite" and (policy.is_official(sender) or sender in policy.admins):
            return Action.JOIN
        return None
    if membership != "join" or not policy.is_official(state_key) or covered_at_creation:
        return None
    if archiver_membership in ("join", "ban"):
        return None  # in already, or banned by an admin on purpose
    if archiver_membership == "invite":
        return Action.JOIN
    return Action.INVITE_AND_JOIN


def spooled(policy: Policy, archiver_membership: str | None) -> bool:
    """Whether an event goes to the sealed spool: a spool is configured and the archiver is joined to the room.
    Encrypted rooms too: their events are spooled as Synapse holds them (Megolm ciphertext, sealed once more to
    the bot's key); only the bot, a member with the room keys, can decrypt them, as its sync loop would."""
    return policy.spool is not None and archiver_membership == "join"
