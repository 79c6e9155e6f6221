"""Issue 11, Signal side: what a person must read from each real message shape is in the event's content."""

from __future__ import annotations

import pytest

from bridge.events import Event, Kind
from bridge.sources.signal.envelopes import normalise_envelope
from tests.support.signal_daemon import ACCOUNT, fixture_names, load_fixture
from tests.test_signal_envelopes import OWN_UUID, PEER_NUMBER, PEER_PNI, PEER_UUID, UNSTORED

#: Fixtures that are UNKNOWN on purpose (none today: every fixture is a shape the normaliser knows).
EXPECTED_UNKNOWN: frozenset[str] = frozenset()


def one(name: str) -> Event:
    (event,) = normalise_envelope(load_fixture(name), account=ACCOUNT, received_at=1_700_000_999_000)
    return event


@pytest.mark.parametrize("name", sorted(set(fixture_names()) - set(UNSTORED)))
def test_every_fixture_keeps_its_raw_and_is_known(name: str) -> None:
    """Each stored fixture keeps its params exactly as raw, and is UNKNOWN only if listed as such."""
    event = one(name)
    assert event.raw == load_fixture(name)
    assert (event.kind is Kind.UNKNOWN) == (name in EXPECTED_UNKNOWN), event.problem
    assert event.problem is None


def test_poll_start_has_question_and_indexed_answers() -> None:
    """pollCreate: question, answers with ids "0", "1", ... by index; allowMultiple lifts max_selections."""
    single = one("poll_create").content["poll"]
    assert single == {
        "action": "start",
        "question": "Vrijdag of maandag?",
        "answers": [{"id": "0", "text": "vrijdag"}, {"id": "1", "text": "maandag"}],
        "max_selections": 1,
        "disclosed": True,
    }
    assert one("poll_create_group").content["poll"]["max_selections"] == 3


def test_poll_vote_and_end_relate_to_the_poll() -> None:
    """A vote names the chosen indices as answer ids and points at author:timestamp of the poll; an end
    (which names no author: only the poll's author may end it) points at the sender's poll."""
    vote = one("poll_vote")
    assert vote.content["poll"] == {"action": "vote", "answers": ["1"]} and vote.content["vote_count"] == 1
    assert vote.relates_to == f"{PEER_UUID}:1700000019000" and vote.sender == OWN_UUID
    end = one("poll_terminate")
    assert end.content["poll"] == {"action": "end", "text": None}
    assert end.relates_to == one("poll_create").event_id


def test_admin_delete_is_a_deletion_of_its_target() -> None:
    """adminDelete removes another member's message: a DELETION of target author:timestamp, marked admin."""
    event = one("admin_delete")
    assert event.kind is Kind.DELETION and event.content["admin_delete"] is True
    assert event.relates_to == f"{OWN_UUID}:1700000004000"


def test_pin_and_unpin_are_state_pointing_at_the_message() -> None:
    """Pins are conversation state (as Matrix's pinned events): content["pin"] has action, target, duration."""
    pinned, unpinned = one("pin_message"), one("unpin_message")
    assert pinned.content["type"] == "signal.pin"
    assert pinned.content["pin"] == {
        "action": "pin",
        "target": f"{OWN_UUID}:1700000004000",
        "duration_seconds": 604800,
    }
    assert unpinned.content["pin"] == {"action": "unpin", "target": f"{OWN_UUID}:1700000004000"}


def test_payment_sticker_and_shared_contact_are_kept() -> None:
    """Payment note and receipt; sticker pack and id (a MESSAGE: its image is not an attachment);
    a shared contact's name, numbers and organisation."""
    assert one("payment").content["payment"] == {"note": "lunch 12 maart", "receipt": "CgIIAQ=="}
    sticker = one("sticker")
    assert sticker.kind is Kind.MESSAGE and sticker.attachments == ()
    assert sticker.content["sticker"] == {"pack_id": "9acc9e8aba563d26a4994e69263e3b25", "sticker_id": 3}
    (contact,) = one("shared_contact").content["contacts"]
    assert contact["name"] == "Jan de Jansen" and contact["numbers"] == ["+31600000005"]
    assert contact["organization"] == "Ministerie van Financiën" and contact["emails"] == []


def test_attachment_captions_are_kept_aligned() -> None:
    """Captions are a list aligned with the attachments; absent when no attachment has one."""
    event = one("attachment_caption")
    assert event.content["captions"] == ["whiteboard na de sessie"] and len(event.attachments) == 1
    assert "captions" not in one("attachment").content


def test_stories_calls_and_syncs_are_filed_under_their_chat() -> None:
    """A story is in its group or the poster's 1:1 chat; a call in the caller's 1:1 chat (summary, no
    WebRTC blobs, id as a string); contact syncs under the account's own "sync:" conversation."""
    assert one("story").content["body"] == "verhaal"
    group_story = one("story_group")
    assert group_story.attachments[0].url == "St0ryF1le2b3c4d.jpg" and group_story.content["captions"] == ["uitzicht"]
    assert one("sent_story").content["sent_by_linked_phone"] is True
    offer = one("call_offer").content
    assert offer["call"] == {"action": "offer", "call_id": "12297829382473034410", "type": "AUDIO_CALL"}
    assert one("call_hangup").content["call"]["action"] == "hangup"
    assert one("contacts_sync").content["type"] == "signal.contacts_sync"


def test_sender_and_group_names_are_kept() -> None:
    """sourceName is content["sender_name"]; the group's name from groupInfo is content["group_name"]."""
    event = one("group_message")
    assert event.content["sender_name"] == "Peer" and event.content["group_name"] == "Beleidsoverleg"
    assert one("sent_direct").content["sender_name"] == "Minister"


def test_mentions_keep_position_and_identity() -> None:
    """Mentions keep start, length, uuid and number, so the transcript can replace U+FFFC at start."""
    event = one("group_message")
    (mention,) = event.content["mentions"]
    assert event.content["body"][mention["start"]] == "\ufffc"
    assert (mention["length"], mention["uuid"], mention["number"]) == (
        1,
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "+31600000003",
    )


def test_one_peer_named_three_ways_records_every_identity() -> None:
    """ACI is preferred for the conversation (a uuid-only envelope joins the usual chat); the PNI of a first
    message (issue 1834) and a number-only sender cannot be joined from the envelope alone, so each 1:1 event
    records the ACI, PNI and number it saw for the peer, for a later mapping."""
    assert one("dm_received").content["identities"] == {"aci": PEER_UUID, "pni": None, "number": PEER_NUMBER}
    assert one("dm_uuid_only").conversation == one("dm_received").conversation
    assert one("sent_first_to_pni").content["identities"] == {"aci": None, "pni": f"PNI:{PEER_PNI}", "number": None}
    assert one("dm_number_only").content["identities"] == {"aci": None, "pni": None, "number": PEER_NUMBER}
    assert "identities" not in one("group_message").content
