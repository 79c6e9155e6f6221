"""The Signal normaliser: every envelope kind from signal-cli's documented shapes, and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.events import SIGNAL, Kind, canonical_bytes, event_from_bytes
from bridge.sources.signal.envelopes import normalise_envelope, unstored_kind
from tests.support.signal_daemon import ACCOUNT, fixture_names, load_fixture

PEER_UUID = "5e2f9d10-8a3b-4c6d-b7e8-1f2a3b4c5d6e"
OWN_UUID = "0b7c3a52-1d5e-4f7a-9c1e-6f0e2a1b3c4d"
PEER_PNI = "84a939c0-1ea4-48cb-bf72-e5d48099cd9f"  # the PNI quoted in signal-cli issue 1834
PEER_NUMBER = "+31600000002"
GROUP = "group:U3RhbmRpbmdDb21taXR0ZWVCZWxlaWRzb3ZlcmxlZyE="
DIRECT = f"direct:{ACCOUNT}:{PEER_UUID}"  # 1:1 chats are scoped by the archived account

# fixture -> (kind, conversation, event_id, relates_to)
EXPECTED: dict[str, tuple[Kind, str, str, str | None]] = {
    "dm_received": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000001000", None),
    "group_message": (Kind.MESSAGE, GROUP, f"{PEER_UUID}:1700000002000", None),
    "sent_direct": (Kind.MESSAGE, DIRECT, f"{OWN_UUID}:1700000003000", None),
    "sent_group": (Kind.MESSAGE, GROUP, f"{OWN_UUID}:1700000004000", None),
    "sent_edit": (Kind.EDIT, DIRECT, f"{OWN_UUID}:1700000005000", f"{OWN_UUID}:1700000003000"),
    "edit_received": (Kind.EDIT, DIRECT, f"{PEER_UUID}:1700000006000", f"{PEER_UUID}:1700000001000"),
    "remote_delete": (Kind.DELETION, DIRECT, f"{PEER_UUID}:1700000007000", f"{PEER_UUID}:1700000001000"),
    "reaction": (Kind.REACTION, GROUP, f"{PEER_UUID}:1700000008000", f"{OWN_UUID}:1700000004000"),
    "reaction_remove": (Kind.REACTION, GROUP, f"{PEER_UUID}:1700000009000", f"{OWN_UUID}:1700000004000"),
    "quote_reply": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000010000", None),
    "attachment": (Kind.ATTACHMENT, DIRECT, f"{PEER_UUID}:1700000011000", None),
    "expiration_timer": (Kind.RETENTION_CHANGE, DIRECT, f"{PEER_UUID}:1700000012000", None),
    "expiration_timer_legacy": (Kind.RETENTION_CHANGE, DIRECT, f"{PEER_UUID}:1700000013000", None),
    "view_once": (Kind.ATTACHMENT, DIRECT, f"{PEER_UUID}:1700000014000", None),
    "story": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000018000", None),
    "poll_create": (Kind.POLL, DIRECT, f"{PEER_UUID}:1700000019000", None),
    "group_update": (Kind.STATE, GROUP, f"{PEER_UUID}:1700000020000", None),
    "decryption_error": (Kind.UNDECRYPTABLE, DIRECT, f"{PEER_UUID}:1700000021000", None),
    # issue 11: polls, newer data messages, stories, calls, syncs, and the ways one peer is named
    "poll_vote": (Kind.POLL, DIRECT, f"{OWN_UUID}:1700000030000", f"{PEER_UUID}:1700000019000"),
    "poll_terminate": (Kind.POLL, DIRECT, f"{PEER_UUID}:1700000031000", f"{PEER_UUID}:1700000019000"),
    "poll_create_group": (Kind.POLL, GROUP, f"{PEER_UUID}:1700000032000", None),
    "admin_delete": (Kind.DELETION, GROUP, f"{PEER_UUID}:1700000033000", f"{OWN_UUID}:1700000004000"),
    "pin_message": (Kind.STATE, GROUP, f"{PEER_UUID}:1700000034000", f"{OWN_UUID}:1700000004000"),
    "unpin_message": (Kind.STATE, GROUP, f"{PEER_UUID}:1700000035000", f"{OWN_UUID}:1700000004000"),
    "payment": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000036000", None),
    "sticker": (Kind.MESSAGE, GROUP, f"{PEER_UUID}:1700000037000", None),
    "shared_contact": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000038000", None),
    "attachment_caption": (Kind.ATTACHMENT, DIRECT, f"{PEER_UUID}:1700000039000", None),
    "story_group": (Kind.ATTACHMENT, GROUP, f"{PEER_UUID}:1700000040000", None),
    "sent_story": (Kind.MESSAGE, f"stories:{OWN_UUID}", f"{OWN_UUID}:1700000041000", None),
    "call_offer": (Kind.STATE, DIRECT, f"{PEER_UUID}:1700000042000", None),
    "call_hangup": (Kind.STATE, DIRECT, f"{PEER_UUID}:1700000043000", None),
    "contacts_sync": (Kind.STATE, f"sync:{OWN_UUID}", f"{OWN_UUID}:1700000044000", None),
    "sent_first_to_pni": (Kind.MESSAGE, f"direct:{ACCOUNT}:PNI:{PEER_PNI}", f"{OWN_UUID}:1700000045000", None),
    "dm_uuid_only": (Kind.MESSAGE, DIRECT, f"{PEER_UUID}:1700000046000", None),
    "dm_number_only": (Kind.MESSAGE, f"direct:{ACCOUNT}:{PEER_NUMBER}", f"{PEER_NUMBER}:1700000047000", None),
}
UNSTORED = {"receipt": "receiptMessage", "typing": "typingMessage", "sync_read": "syncReceipt"}


def one(params: Any) -> Any:
    found = normalise_envelope(params, account=ACCOUNT, received_at=1_700_000_999_000)
    assert len(found) == 1
    return found[0]


def test_every_fixture_is_covered() -> None:
    """Each fixture file (one per envelope kind) has an expectation here, so a new fixture needs a test."""
    assert set(fixture_names()) == set(EXPECTED) | set(UNSTORED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_envelope_kinds(name: str) -> None:
    """Kind, conversation (group:/direct:), id = author:timestamp and relates_to follow the documented shapes;
    raw is the params object exactly as received and the event survives its canonical encoding."""
    params = load_fixture(name)
    event = one(params)
    kind, conversation, event_id, relates_to = EXPECTED[name]
    assert (event.source, event.kind, event.conversation, event.event_id, event.relates_to) == (
        SIGNAL,
        kind,
        conversation,
        event_id,
        relates_to,
    )
    assert event.raw == params
    assert event_from_bytes(canonical_bytes(event)) == event


@pytest.mark.parametrize(("name", "why"), sorted(UNSTORED.items()))
def test_receipts_and_typing_are_counted_not_stored(name: str, why: str) -> None:
    """Receipts, typing and the phone's read markers give no event; `unstored_kind` names why."""
    params = load_fixture(name)
    assert normalise_envelope(params, account=ACCOUNT, received_at=1) == []
    assert unstored_kind(params) == why


def test_message_content() -> None:
    """Body, mentions, text styles, group name/revision and the capturing account are kept."""
    event = one(load_fixture("group_message"))
    assert event.content["body"].endswith("graag reactie voor vrijdag")
    assert event.content["mentions"][0]["uuid"] == "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    assert event.content["text_styles"] == [{"length": 6, "start": 3, "style": "BOLD"}]
    assert event.content["group"]["name"] == "Beleidsoverleg" and event.content["group"]["revision"] == 7
    assert event.content["account"] == ACCOUNT


def test_sent_messages_are_marked_and_addressed_to_the_destination() -> None:
    """What the linked phone sent is authored by the own account, in the destination's conversation."""
    event = one(load_fixture("sent_direct"))
    assert event.sender == OWN_UUID and event.content["sent_by_linked_phone"] is True
    assert event.conversation == DIRECT


def test_quote_becomes_reply_to() -> None:
    """A quote points at author:id of the quoted message and keeps the quoted text."""
    event = one(load_fixture("quote_reply"))
    assert event.content["reply_to"] == f"{OWN_UUID}:1700000003000"
    assert event.content["quote"]["text"] == "Akkoord, ik bel je."


def test_reactions_and_their_removal() -> None:
    """A reaction has the emoji as key and removed: false; its removal is a reaction with removed: true."""
    added = one(load_fixture("reaction"))
    assert added.content["key"] == "\U0001f44d" and added.content["removed"] is False
    assert one(load_fixture("reaction_remove")).content["removed"] is True


def test_attachment_is_pending_with_signal_cli_id() -> None:
    """Attachments are pending references: signal-cli's id (in url), content type, file name, size."""
    (attachment,) = one(load_fixture("attachment")).attachments
    assert (attachment.status, attachment.url, attachment.media_type, attachment.filename, attachment.size) == (
        "pending",
        "Xq3vT0bLm9Jk2a1.pdf",
        "application/pdf",
        "nota.pdf",
        2048,
    )


def test_timer_changes_are_retention_changes() -> None:
    """A disappearing-messages timer change carries expires_in_seconds and max_lifetime (ms, None when off);
    the pre-0.13.21 shape (no isExpirationUpdate) is recognised and marked inferred."""
    on = one(load_fixture("expiration_timer"))
    assert on.content["expires_in_seconds"] == 604800 and on.content["max_lifetime"] == 604_800_000
    off = one(load_fixture("expiration_timer_legacy"))
    assert off.content["expires_in_seconds"] == 0 and off.content["max_lifetime"] is None
    assert off.content["inferred"] is True


def test_view_once_is_captured_and_marked() -> None:
    """A view-once message is captured like any other, with view_once: true."""
    event = one(load_fixture("view_once"))
    assert event.content["view_once"] is True and event.attachments[0].status == "pending"


def test_unknown_fields_are_flagged_and_kept() -> None:
    """A dataMessage field the normaliser does not know (a future signal-cli's) is named in `problem`;
    the message is still a message and the raw keeps the field."""
    params = load_fixture("dm_received")
    params["envelope"]["dataMessage"]["futureField"] = {"x": 1}
    event = one(params)
    assert event.kind is Kind.MESSAGE and event.problem is not None and "futureField" in event.problem
    assert event.raw["envelope"]["dataMessage"]["futureField"] == {"x": 1}


def test_the_three_wire_shapes_give_the_same_event() -> None:
    """Plain params, the subscription shape and the whole notification line normalise to the same key."""
    params = load_fixture("dm_received")
    shapes = [
        params,
        {"subscription": 3, "result": params},
        json.dumps({"jsonrpc": "2.0", "method": "receive", "params": params}).encode(),
    ]
    events = [one(shape) for shape in shapes]
    assert len({(e.key, e.kind, e.content["body"]) for e in events}) == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"envelope": {"sourceUuid": "x", "timestamp": 123456789012345678901234}}', "integer beyond 64 bits"),
        (b'{"envelope": "no"}', "params has no envelope object"),
        (b'{"envelope": {"timestamp": 5}}', "envelope has no sourceUuid, sourceNumber or source"),
        (b'{"envelope": {"sourceUuid": "x", "timestamp": "5"}}', "envelope timestamp is not an integer"),
        (b'{"envelope": {"sourceUuid": "x", "timestamp": 5}}', "envelope carries no message"),
    ],
)
def test_malformed_input_is_kept_as_unknown(data: bytes, problem: str) -> None:
    """Junk becomes one UNKNOWN event naming the problem; bytes that cannot be kept exactly are kept as base64."""
    event = one(data)
    assert event.kind is Kind.UNKNOWN and event.problem == problem
    assert event_from_bytes(canonical_bytes(event)) == event


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
_keys = st.sampled_from(
    ["dataMessage", "editMessage", "syncMessage", "sentMessage", "groupInfo", "reaction", "remoteDelete",
     "attachments", "quote", "timestamp", "sourceUuid", "message", "targetSentTimestamp", "isExpirationUpdate"]
)  # fmt: skip
_shaped = st.recursive(
    st.none() | st.integers(-5, 2**64) | st.text(max_size=8) | st.booleans(),
    lambda inner: st.dictionaries(_keys, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(envelope=_shaped, account=st.none() | st.text(max_size=12))
def test_never_raises_and_round_trips(envelope: Any, account: str | None) -> None:
    """Any envelope-like value gives 0 or 1 events that survive canonical encoding; raw keeps the input."""
    params = {"envelope": envelope, "account": account}
    found = normalise_envelope(params, account=account, received_at=7)
    assert len(found) <= 1
    for event in found:
        assert event_from_bytes(canonical_bytes(event)) == event
        if "unparsed_b64" not in event.raw:
            assert event.raw == params


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_never_raise(data: bytes) -> None:
    """Any line of bytes normalises without raising; what is stored round-trips."""
    for event in normalise_envelope(data, account=None, received_at=7):
        assert event_from_bytes(canonical_bytes(event)) == event


def test_direct_chats_of_two_archived_phones_stay_apart() -> None:
    """The same peer writing to two linked business phones gives two conversations; without a known
    account the conversation falls back to the peer alone."""
    params = load_fixture("dm_received")
    first = normalise_envelope({**params, "account": "+31600000001"}, account=None, received_at=1)
    second = normalise_envelope({**params, "account": "+31600000002"}, account=None, received_at=1)
    assert first[0].conversation == f"direct:+31600000001:{PEER_UUID}"
    assert second[0].conversation == f"direct:+31600000002:{PEER_UUID}"
    bare = {k: v for k, v in params.items() if k != "account"}
    assert normalise_envelope(bare, account=None, received_at=1)[0].conversation == f"direct:{PEER_UUID}"
