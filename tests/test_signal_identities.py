"""One Signal person, three names: the identity map, the daemon's listContacts/listIdentities shapes, and the
source filing a PNI-only, a number-only and a full envelope of one person in one conversation.

The daemon is the stand-in `tests.support.signal_daemon.SignalDaemon`; its `listContacts` and `listIdentities`
answers are built field by field from signal-cli's `JsonContact` and `ListIdentitiesCommand.JsonIdentity`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import events
from bridge.events import Kind
from bridge.sources.signal.identities import Conflict, Identity, IdentityMap, from_rpc, mapping_event
from tests.support.signal_daemon import ACCOUNT, Recipient, SignalDaemon, load_fixture
from tests.test_signal_envelopes import PEER_NUMBER, PEER_PNI, PEER_UUID
from tests.test_signal_source import MemorySink, capturing, make_source, until

PNI = f"PNI:{PEER_PNI}"
PERSON = Recipient(aci=PEER_UUID, pni=PNI, number=PEER_NUMBER, name="Peer")


#: The record components of signal-cli's JsonContact (src/main/java/org/asamk/signal/json/JsonContact.java; `internal`
#: is @JsonInclude(NON_NULL) and only set with --internal) and of ListIdentitiesCommand.JsonIdentity, in order.
JSON_CONTACT = (
    "number", "uuid", "username", "name", "givenName", "familyName", "nickName", "nickGivenName", "nickFamilyName",
    "note", "color", "isArchived", "isBlocked", "isHidden", "messageExpirationTime", "profileSharing", "unregistered",
    "profile",
)  # fmt: skip
JSON_PROFILE = (
    "lastUpdateTimestamp",
    "givenName",
    "familyName",
    "about",
    "aboutEmoji",
    "hasAvatar",
    "mobileCoinAddress",
)
JSON_IDENTITY = (
    "number",
    "uuid",
    "fingerprint",
    "safetyNumber",
    "scannableSafetyNumber",
    "trustLevel",
    "addedTimestamp",
)


def test_stand_in_speaks_signal_clis_exact_shapes() -> None:
    """The stand-in daemon's listContacts / listIdentities entries have exactly signal-cli's fields, in order."""
    contact = PERSON.contact_json()
    assert tuple(contact) == JSON_CONTACT and tuple(contact["profile"]) == JSON_PROFILE
    assert tuple(PERSON.identity_json()) == JSON_IDENTITY


def test_contacts_and_identities_shapes_give_aci_and_number() -> None:
    """A JsonContact and a JsonIdentity name the ACI (`uuid`) and the number; neither names the PNI, which is
    added only to the single answer of a "PNI:" lookup. Entries naming nothing are counted, not guessed."""
    contact, identity = PERSON.contact_json(), PERSON.identity_json()
    assert "pni" not in contact and "pni" not in identity
    found, bad = from_rpc([contact, identity, {"number": None, "uuid": None}, "x"])
    assert [i for i, _ in found] == [Identity(PEER_UUID, None, PEER_NUMBER)] * 2 and bad == 2
    ((only, raw),) = from_rpc([contact], asked=PNI)[0]
    assert only == Identity(PEER_UUID, PNI, PEER_NUMBER) and raw == contact
    assert from_rpc({"not": "a list"}) == ([], 1)


def test_map_joins_names_once_and_never_joins_two_acis() -> None:
    """PNI and number join the ACI; the same report again adds nothing; a recycled number (reported with
    another ACI) moves to that ACI, so the old owner's chat does not receive the new owner's messages; a
    report without an ACI naming two persons' ids is refused and changes nothing."""
    known = IdentityMap()
    assert known.learn(Identity(None, PNI, PEER_NUMBER)) == Identity(None, PNI, PEER_NUMBER)
    assert known.peer(PNI) == PEER_NUMBER
    assert known.learn(Identity(PEER_UUID, None, PEER_NUMBER)) == Identity(PEER_UUID, PNI, PEER_NUMBER)
    assert {known.peer(n) for n in (PNI, PEER_NUMBER, PEER_UUID)} == {PEER_UUID}
    assert known.learn(Identity(PEER_UUID, None, PEER_NUMBER)) is None
    new_owner = "11111111-2222-3333-4444-555555555555"
    assert known.learn(Identity(new_owner, None, PEER_NUMBER)) == Identity(new_owner, None, PEER_NUMBER)
    assert known.peer(PEER_NUMBER) == new_owner and known.peer(PNI) == PEER_UUID
    assert known.person(PEER_UUID) == Identity(PEER_UUID, PNI, None)
    with pytest.raises(Conflict):
        known.learn(Identity(None, PNI, PEER_NUMBER))  # PNI is the old owner's, the number the new owner's
    assert known.peer(PEER_NUMBER) == new_owner and known.peer(PNI) == PEER_UUID
    assert known.peer("+31699999999") == "+31699999999"  # unknown: itself


_ACIS = [f"aci-{i}" for i in range(3)]
_REPORTS = st.lists(
    st.integers(0, 2).flatmap(
        lambda person: st.tuples(
            st.just(person),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        )
    ),
    max_size=12,
)


@given(_REPORTS)
def test_map_never_mixes_persons_and_reports_are_idempotent(reports: list[tuple[int, bool, bool, bool]]) -> None:
    """Whatever true reports arrive in whatever order: all names of one report lead to the same conversation,
    names of different persons never do, and a report learnt twice is recorded once."""
    known = IdentityMap()
    for person, aci, pni, number in reports:
        identity = Identity(
            _ACIS[person] if aci else None, f"PNI:{person}" if pni else None, f"+{person}" if number else None
        )
        known.learn(identity)
        assert known.learn(identity) is None
        assert len({known.peer(n) for n in identity.names()}) <= 1
    peers = {person: {known.peer(n) for n in (_ACIS[person], f"PNI:{person}", f"+{person}")} for person in range(3)}
    for a in range(3):
        for b in range(a + 1, 3):
            assert not peers[a] & peers[b]


def test_mapping_event_is_idempotent_and_filed_in_the_persons_conversation() -> None:
    """The mapping event's id depends on the account and the person only; it is filed in the ACI conversation."""
    person = Identity(PEER_UUID, PNI, PEER_NUMBER)
    one = mapping_event(ACCOUNT, person, "listContacts", {"a": 1}, 5)
    two = mapping_event(ACCOUNT, person, "listIdentities", {"b": 2}, 9)
    assert one.event_id == two.event_id and one.conversation == f"direct:{ACCOUNT}:{PEER_UUID}"
    assert one.kind is Kind.STATE and one.content["identities"] == {"aci": PEER_UUID, "pni": PNI, "number": PEER_NUMBER}
    assert events.event_from_bytes(events.canonical_bytes(one)) == one


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[SignalDaemon]:
    server = SignalDaemon(tmp_path, keepalive=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


PERSON_FIXTURES = ("sent_first_to_pni", "dm_number_only", "dm_received", "dm_uuid_only")


@pytest.mark.parametrize("transport", ["unix", "http"])
async def test_pni_number_and_aci_envelopes_land_in_one_conversation(daemon: SignalDaemon, transport: str) -> None:
    """With the daemon knowing the person, the first message to a PNI (signal-cli issue 1834), a number-only and
    an ACI envelope are one conversation. The daemon's mappings are recorded before the events they re-key:
    ACI and number at connect, the PNI when the first message names it; each re-keyed event keeps the
    conversation it arrived under."""
    daemon.recipients = [PERSON]
    sink = MemorySink()
    source = make_source(daemon.endpoints[transport], sink)
    async with capturing(source):
        for name in PERSON_FIXTURES:
            daemon.enqueue(load_fixture(name))
        await until(lambda: len([e for e in sink.events.values() if e.kind is not Kind.NOTICE]) == 6)
    stored = [e for e in sink.offered if e.kind is not Kind.NOTICE]
    mappings = [e for e in stored if e.content.get("type") == "signal.identity_mapping"]
    assert [m.content["identities"] for m in mappings] == [
        {"aci": PEER_UUID, "pni": None, "number": PEER_NUMBER},
        {"aci": PEER_UUID, "pni": PNI, "number": PEER_NUMBER},
    ]
    assert stored[0] is mappings[0] and [m.content["learnt_from"] for m in mappings] == ["listContacts"] * 2
    messages = [e for e in stored if e not in mappings]
    assert stored.index(mappings[1]) < stored.index(messages[0])
    assert {e.conversation for e in messages} == {f"direct:{ACCOUNT}:{PEER_UUID}"}
    first = next(e for e in messages if e.event_id.endswith(":1700000045000"))
    assert first.content["conversation_as_received"] == f"direct:{ACCOUNT}:{PNI}"
    assert ("listContacts", {"account": ACCOUNT, "recipient": [PNI], "allRecipients": True}) in daemon.requests


async def test_a_daemon_without_the_methods_costs_only_the_join(daemon: SignalDaemon) -> None:
    """An older daemon answering "Method not implemented": capture goes on, the envelopes keep their own
    conversations (the number-only one joined by what a full envelope showed), the refusals are counted."""
    daemon.methods_missing = {"listContacts", "listIdentities"}
    sink = MemorySink()
    source = make_source(daemon.endpoints["unix"], sink)
    async with capturing(source):
        for name in ("dm_received", "sent_first_to_pni", "dm_number_only"):
            daemon.enqueue(load_fixture(name))
        await until(lambda: len([e for e in sink.events.values() if e.kind is not Kind.NOTICE]) == 3)
    conversations = sorted(e.conversation for e in sink.offered if e.kind is not Kind.NOTICE)
    assert conversations == [f"direct:{ACCOUNT}:{PEER_UUID}"] * 2 + [f"direct:{ACCOUNT}:{PNI}"]
    assert source.counts["identity_lookup_refused"] >= 3
    assert not any(e.content.get("type") == "signal.identity_mapping" for e in sink.offered)
