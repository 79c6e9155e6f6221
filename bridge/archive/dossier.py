"""What a Dossier's MDTO needs, gathered in one streaming pass over a conversation-month (pure).

Feed `DossierSummary.add` every event of the conversation-month in log order
(with `withheld=True` for events under a withhold decision). Memory is bounded:
one entry per participant and at most `cap` detailed MDTO events per type; the
rest is folded into one closing event per type that says how many there were.

Mapping (see `bridge.archive.mdto` for the begrippen): the first message or
attachment of the month -> "Creatie"; each edit -> "Wijziging"; each deletion
-> "Verwijdering in chat" (the original stays in the package); the month's
closing checkpoint -> "Bevriezing". Withheld events only raise the withheld
count: neither their sender nor their time appears in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.archive.mdto import DossierEvent, EventType, Participant, Ref
from bridge.events import Event, Kind

ARCHIVER = Ref("Chatarchief (archiveringsbot)")


@dataclass
class _Folded:
    count: int = 0
    last_ms: int = 0


@dataclass
class DossierSummary:
    """Participants, MDTO events and the withheld count of one conversation-month."""

    cap: int = 100
    withheld_count: int = 0
    _names: dict[tuple[str, str], str] = field(default_factory=dict)
    _senders: set[tuple[str, str]] = field(default_factory=set)
    _events: list[DossierEvent] = field(default_factory=list)
    _per_type: dict[str, int] = field(default_factory=dict)
    _folded: dict[EventType, _Folded] = field(default_factory=dict)
    _created: bool = False
    first_ms: int | None = None  # the earliest and latest own time of an event inside (see `_own_time`)
    last_ms: int | None = None

    def add(self, event: Event, *, withheld: bool = False) -> None:
        if withheld:
            self.withheld_count += 1
            return
        if event.kind == Kind.MEMBERSHIP:
            self._learn_name(event)
        if event.sender is not None and event.kind != Kind.NOTICE:
            self._senders.add((event.source, event.sender))
        at = event.sent_at if event.sent_at is not None else event.received_at
        if event.kind != Kind.NOTICE:
            own = _own_time(event)
            self.first_ms = own if self.first_ms is None else min(self.first_ms, own)
            self.last_ms = own if self.last_ms is None else max(self.last_ms, own)
        if event.kind in (Kind.MESSAGE, Kind.ATTACHMENT) and not self._created:
            self._created = True
            self._events.append(DossierEvent("Creatie", at, _actor(event), "eerste bericht van de maand"))
        elif event.kind == Kind.EDIT:
            self._detail("Wijziging", at, event, f"bericht {event.relates_to} gewijzigd; eerdere versies bewaard")
        elif event.kind == Kind.DELETION:
            self._detail("Verwijdering in chat", at, event, f"bericht {event.relates_to} verwijderd; origineel bewaard")

    @property
    def senders(self) -> set[tuple[str, str]]:
        """(source, sender) of everyone who sent something (not withheld) so far."""
        return self._senders

    @property
    def created(self) -> bool:
        """Whether the month's first message or attachment is in ("Creatie")."""
        return self._created

    def _learn_name(self, event: Event) -> None:
        target, name = event.content.get("target"), event.content.get("displayname")
        if isinstance(target, str) and isinstance(name, str) and name:
            self._names[(event.source, target)] = name

    def _detail(self, kind: EventType, at: int, event: Event, result: str) -> None:
        n = self._per_type.get(kind, 0)
        self._per_type[kind] = n + 1
        if n < self.cap:
            self._events.append(DossierEvent(kind, at, _actor(event), result))
            return
        folded = self._folded.setdefault(kind, _Folded())
        folded.count += 1
        folded.last_ms = at

    def participants(self) -> tuple[Participant, ...]:
        """Everyone who sent something (not withheld), sorted, with their last known display name."""
        return tuple(Participant(s, src, self._names.get((src, s))) for src, s in sorted(self._senders))

    def events(self, sealed_at_ms: int | None = None, *, interim: bool = False) -> tuple[DossierEvent, ...]:
        """The MDTO events in log order, then folded counts, then "Bevriezing" at `sealed_at_ms` if given
        (an interim package freezes the month so far, and says so)."""
        out = list(self._events)
        for kind, folded in sorted(self._folded.items()):
            out.append(DossierEvent(kind, folded.last_ms, None, f"en nog {folded.count} keer ({kind.lower()})"))
        if sealed_at_ms is not None:
            result = (
                "tussentijds: de maand tot nu toe vastgelegd met een ondertekend checkpoint (de maand was nog niet"
                " voorbij)"
                if interim
                else "maand verzegeld met een ondertekend checkpoint"
            )
            out.append(DossierEvent("Bevriezing", sealed_at_ms, ARCHIVER, result))
        return tuple(out)


def _own_time(event: Event) -> int:
    """When the event happened by its own account: its send time, unless that is later than when the bot
    received it (a sender's wrong clock, or a lie), then the receive time; never after the package was sealed."""
    sent = event.sent_at
    return sent if sent is not None and sent <= event.received_at else event.received_at


def _actor(event: Event) -> Participant | None:
    return Participant(event.sender, event.source) if event.sender is not None else None
