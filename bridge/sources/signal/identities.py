"""One Signal person, three names: join the ACI, PNI and phone number that signal-cli reports as one recipient (pure).

Why: a 1:1 chat is keyed by its peer as the envelope names it (ACI, else number, else "PNI:<uuid>"; see
`envelopes`), so the first message to a new contact (named only by PNI, signal-cli issue 1834) or a sender
known only by number opens a second or third conversation. What says they are one person:

* signal-cli's `listContacts` (JSON: a list of `JsonContact`, src/main/java/org/asamk/signal/json/
  JsonContact.java: `number`, `uuid` = the ACI, `username`, names, profile...) and `listIdentities`
  (a list of `ListIdentitiesCommand.JsonIdentity`: `number`, `uuid` = the ACI, `fingerprint`,
  `safetyNumber`, `scannableSafetyNumber`, `trustLevel`, `addedTimestamp`). Neither JSON shape carries a
  PNI; asking `listContacts` with `recipient: ["PNI:<uuid>"]` (RecipientIdentifier.Single.fromString
  accepts "PNI:" identifiers) returns the recipient signal-cli merged that PNI into, so a PNI joins the
  number and ACI it answers with.
* an envelope that names the same peer two ways (`sourceUuid` and `sourceNumber`): `content["identities"]`.

Contract: `IdentityMap.learn(identity)` merges what it names into one person and returns the person as
now known when that added a link, else None (so the same report twice is one mapping event). It never
merges two different ACIs: a number or PNI reported with another ACI moves to it (a recycled number),
and a report without an ACI whose names belong to two ACIs is refused (`Conflict`), changing nothing.
`peer(identifier)` is the identifier a 1:1 conversation is keyed by: the person's ACI, else number, else
PNI. `mapping_event` is the STATE event that records a mapping, its
id a hash of (account, person), so re-recording the same mapping is idempotent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bridge import events
from bridge.errors import SourceError
from bridge.events import ConversationId, Event, EventId, JSONDict, Kind


@dataclass(frozen=True, slots=True)
class Identity:
    """What one report names of one person; the PNI in signal-cli's "PNI:<uuid>" form."""

    aci: str | None = None
    pni: str | None = None
    number: str | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.aci, self.pni, self.number) if n)

    def to_json(self) -> JSONDict:
        return {"aci": self.aci, "number": self.number, "pni": self.pni}


class Conflict(SourceError):
    """A report that would make one person of two ACIs or two PNIs (e.g. a number now used by someone else)."""


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value and events.json_safe(value) else None


def from_rpc(result: object, asked: str | None = None) -> tuple[list[tuple[Identity, JSONDict]], int]:
    """The identities in a `listContacts` or `listIdentities` result, each with the entry it came from, and
    the count of entries that are not objects naming at least one id. `asked`: the "PNI:<uuid>" the
    request named, added to a single answer (signal-cli resolved it to that recipient)."""
    if not isinstance(result, list):
        return [], 1
    found: list[tuple[Identity, JSONDict]] = []
    bad = 0
    for entry in result:
        if not isinstance(entry, dict) or not events.json_safe(entry):
            bad += 1
            continue
        uuid, number = _str(entry.get("uuid")), _str(entry.get("number"))
        pni = asked if asked is not None and len(result) == 1 else None
        if uuid is None and number is None:
            bad += 1
            continue
        found.append((Identity(uuid, pni, number), entry))
    return found, bad


def from_envelope(seen: object) -> Identity | None:
    """The `identities` {aci, pni, number} a normalised 1:1 event saw for its peer, if it names two or more."""
    if not isinstance(seen, dict):
        return None
    identity = Identity(_str(seen.get("aci")), _str(seen.get("pni")), _str(seen.get("number")))
    return identity if len(identity.names()) >= 2 else None


class IdentityMap:
    """The persons learnt so far (see the module docstring); memory grows with the recipients seen."""

    def __init__(self) -> None:
        self._person: dict[str, Identity] = {}  # every name -> the person it belongs to

    def person(self, identifier: str) -> Identity | None:
        return self._person.get(identifier)

    def peer(self, identifier: str) -> str:
        """The identifier a 1:1 conversation with `identifier` is keyed by (itself when nothing is known)."""
        person = self._person.get(identifier)
        if person is None:
            return identifier
        return person.aci or person.number or person.pni or identifier

    def learn(self, identity: Identity) -> Identity | None:
        """Merge `identity` into what is known; the merged person if that added a link, else None.

        A number or PNI reported with a different ACI than the one it had moves to the new ACI (a recycled
        number belongs to whoever signal-cli says has it now). Raises `Conflict` (and changes nothing) for a
        report without an ACI whose names belong to two different ACIs: which person is meant is unknown.
        """
        merged = identity
        moving: list[tuple[Identity, str]] = []
        for name in identity.names():
            if (known := self._person.get(name)) is None:
                continue
            if identity.aci and known.aci and known.aci != identity.aci:
                moving.append((known, name))
                continue
            merged = _merge(merged, known)
        for known, name in moving:
            self._detach(known, name)
        if all(self._person.get(name) == merged for name in merged.names()):
            return None
        for name in merged.names():
            self._person[name] = merged
        return merged if len(merged.names()) >= 2 else None

    def _detach(self, person: Identity, name: str) -> None:
        """`name` (a number or PNI) no longer belongs to `person`."""
        rest = Identity(*(None if value == name else value for value in (person.aci, person.pni, person.number)))
        for other in rest.names():
            self._person[other] = rest
        self._person.pop(name, None)


def _merge(newer: Identity, older: Identity) -> Identity:
    """One person from two reports; the newer report's number and PNI win (they change with the number)."""
    if newer.aci and older.aci and newer.aci != older.aci:
        raise Conflict("two different ACIs for one person")
    return Identity(newer.aci or older.aci, newer.pni or older.pni, newer.number or older.number)


def mapping_event(account: str | None, person: Identity, learnt_from: str, raw: JSONDict, received_at: int) -> Event:
    """The STATE event recording that `person`'s ids are one person, in the 1:1 conversation keyed by them."""
    peer = person.aci or person.number or person.pni or "unknown"
    conversation = f"direct:{account}:{peer}" if account else f"direct:{peer}"
    key = events.canonical_json({"account": account, "person": person.to_json()})
    detail: JSONDict = {"identities": person.to_json(), "learnt_from": learnt_from}
    return Event(
        source=events.SIGNAL,
        conversation=ConversationId(conversation),
        event_id=EventId("identity:" + hashlib.sha256(key).hexdigest()[:32]),
        kind=Kind.STATE,
        sender=None,
        sent_at=None,
        received_at=received_at,
        content={"type": "signal.identity_mapping", **detail, "content": dict(detail)},
        raw=raw,
    )
