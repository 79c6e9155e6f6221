"""The `withhold` command's work: append a decision about one event to the log (I/O).

`withhold` finds the target by its upstream event id with the read-only reader
(`bridge.log.reader`), appends the DECISION record through an `Appender` (the
local writer or the running bot's, `bridge.log.writer.open_writer`) and seals it
with a checkpoint, so `verify` covers it at once. What a decision means for a
package is the pure fold in `bridge.policy`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.clock import now_ms
from bridge.errors import UsageError
from bridge.log.decision import DECISION_SOURCE, Decision, DecisionTarget, Verdict, encode_decision, new_decision_id
from bridge.log.format import RecordType
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_decisions, iter_events
from bridge.log.writer import Appender
from bridge.policy import TargetKey, Withheld, fold_decisions


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision record in force after `withhold`: `appended` is False when it was already there."""

    seq: int
    appended: bool
    target: DecisionTarget
    standing: Withheld | None = None  # the earlier withhold that already covered the target


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
) -> Outcome:
    """Append a withhold (or, with `release`, a release) decision; returns where it stands.

    Withholding an event that is already withheld appends nothing (one event, one standing decision):
    the outcome names the earlier decision. To change the reason, release it and withhold it again.

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
    current = await asyncio.to_thread(current_withheld, data_dir, store.keys)
    standing = current.get(target.key)
    if release and standing is None:
        raise UsageError(f"event {event_id!r} in {target.conversation!r} is not withheld; nothing to release")
    if not release and standing is not None:
        return Outcome(standing.decision_seq, False, target, standing)
    at_ms = clock() if clock is not None else now_ms()
    decision = Decision(new_decision_id(), verdict, target, reason, by, at_ms)
    entry = (RecordType.DECISION, DECISION_SOURCE, target.conversation, decision.id, encode_decision(decision))
    result = await store.append_records([entry])
    await store.checkpoint()
    return Outcome(result.seqs[0], True, target)
