"""Fidelity of bridge.sources.matrix.normalise against event shapes nobody here wrote.

`tests/fixtures/matrix/events.json` holds real shapes (Matrix spec examples, MSC3381/MSC3245 examples,
Element's and ruma's field names), each entry citing its origin in `_source`, outside the event itself,
and saying what the normaliser must make of it in `expect`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import events
from bridge.events import Kind
from bridge.sources.matrix.normalise import normalise

FIXTURES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "matrix" / "events.json").read_text(encoding="utf-8")
)
RECEIVED = 1_700_000_000_750


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_fixture_normalises_as_expected(fixture: dict[str, Any]) -> None:
    """Each fixture event gets the kind, content, relation and problem its entry expects."""
    expect = fixture["expect"]
    event = normalise(fixture["event"], received_at=RECEIVED)
    assert event.kind is Kind(expect["kind"])
    assert event.content == expect["content"]
    assert event.relates_to == expect["relates_to"]
    if expect["problem"] is None:
        assert event.problem is None
    else:
        assert event.problem is not None and expect["problem"] in event.problem


def test_every_fixture_cites_its_source() -> None:
    """No fixture without an origin: the shapes are evidence only if we can say where they come from."""
    for fixture in FIXTURES:
        assert fixture["_source"].strip(), fixture["name"]
        assert "_source" not in fixture["event"]


@settings(max_examples=150, deadline=None)
@given(
    fixture=st.sampled_from(FIXTURES),
    form=st.sampled_from(["dict", "bytes", "text"]),
    received_at=st.integers(min_value=0, max_value=2**53),
    room=st.none() | st.just("!other:example.org"),
)
def test_fixture_events_keep_their_raw_and_their_kind(
    fixture: dict[str, Any], form: str, received_at: int, room: str | None
) -> None:
    """Whatever form it arrives in, a fixture event keeps its raw exactly, round-trips through the
    canonical encoding, and is UNKNOWN only where its entry says it truly is."""
    raw = fixture["event"]
    data: Any = {"dict": raw, "bytes": orjson.dumps(raw), "text": json.dumps(raw, ensure_ascii=False)}[form]
    event = normalise(data, room_id=room, received_at=received_at)
    assert event.raw == raw
    assert events.event_from_bytes(events.canonical_bytes(event)) == event
    assert (event.kind is Kind.UNKNOWN) == (fixture["expect"]["kind"] == "unknown")
    assert event.kind is Kind(fixture["expect"]["kind"])


# --- behaviour around the fixtures: the parts a fixture alone does not pin ----------------------


def _event(etype: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": etype,
        "room_id": "!r:example.org",
        "event_id": "$e",
        "sender": "@a:example.org",
        "origin_server_ts": 1,
        "content": content,
        **extra,
    }


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"m.poll": {"answers": []}}, "poll.question is missing"),
        ({"m.poll": {"question": {"m.text": [{"body": "Q"}]}}}, "poll.answers is missing"),
        ({"m.poll": {"question": {}, "answers": []}}, "poll.question has no text"),
    ],
)
def test_poll_start_without_question_or_answers_is_unknown(content: dict[str, Any], problem: str) -> None:
    """A poll start with no question text or no answer list is not a poll anyone could read: UNKNOWN."""
    event = normalise(_event("m.poll.start", content), received_at=RECEIVED)
    assert event.kind is Kind.UNKNOWN and event.problem is not None and problem in event.problem


def test_poll_start_with_one_bad_answer_keeps_the_others() -> None:
    """An answer without id is dropped and named; a bad max_selections defaults to 1 and is named."""
    poll = {
        "question": {"m.text": [{"body": "Q"}]},
        "max_selections": "2",
        "answers": [{"m.text": [{"body": "no id"}]}, {"m.id": "b", "m.text": [{"body": "B"}]}, {"m.id": "c"}],
    }
    event = normalise(_event("m.poll.start", {"m.poll": poll}), received_at=RECEIVED)
    assert event.kind is Kind.POLL
    assert event.content["poll"]["answers"] == [{"id": "b", "text": "B"}, {"id": "c", "text": ""}]
    assert event.content["poll"]["max_selections"] == 1
    assert event.problem == (
        "poll.answers[0] has no id; poll.answers[2] has no text; poll.max_selections is not a positive integer"
    )


@pytest.mark.parametrize(
    ("etype", "content"),
    [
        ("m.poll.response", {"m.selections": ["a"]}),
        ("m.poll.response", {"m.relates_to": {"rel_type": "m.reference", "event_id": "$s"}}),
        ("org.matrix.msc3381.poll.response", {"m.relates_to": {"rel_type": "m.reference", "event_id": "$s"}}),
        ("m.poll.end", {"m.text": [{"body": "closed"}]}),
    ],
    ids=["vote-without-relation", "vote-without-selections", "unstable-vote-without-block", "end-without-relation"],
)
def test_vote_or_end_without_its_poll_or_choice_is_unknown(etype: str, content: dict[str, Any]) -> None:
    """A vote or end that names no poll, or a vote with no selections, is UNKNOWN (never read as an unvote)."""
    assert normalise(_event(etype, content), received_at=RECEIVED).kind is Kind.UNKNOWN


def test_redacted_poll_stays_a_poll() -> None:
    """A poll event redacted before capture (empty content) keeps kind POLL, marked redacted."""
    event = normalise(_event("org.matrix.msc3381.poll.start", {}), received_at=RECEIVED)
    assert event.kind is Kind.POLL and event.content == {"redacted_before_capture": True}


def test_undecryptable_with_a_bad_relation_is_still_undecryptable() -> None:
    """A cleartext relation that is malformed is named in `problem`; the event stays UNDECRYPTABLE."""
    content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "m.relates_to": {"rel_type": "m.replace"}}
    event = normalise(_event("m.room.encrypted", content), received_at=RECEIVED)
    assert event.kind is Kind.UNDECRYPTABLE and event.relates_to is None
    assert event.content == {"algorithm": "m.megolm.v1.aes-sha2", "rel_type": "m.replace"}
    assert event.problem == "m.relates_to.event_id is missing"


def test_call_without_call_id_is_unknown() -> None:
    """A call event without call_id cannot be tied to a call: UNKNOWN."""
    assert normalise(_event("m.call.hangup", {"version": "1"}), received_at=RECEIVED).kind is Kind.UNKNOWN


def test_voice_with_a_bad_duration_keeps_the_voice_marker() -> None:
    """A non-integer duration is left out and named; the voice marker and the media stay."""
    content = {
        "msgtype": "m.audio",
        "body": "Voice message",
        "url": "mxc://e/v",
        "info": {"duration": "2s"},
        "org.matrix.msc3245.voice": {},
    }
    event = normalise(_event("m.room.message", content), received_at=RECEIVED)
    assert event.kind is Kind.ATTACHMENT and event.content["voice"] is True and "duration" not in event.content
    assert event.attachments[0].url == "mxc://e/v"
    assert event.problem == "info.duration is not a non-negative integer"
