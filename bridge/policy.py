"""Withholding: an information specialist's decisions about single events.

An event can be marked out of scope of the archive (private or party-political)
by appending a DECISION record (`bridge.log.decision`): the log stays
append-only and the Merkle proof still covers the event; only the package shows
a tombstone instead of its content. Undoing is another record ("release").

Pure part: `fold_decisions` turns decisions in log order into the current state
(last decision per target wins; a release removes the target) and
`withheld_for` says whether an event is to be shown as a tombstone. I/O part:
`withhold` finds the target by its upstream event id, appends the decision and
seals it with a checkpoint, so `verify` covers it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.clock import now_ms
from bridge.errors import UsageError
from bridge.events import Event, Kind
from bridge.log.decision import (
    DECISION_SOURCE,
    Decision,
    DecisionError,
    DecisionTarget,
    Verdict,
    encode_decision,
    new_decision_id,
    parse_decision,
)
from bridge.log.format import RecordType
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_decisions, iter_events
from bridge.log.writer import Appender

__all__ = [
    "Decision",
    "DecisionError",
    "DecisionTarget",
    "Withheld",
    "current_withheld",
    "fold_decisions",
    "parse_decision",
    "withheld_for",
    "withhold",
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


def current_withheld(data_dir: Path, keys: KeyMaterial) -> dict[TargetKey, Withheld]:
    """Fold every decision in the log (read-only; streams the records)."""
    return fold_decisions(iter_decisions(data_dir, keys))


def find_targets(data_dir: Path, keys: KeyMaterial, event_id: str) -> list[DecisionTarget]:
    """Every distinct (source, conversation) holding an event with upstream id `event_id`, in log order."""
    found: dict[TargetKey, DecisionTarget] = {}
    for _, event in iter_events(data_dir, keys):
        if event.event_id == event_id and event.key not in found:
            found[event.key] = DecisionTarget(event.source, event.conversation, event.event_id)
    return list(found.values())


def choose_target(targets: list[DecisionTarget], event_id: str, conversation: str | None) -> DecisionTarget:
    """The one target meant, or a UsageError saying how to pick it."""
    if conversation is not None:
        targets = [t for t in targets if t.conversation == conversation]
    if not targets:
        where = f" in conversation {conversation!r}" if conversation is not None else ""
        raise UsageError(f"no event with id {event_id!r}{where} in this log; check the id (and --conversation)")
    if len(targets) > 1:
        listed = ", ".join(sorted(f"{t.conversation!r} ({t.source})" for t in targets))
        raise UsageError(f"event id {event_id!r} is in several conversations: {listed}; pick one with --conversation")
    return targets[0]


async def withhold(
    store: Appender,
    event_id: str,
    reason: str,
    by: str,
    *,
    data_dir: Path,
    conversation: str | None = None,
    release: bool = False,
    clock: Callable[[], int] | None = None,
) -> int:
    """Append a withhold (or, with `release`, a release) decision; returns its sequence number.

    `data_dir` must be the directory `store` writes (the target is looked up
    with the read-only reader, beside the writer; `store` may be the running
    bot's, through `bridge.log.writer.open_writer`). Raises UsageError for an
    empty reason/by, an unknown or ambiguous event id, or a release of an event
    that is not withheld. The decision is sealed by a checkpoint before return.
    """
    reason, by = reason.strip(), by.strip()
    if not event_id:
        raise UsageError("EVENT_ID must be non-empty")
    if not reason:
        raise UsageError("--reason must say why (it is shown in the archive package)")
    if not by:
        raise UsageError("--by must name who decides (it is shown in the archive package)")
    targets = await asyncio.to_thread(find_targets, data_dir, store.keys, event_id)
    target = choose_target(targets, event_id, conversation)
    verdict: Verdict = "release" if release else "withhold"
    if release:
        current = await asyncio.to_thread(current_withheld, data_dir, store.keys)
        if target.key not in current:
            raise UsageError(f"event {event_id!r} in {target.conversation!r} is not withheld; nothing to release")
    at_ms = clock() if clock is not None else now_ms()
    decision = Decision(new_decision_id(), verdict, target, reason, by, at_ms)
    entry = (RecordType.DECISION, DECISION_SOURCE, target.conversation, decision.id, encode_decision(decision))
    result = await store.append_records([entry])
    await store.checkpoint()
    return result.seqs[0]
