"""What a transcript needs to know before it writes an entry: a first pass over the month's events (pure).

The transcript is written in log order, one entry at a time, but some entries must
show what comes later: a poll start shows who finally chose what, an original
message is marked "edited" only when its own sender edited it. `Lookahead.of(events)`
reads the month's events once (memory grows with the number of polls, votes, edits
and participants, not with messages) and answers those questions; the transcript
writer then streams the entries as before. Like the transcript, it is a function
of the record lines only, so `verify-package` derives the same answers.

Poll rules (the Matrix spec's, which Signal's polls follow too): a sender's later
vote (in log order) replaces their earlier one; only the first end counts; votes
after it are not counted; answer ids that are not the poll's are not counted; a
vote with more answers than `max_selections` counts its first `max_selections`.
Edit rule (the spec's): an edit counts only if its sender is the original's sender.
Call rule: a call is keyed by its call id; its first start (Matrix `invite`, Signal `offer`), first
`answer` and first end (`hangup`, `reject`, `busy`) make its summary: who started, answered and ended
it, and how long it lasted (end time minus answer time, from the events' own times).
Conversation view (what lets an entry show what happens to it later, as a chat client does): the own-sender
edits of each original (`versions`, in log order: its latest text and every earlier version), the reactions
to each event (`reactions`), the first deletion of each event (`deletions`), the ids that replies, edits,
reactions and deletions point at (`quoted`: the renderer keeps a snippet of only those), and the generic state
changes (`settings`: room set-up and later changes, summarised once at the top of the transcript). Memory
grows with the number of edits, reactions, deletions, replies and state changes, never with plain messages.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from bridge.archive.lookalike import Participants
from bridge.events import SPOOL_UNCONFIRMED, Event, Kind


@dataclass(frozen=True)
class Answer:
    answer_id: str
    text: str


@dataclass
class Poll:
    """A poll start and what happened to it in this month."""

    start_id: str
    creator: str | None
    question: str
    answers: tuple[Answer, ...]
    max_selections: int
    #: sender -> (vote event id, counted answer ids) of their current vote
    votes: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    end_id: str | None = None

    def answer_text(self, answer_id: str) -> str | None:
        return next((a.text for a in self.answers if a.answer_id == answer_id), None)

    def counted(self, answer_ids: Iterable[str]) -> tuple[str, ...]:
        valid = [a for a in answer_ids if self.answer_text(a) is not None]
        return tuple(dict.fromkeys(valid))[: max(self.max_selections, 1)]

    def tally(self) -> list[tuple[Answer, int]]:
        counts = {a.answer_id: 0 for a in self.answers}
        for _vote, chosen in self.votes.values():
            for answer_id in chosen:
                counts[answer_id] += 1
        return [(a, counts[a.answer_id]) for a in self.answers]


#: Call actions (Matrix `m.call.*` without the prefix, Signal's call message parts) by role.
CALL_STARTS = frozenset({"invite", "offer"})
CALL_ANSWERS = frozenset({"answer"})
CALL_ENDS = frozenset({"hangup", "reject", "busy"})


@dataclass
class Call:
    """One call of this month, from its signalling events (see the module docstring)."""

    start_id: str | None = None
    started_by: str | None = None
    answered_by: str | None = None
    answered_at: int | None = None
    end_id: str | None = None
    ended_by: str | None = None
    ended_at: int | None = None
    end_action: str | None = None
    end_reason: str | None = None

    @property
    def duration_ms(self) -> int | None:
        """How long the call lasted once answered; None when it was not answered or did not end here."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(self.ended_at - self.answered_at, 0)


@dataclass(frozen=True)
class VoteNote:
    """How one vote event counts: the vote it replaces, or why it does not count."""

    replaces: str | None = None
    late: bool = False


@dataclass
class Lookahead:
    """Answers of the first pass (see the module docstring)."""

    polls: dict[str, Poll] = field(default_factory=dict)
    votes: dict[str, VoteNote] = field(default_factory=dict)
    #: end event id -> the tally when the poll ended
    results: dict[str, list[tuple[Answer, int]]] = field(default_factory=dict)
    #: original event id -> id of its last edit by its own sender
    edited: dict[str, str] = field(default_factory=dict)
    #: edit event id -> sender of the original it tried to edit (a different sender: the edit is ignored)
    rejected: dict[str, str] = field(default_factory=dict)
    #: original event id -> ids of rejected edit attempts on it
    attempts: dict[str, list[str]] = field(default_factory=dict)
    participants: Participants = field(default_factory=Participants)
    #: call id -> what its signalling events say (STATE events with `content["call"]`)
    calls: dict[str, Call] = field(default_factory=dict)
    checks_edits: bool = False
    #: original event id -> its own sender's edits, in log order (the last one is its latest text)
    versions: dict[str, list[Event]] = field(default_factory=dict)
    #: event id -> reactions to it, in log order (removed ones included)
    reactions: dict[str, list[Event]] = field(default_factory=dict)
    #: event id -> the first deletion of it
    deletions: dict[str, Event] = field(default_factory=dict)
    #: ids that replies, edits, reactions and deletions point at
    quoted: set[str] = field(default_factory=set)
    #: generic state changes (not calls, upgrades, pins or identity mappings), in log order
    settings: list[Event] = field(default_factory=list)
    #: event id -> the first notice questioning it: it came only through the spool, never by the sync loop (a
    #: notice in a later month's events is not seen here: that package has the notice, naming the event)
    unconfirmed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Event], edit_targets: Collection[str] | None = None) -> Lookahead:
        """One pass over the month's events in log order. `edit_targets`: ids that some edit names (the
        package writer's pre-pass knows them); only their senders are remembered. None: remember all."""
        ahead = cls(checks_edits=True)
        senders: dict[str, str | None] = {}
        edits: list[Event] = []
        for ev in events:
            ahead._observe(ev)
            if edit_targets is None or ev.event_id in edit_targets:
                senders[ev.event_id] = ev.sender
            if ev.kind == Kind.EDIT and ev.relates_to is not None:
                edits.append(ev)
        ahead.settle(senders, edits)
        return ahead

    def settle(self, senders: Mapping[str, str | None], edits: Iterable[Event]) -> None:
        """The end of `of`'s pass: each edit (in log order) marks its original as edited when their senders match
        (`senders`: the original's sender by event id, of the edit targets seen), else is a rejected attempt."""
        ahead = self
        for edit in edits:
            edit_id, sender, target = edit.event_id, edit.sender, edit.relates_to or ""
            if target not in senders:
                continue  # the original is not in this month: nothing here is marked, the edit is shown as sent
            original = senders[target]
            if sender == original:
                ahead.edited[target] = edit_id
                ahead.versions.setdefault(target, []).append(edit)
            else:
                ahead.rejected[edit_id] = original or "(no sender)"
                ahead.attempts.setdefault(target, []).append(edit_id)

    def _observe(self, ev: Event) -> None:
        if ev.sender is not None:
            name = ev.content.get("sender_name")  # Signal: the sender's profile name, on every envelope
            self.participants.add(ev.sender, name if isinstance(name, str) else None)
        c = ev.content
        if ev.kind == Kind.MEMBERSHIP and isinstance(target := c.get("target"), str):
            name = c.get("displayname")
            self.participants.add(target, name if isinstance(name, str) else None)
        if ev.kind == Kind.POLL and isinstance(poll := c.get("poll"), dict):
            self._poll(ev, poll)
        if ev.kind == Kind.STATE and isinstance(call := c.get("call"), dict):
            self._call(ev, call)
        elif ev.kind == Kind.STATE and is_setting(c):
            self.settings.append(ev)
        target = ev.relates_to
        if ev.kind in (Kind.EDIT, Kind.REACTION, Kind.DELETION) and target is not None:
            self.quoted.add(target)
            if ev.kind == Kind.REACTION:
                self.reactions.setdefault(target, []).append(ev)
            elif ev.kind == Kind.DELETION:
                self.deletions.setdefault(target, ev)
        if isinstance(reply := c.get("reply_to"), str):
            self.quoted.add(reply)
        if ev.kind == Kind.NOTICE and c.get("notice") == SPOOL_UNCONFIRMED and isinstance(q := c.get("event_id"), str):
            self.unconfirmed.setdefault(q, ev.event_id)

    def _call(self, ev: Event, call: dict[str, object]) -> None:
        call_id, action = call.get("call_id"), call.get("action")
        if not isinstance(call_id, str) or not isinstance(action, str):
            return
        info = self.calls.setdefault(call_id, Call())
        at = ev.sent_at if ev.sent_at is not None else ev.received_at
        if action in CALL_STARTS and info.start_id is None:
            info.start_id, info.started_by = ev.event_id, ev.sender
        elif action in CALL_ANSWERS and info.answered_at is None and info.end_id is None:
            info.answered_by, info.answered_at = ev.sender, at
        elif action in CALL_ENDS and info.end_id is None:
            info.end_id, info.ended_by, info.ended_at, info.end_action = ev.event_id, ev.sender, at, action
            reason = call.get("reason")
            info.end_reason = reason if isinstance(reason, str) else None

    def _poll(self, ev: Event, poll: dict[str, object]) -> None:
        action = poll.get("action")
        if action == "start":
            self.polls[ev.event_id] = Poll(
                ev.event_id, ev.sender, _str(poll.get("question")), answers_of(poll.get("answers")), _max(poll)
            )
            return
        start = self.polls.get(ev.relates_to or "")
        if start is None:
            return
        if action == "vote" and ev.sender is not None:
            if start.end_id is not None:
                self.votes[ev.event_id] = VoteNote(late=True)
                return
            previous = start.votes.get(ev.sender)
            self.votes[ev.event_id] = VoteNote(replaces=previous[0] if previous else None)
            chosen = poll.get("answers")
            ids = [a for a in chosen if isinstance(a, str)] if isinstance(chosen, list) else []
            start.votes[ev.sender] = (ev.event_id, start.counted(ids))
        elif action == "end" and start.end_id is None:
            start.end_id = ev.event_id
            self.results[ev.event_id] = start.tally()


def is_setting(c: Mapping[str, object]) -> bool:
    """A generic state change (room set-up, name, rules, encryption...): not one that `transcript.state` shows
    as a call, room upgrade, identity mapping or pin (the same tests, in the same order)."""
    if isinstance(c.get("call"), Mapping) or isinstance(c.get("replacement_room"), str):
        return False
    if isinstance(pred := c.get("predecessor"), Mapping) and isinstance(pred.get("room_id"), str):
        return False
    if c.get("type") == "signal.identity_mapping" and isinstance(c.get("identities"), Mapping):
        return False
    return not isinstance(c.get("pin"), Mapping)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def answers_of(value: object) -> tuple[Answer, ...]:
    if not isinstance(value, list):
        return ()
    out = [Answer(_str(a.get("id")), _str(a.get("text"))) for a in value if isinstance(a, dict)]
    return tuple(a for a in out if a.answer_id)


def _max(poll: dict[str, object]) -> int:
    value = poll.get("max_selections")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
