"""Withholding: the pure fold of an information specialist's decisions about single events.

An event can be marked out of scope of the archive (private or party-political)
by appending a DECISION record (`bridge.log.decision`): the log stays
append-only and the Merkle proof still covers the event; only the package shows
a tombstone instead of its content. Undoing is another record ("release").

`fold_decisions` turns decisions in log order into the current state (last
decision per target wins; a release removes the target) and `withheld_for` says
whether an event is to be shown as a tombstone. No I/O here: appending a
decision (finding its target in the log, sealing it) is `bridge.withhold`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridge.events import Event, Kind
from bridge.log.decision import Decision, DecisionError, DecisionTarget, parse_decision

__all__ = [
    "Decision",
    "DecisionError",
    "DecisionTarget",
    "TargetKey",
    "Withheld",
    "fold_decisions",
    "parse_decision",
    "withheld_for",
]

TargetKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Withheld:
    """Why an event is withheld: the deciding record's reason, author, time (ms UTC) and sequence number."""

    reason: str
    by: str
    at_ms: int
    decision_seq: int


def fold_decisions(decisions: Iterable[tuple[int, Decision]]) -> dict[TargetKey, Withheld]:
    """The withheld targets after applying decisions in the given (log) order; the last one per target wins."""
    state: dict[TargetKey, Withheld] = {}
    for seq, d in decisions:
        if d.decision == "withhold":
            state[d.target.key] = Withheld(d.reason, d.by, d.at_ms, seq)
        else:
            state.pop(d.target.key, None)
    return state


def withheld_for(event: Event, withheld: Mapping[TargetKey, Withheld]) -> Withheld | None:
    """The decision hiding `event`: its own, or for an edit that of the message it edits.

    An edit carries the new text of the message it replaces, so withholding a
    message must hide its edits too, or the text would leak through them.
    """
    own = withheld.get(event.key)
    if own is not None or event.kind != Kind.EDIT or event.relates_to is None:
        return own
    return withheld.get((event.source, event.conversation, event.relates_to))
