"""The payload of a DECISION record (pure: bytes in, values out).

An information specialist's decision about one captured event ("withhold" it
from the archive package, or "release" it again) is its own log record, so the
log stays append-only and undoing a decision is simply a later decision.

Payload: canonical JSON (sorted keys, no whitespace, UTF-8) of

    {"v": 1, "id": "decision:<uuid>", "decision": "withhold" | "release",
     "target": {"source": ..., "conversation": ..., "event_id": ...},
     "reason": ..., "by": ..., "at_ms": <int>}

The record is appended with source `DECISION_SOURCE`, conversation = the
target's conversation and id = `id`, so `verify` can check that the record is
filed under the conversation and dedup tags its payload claims.

Contract: `parse_decision(encode_decision(d)) == d`; `parse_decision` accepts
only the canonical encoding and raises `DecisionError` for anything else.
This module lives in `log/` (not `policy.py`) because the verifier and the
read-only reader need it and must not import the policy layer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import orjson

from bridge.errors import DataError
from bridge.events import canonical_json

DECISION_VERSION = 1
#: The `source` under which decision records are filed (never a chat protocol name).
DECISION_SOURCE = "decision"
ID_PREFIX = "decision:"

Verdict = Literal["withhold", "release"]
_VERDICTS: tuple[Verdict, ...] = ("withhold", "release")


class DecisionError(DataError, ValueError):
    """Bytes that are not a canonical decision payload (local bug or tampering)."""


@dataclass(frozen=True, slots=True)
class DecisionTarget:
    """The event a decision is about: its idempotency key."""

    source: str
    conversation: str
    event_id: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.conversation, self.event_id)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision; `reason` and `by` are non-empty, `at_ms` is ms since the epoch (UTC)."""

    id: str
    decision: Verdict
    target: DecisionTarget
    reason: str
    by: str
    at_ms: int

    def __post_init__(self) -> None:
        if self.decision not in _VERDICTS:
            raise DecisionError(f"decision must be one of {_VERDICTS}, got {self.decision!r}")
        if not self.id.startswith(ID_PREFIX) or len(self.id) == len(ID_PREFIX):
            raise DecisionError(f"decision id must start with {ID_PREFIX!r}")
        for name in ("source", "conversation", "event_id"):
            if not getattr(self.target, name):
                raise DecisionError(f"target.{name} must be non-empty")
        if not self.reason.strip() or not self.by.strip():
            raise DecisionError("reason and by must be non-empty")
        if isinstance(self.at_ms, bool) or not isinstance(self.at_ms, int) or self.at_ms < 0:
            raise DecisionError("at_ms must be a non-negative integer")

    def to_json(self) -> dict[str, object]:
        return {
            "v": DECISION_VERSION,
            "id": self.id,
            "decision": self.decision,
            "target": {
                "source": self.target.source,
                "conversation": self.target.conversation,
                "event_id": self.target.event_id,
            },
            "reason": self.reason,
            "by": self.by,
            "at_ms": self.at_ms,
        }


def new_decision_id() -> str:
    """A fresh record id, so every decision is its own record (never a duplicate)."""
    return ID_PREFIX + str(uuid.uuid4())


def encode_decision(decision: Decision) -> bytes:
    """The canonical payload bytes of a decision."""
    return canonical_json(decision.to_json())


def parse_decision(payload: bytes) -> Decision:
    """Inverse of `encode_decision`; raises `DecisionError` on anything not canonical."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecisionError(f"decision payload is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise DecisionError("decision payload is not a JSON object")
    if d.get("v") != DECISION_VERSION:
        raise DecisionError(f"unsupported decision version {d.get('v')!r}")
    if set(d) != {"v", "id", "decision", "target", "reason", "by", "at_ms"}:
        raise DecisionError(f"unexpected decision fields {sorted(d)}")
    target = d["target"]
    if not isinstance(target, dict) or set(target) != {"source", "conversation", "event_id"}:
        raise DecisionError("decision target must hold exactly source, conversation and event_id")
    texts = [d["id"], d["decision"], d["reason"], d["by"], *target.values()]
    if not all(isinstance(t, str) for t in texts):
        raise DecisionError("decision text fields must be strings")
    decision = Decision(
        id=d["id"],
        decision=d["decision"],
        target=DecisionTarget(target["source"], target["conversation"], target["event_id"]),
        reason=d["reason"],
        by=d["by"],
        at_ms=d["at_ms"],
    )
    if encode_decision(decision) != payload:
        raise DecisionError("decision payload is not in canonical form")
    return decision
