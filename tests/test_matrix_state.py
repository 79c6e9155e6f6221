"""The Matrix source's resume state (bridge/sources/matrix/state.py): the cursor document, its bound, the migration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import DataError
from bridge.sources.matrix.state import (
    MAX_PENDING,
    MEGOLM,
    PendingEvent,
    RoomHeads,
    SourceState,
    ciphertext_digest,
    decode,
    encode,
    migrate_legacy,
    pending_event,
)

ROOM = "!room:example.org"


def _encrypted(event_id: str, session: str = "S1", ciphertext: str = "AwgAEp...") -> dict[str, Any]:
    content = {"algorithm": MEGOLM, "sender_key": "K" * 43, "session_id": session, "ciphertext": ciphertext}
    return {"type": "m.room.encrypted", "event_id": event_id, "sender": "@a:example.org", "content": content}


def _pending(i: int, session: str = "S1") -> PendingEvent:
    entry = pending_event(f"$e{i}", ROOM, _encrypted(f"$e{i}", session, f"ct{i}"))
    assert entry is not None
    return entry


_ids = st.text(min_size=1, max_size=12)
_pending_events = st.builds(PendingEvent, _ids, _ids, _ids, _ids, _ids)
_states = st.builds(
    SourceState,
    st.none() | _ids.filter(lambda t: not t.startswith("{")),
    st.frozensets(_ids, max_size=5),
    st.lists(_pending_events, max_size=6, unique_by=lambda p: p.event_id).map(tuple),
    st.dictionaries(
        _ids,
        st.builds(
            RoomHeads,
            st.lists(_ids, max_size=3).map(tuple),
            st.none() | st.integers(min_value=0, max_value=2**53),
            st.none() | st.integers(min_value=0, max_value=2**53),
        ),
        max_size=4,
    ),
    st.none() | _ids,
)


@given(_states)
def test_the_document_round_trips(state: SourceState) -> None:
    """Any state decodes from its document to an equal state, up to pending events of one session
    being grouped together (their relative order kept)."""
    back = decode(encode(state))
    assert back.token == state.token and back.backfilled == state.backfilled and back.heads == state.heads
    assert back.device == state.device
    assert sorted(back.pending, key=repr) == sorted(state.pending, key=repr)
    for session in {(p.room_id, p.sender_key, p.session_id) for p in state.pending}:
        of = [p for p in state.pending if (p.room_id, p.sender_key, p.session_id) == session]
        assert [p for p in back.pending if (p.room_id, p.sender_key, p.session_id) == session] == of


def test_a_bare_sync_token_is_a_state_without_history() -> None:
    """A cursor written before the document (a plain sync token) resumes from that token with empty state;
    no cursor at all is the empty state."""
    assert decode("s72595_4483_1934") == SourceState(token="s72595_4483_1934")
    assert decode(None) == SourceState()


@pytest.mark.parametrize(
    "cursor",
    [
        '{"v": 2, "token": null}',
        '{"v": 1}',
        "{not json",
        '{"v":1,"token":1}',
        '{"v":1,"token":null,"backfilled":[],"pending":[],"heads":[["!r:x",["$a"],"soon",null]]}',
        '{"v":1,"token":null,"backfilled":[],"pending":[],"heads":[["!r:x",[1],5,null]]}',
        '{"v":1,"token":null,"backfilled":[],"pending":[],"heads":[["!r:x",["$a"],5]]}',
        '{"v":1,"token":"s1","backfilled":[],"pending":[],"device":7}',
    ],
)
def test_a_malformed_document_is_refused(cursor: str) -> None:
    """A document of another version, with missing or mistyped fields, or not JSON raises DataError:
    resuming from a guessed state could skip history."""
    with pytest.raises(DataError):
        decode(cursor)


def test_after_marks_adds_resolves_and_keeps_the_token_unless_given() -> None:
    """`after` adds backfilled rooms and new pending events (a known id once), drops resolved ones, and
    keeps the token when given None (a backfill page)."""
    state = SourceState("s1").after(token=None, backfilled=[ROOM], pending=[_pending(1), _pending(2), _pending(1)])
    assert state.token == "s1" and state.backfilled == {ROOM}
    assert [p.event_id for p in state.pending] == ["$e1", "$e2"]
    state = state.after(token="s2", resolved=["$e1"])
    assert state.token == "s2" and [p.event_id for p in state.pending] == ["$e2"]


def test_the_device_goes_with_its_token() -> None:
    """The device whose sync produced the token is replaced only with the token (a backfill page keeps both);
    a document written before the field decodes with no device, so the next start collects its to-device
    messages first (source.MatrixSource._catch_up_to_device)."""
    state = SourceState("s1", device="ACTIVE").after(token=None, backfilled=[ROOM], device="STANDBY")
    assert (state.token, state.device) == ("s1", "ACTIVE")
    state = state.after(token="s2", device="STANDBY")
    assert (state.token, state.device) == ("s2", "STANDBY")
    assert decode('{"v":1,"token":"s1","backfilled":[],"pending":[]}').device is None


def test_pending_is_bounded_oldest_forgotten_first_and_the_document_stays_small() -> None:
    """Past MAX_PENDING the oldest pending events are forgotten; the document at the bound (every event its
    own session, the worst case) stays under 250 KB and holds no ciphertext."""
    state = SourceState("s1").after(
        token=None, pending=[_pending(i, session=f"S{i:040d}") for i in range(MAX_PENDING + 5)]
    )
    assert len(state.pending) == MAX_PENDING and state.pending[0].event_id == "$e5"
    doc = encode(state)
    assert len(doc) < 250_000
    assert "ct7" not in doc and ciphertext_digest("ct7") in doc


def test_pending_event_keeps_ids_and_a_digest_never_the_ciphertext() -> None:
    """An undecryptable Megolm event becomes ids plus a ciphertext digest; an event that is no Megolm event
    (another algorithm, fields missing) has nothing to retry and gives None."""
    entry = pending_event("$x", ROOM, _encrypted("$x", ciphertext="secret-ciphertext"))
    assert entry == PendingEvent("$x", ROOM, "K" * 43, "S1", ciphertext_digest("secret-ciphertext"))
    assert pending_event("$x", ROOM, {"content": {"algorithm": "m.olm.v1", "ciphertext": "c"}}) is None
    assert pending_event("$x", ROOM, {"content": {"algorithm": MEGOLM, "session_id": "S"}}) is None
    assert pending_event("$x", ROOM, {"content": "redacted"}) is None


def test_legacy_side_file_is_folded_in_without_its_raw_events() -> None:
    """An old source_state.json (backfilled rooms, raw pending events) becomes the same rooms and the pending
    events as ids; the raw events are not carried over."""
    legacy = json.loads(
        json.dumps(
            {
                "backfilled": [ROOM, "!other:example.org"],
                "pending": {
                    "$e1": {"room_id": ROOM, "raw": _encrypted("$e1", ciphertext="abc")},
                    "$bad": {"room_id": ROOM},
                },
            }
        )
    )
    state = migrate_legacy(SourceState("s9", frozenset({"!third:example.org"})), legacy)
    assert state.token == "s9" and state.backfilled == {ROOM, "!other:example.org", "!third:example.org"}
    assert [p.event_id for p in state.pending] == ["$e1"]
    assert "abc" not in encode(state)
