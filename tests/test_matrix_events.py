"""Tests for bridge.sources.matrix.normalise: Matrix client-server events -> Event.

Example events follow what Synapse serves over /sync and /messages (spec v1.x).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import events
from bridge.events import MATRIX, Attachment, Event, Kind, canonical_bytes, event_from_bytes
from bridge.sources.matrix.normalise import normalise

ROOM = "!VbCnXpQrStUw:example.org"
TS = 1_700_000_000_000
RECEIVED = 1_700_000_000_750


def ev(event_type: str, content: Any, **extra: Any) -> dict[str, Any]:
    """A client-server event as Synapse serves it from /messages."""
    base: dict[str, Any] = {
        "type": event_type,
        "room_id": ROOM,
        "sender": "@minister:example.org",
        "content": content,
        "origin_server_ts": TS,
        "unsigned": {"age": 1234},
        "event_id": "$hP7tQd2m0Yc-Xk9sWvLr3aZ1Bn4eFg6jHu8iOpKlMnE",
    }
    base.update(extra)
    return base


def norm(raw: Any, **kwargs: Any) -> Event:
    """normalise with a fixed received_at, and check the result encodes and round-trips."""
    event = normalise(raw, received_at=RECEIVED, **kwargs)
    assert events.event_from_bytes(events.canonical_bytes(event)) == event
    return event


def text(body: str = "Het besluit is genomen.", **content: Any) -> dict[str, Any]:
    return ev("m.room.message", {"msgtype": "m.text", "body": body, **content})


# --- messages ---------------------------------------------------------------------------------


def test_plain_text_message() -> None:
    """An m.text becomes a MESSAGE carrying ids, sender, times, {msgtype, body} and the raw event."""
    raw = text()
    event = norm(raw)
    assert event.kind is Kind.MESSAGE
    assert event.source == MATRIX
    assert event.key == ("matrix", ROOM, raw["event_id"])
    assert event.sender == "@minister:example.org"
    assert (event.sent_at, event.received_at) == (TS, RECEIVED)
    assert event.content == {"msgtype": "m.text", "body": "Het besluit is genomen."}
    assert event.relates_to is None and event.attachments == () and event.problem is None
    assert event.raw == raw


def test_room_id_argument_is_used_when_the_event_has_none() -> None:
    """Sync timelines omit room_id: the room_id argument names the conversation."""
    raw = text()
    del raw["room_id"]
    assert norm(raw, room_id="!other:example.org").conversation == "!other:example.org"


def test_event_room_id_wins_over_the_argument() -> None:
    """An event's own room_id is its conversation, whatever the caller passes."""
    assert norm(text(), room_id="!other:example.org").conversation == ROOM


def test_conversation_is_unknown_without_any_room_id() -> None:
    """With no room_id anywhere the conversation is "unknown" (still stored, never dropped)."""
    raw = text()
    del raw["room_id"]
    assert norm(raw).conversation == "unknown"


def test_formatted_reply_with_mentions() -> None:
    """format/formatted_body, the reply target and m.mentions are kept in content."""
    raw = text(
        "> <@ambtenaar:example.org> Wanneer?\n\nMorgen.",
        format="org.matrix.custom.html",
        formatted_body="<mx-reply>…</mx-reply>Morgen.",
        **{
            "m.relates_to": {"m.in_reply_to": {"event_id": "$earlier"}},
            "m.mentions": {"user_ids": ["@ambtenaar:example.org"]},
        },
    )
    content = norm(raw).content
    assert content["format"] == "org.matrix.custom.html"
    assert content["formatted_body"] == "<mx-reply>…</mx-reply>Morgen."
    assert content["reply_to"] == "$earlier"
    assert content["mentions"] == {"user_ids": ["@ambtenaar:example.org"]}


@pytest.mark.parametrize("msgtype", ["m.notice", "m.emote", "org.example.custom"])
def test_other_text_msgtypes_are_messages(msgtype: str) -> None:
    """m.notice, m.emote and unknown msgtypes are MESSAGEs with their msgtype kept."""
    event = norm(ev("m.room.message", {"msgtype": msgtype, "body": "x"}))
    assert event.kind is Kind.MESSAGE
    assert event.content == {"msgtype": msgtype, "body": "x"}


def test_thread_message() -> None:
    """A thread reply records its root; a fallback in-reply-to is flagged as such."""
    relation = {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$latest"},
    }
    content = norm(text(**{"m.relates_to": relation})).content
    assert content["thread_root"] == "$root"
    assert content["reply_to"] == "$latest"
    assert content["reply_is_fallback"] is True


def test_other_relation_is_recorded() -> None:
    """A message relation other than reply/thread/edit is recorded as {rel_type, event_id}."""
    content = norm(text(**{"m.relates_to": {"rel_type": "m.reference", "event_id": "$x"}})).content
    assert content["relation"] == {"rel_type": "m.reference", "event_id": "$x"}


def test_location() -> None:
    """m.location keeps its geo_uri."""
    raw = ev("m.room.message", {"msgtype": "m.location", "body": "Binnenhof", "geo_uri": "geo:52.08,4.31"})
    event = norm(raw)
    assert event.kind is Kind.MESSAGE
    assert event.content["geo_uri"] == "geo:52.08,4.31"


# --- attachments ------------------------------------------------------------------------------


def test_plain_image() -> None:
    """An unencrypted m.image is an ATTACHMENT with one pending Attachment from url and info."""
    raw = ev(
        "m.room.message",
        {
            "msgtype": "m.image",
            "body": "notulen.png",
            "url": "mxc://example.org/AbCdEf",
            "info": {"mimetype": "image/png", "size": 48213, "w": 800, "h": 600},
        },
    )
    event = norm(raw)
    assert event.kind is Kind.ATTACHMENT
    assert event.content == {"msgtype": "m.image", "body": "notulen.png"}
    assert event.attachments == (
        Attachment(
            status="pending",
            url="mxc://example.org/AbCdEf",
            media_type="image/png",
            filename="notulen.png",
            size=48213,
        ),
    )


def test_encrypted_file_with_caption() -> None:
    """Encrypted media takes its url from `file.url`; `filename` wins over a caption body."""
    file = {
        "url": "mxc://example.org/EnCrYpTeD",
        "key": {"kty": "oct", "alg": "A256CTR", "ext": True, "k": "qcHVMSgYg", "key_ops": ["encrypt", "decrypt"]},
        "iv": "X85+XgHN+HEAAAAAAAAAAA",
        "hashes": {"sha256": "eH9ZEhDx4s8"},
        "v": "v2",
    }
    raw = ev(
        "m.room.message",
        {
            "msgtype": "m.file",
            "body": "Zie bijlage",
            "filename": "advies.pdf",
            "file": file,
            "info": {"mimetype": "application/pdf", "size": 1000},
        },
    )
    event = norm(raw)
    (attachment,) = event.attachments
    assert (attachment.url, attachment.filename, attachment.media_type) == (
        "mxc://example.org/EnCrYpTeD",
        "advies.pdf",
        "application/pdf",
    )
    assert event.raw["content"]["file"]["key"]["k"] == "qcHVMSgYg"  # decryption key kept for the fetcher


@pytest.mark.parametrize("msgtype", ["m.video", "m.audio"])
def test_video_and_audio_are_attachments(msgtype: str) -> None:
    """m.video and m.audio are ATTACHMENTs like m.image and m.file."""
    raw = ev("m.room.message", {"msgtype": msgtype, "body": "opname", "url": "mxc://example.org/v"})
    event = norm(raw)
    assert event.kind is Kind.ATTACHMENT
    assert event.attachments[0].url == "mxc://example.org/v"
    assert event.attachments[0].media_type is None and event.attachments[0].size is None


@pytest.mark.parametrize("size", ["48213", 1.5, True, -1])
def test_non_integer_size_is_not_guessed(size: Any) -> None:
    """An info.size that is not a non-negative integer leaves the size unknown (the raw keeps it)."""
    raw = ev("m.room.message", {"msgtype": "m.image", "body": "a", "url": "mxc://e/x", "info": {"size": size}})
    event = norm(raw)
    assert event.kind is Kind.ATTACHMENT and event.attachments[0].size is None


def test_sticker() -> None:
    """An m.sticker event is an ATTACHMENT marked as a sticker."""
    raw = ev(
        "m.sticker",
        {"body": "duim omhoog", "url": "mxc://example.org/st", "info": {"mimetype": "image/webp"}},
    )
    event = norm(raw)
    assert event.kind is Kind.ATTACHMENT
    assert event.content == {"sticker": True, "body": "duim omhoog"}
    assert event.attachments[0].media_type == "image/webp"


@pytest.mark.parametrize(
    ("media", "problem"),
    [
        ({}, "neither url nor file"),
        ({"url": "mxc://e/a", "file": {"url": "mxc://e/b"}}, "both url and file"),
        ({"file": {"key": {}}}, "file.url is missing"),
        ({"url": 42}, "url is not a string"),
    ],
)
def test_media_without_one_clear_url_is_a_failed_attachment(media: dict[str, Any], problem: str) -> None:
    """Media with no url, an ambiguous one, or a wrongly typed one stays an ATTACHMENT whose media is
    "failed" with no url (nothing guessed, nothing fetched); the problem names why."""
    event = norm(ev("m.room.message", {"msgtype": "m.image", "body": "a", **media}))
    assert event.kind is Kind.ATTACHMENT and event.content == {"msgtype": "m.image", "body": "a"}
    (attachment,) = event.attachments
    assert attachment.status == "failed" and attachment.url is None
    assert attachment.error is not None and problem in attachment.error
    assert event.problem is not None and problem in event.problem


# --- edits ------------------------------------------------------------------------------------


def edit(new_content: Any = None, **outer: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "msgtype": "m.text",
        "body": "* Het besluit is uitgesteld.",
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"},
        **outer,
    }
    if new_content is not None:
        content["m.new_content"] = new_content
    return ev("m.room.message", content)


def test_edit() -> None:
    """An m.replace is an EDIT pointing at its target, with the new content normalised."""
    event = norm(edit({"msgtype": "m.text", "body": "Het besluit is uitgesteld."}))
    assert event.kind is Kind.EDIT
    assert event.relates_to == "$original"
    assert event.content == {"msgtype": "m.text", "body": "Het besluit is uitgesteld."}


def test_edit_without_new_content_uses_outer_content_and_says_so() -> None:
    """An edit lacking m.new_content falls back to the outer content, marked new_content_missing."""
    event = norm(edit())
    assert event.kind is Kind.EDIT and event.relates_to == "$original"
    assert event.content == {
        "msgtype": "m.text",
        "body": "* Het besluit is uitgesteld.",
        "new_content_missing": True,
    }


def test_edit_to_an_attachment_stays_an_edit() -> None:
    """An edit whose new content is media is still an EDIT, with the attachment set."""
    new = {"msgtype": "m.image", "body": "v2.png", "url": "mxc://example.org/v2"}
    event = norm(edit(new))
    assert event.kind is Kind.EDIT
    assert event.attachments[0].url == "mxc://example.org/v2"


@pytest.mark.parametrize(
    "raw",
    [
        ev("m.room.message", {"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.replace"}}),
        ev(
            "m.room.message",
            {"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.replace", "event_id": 7}},
        ),
    ],
    ids=["no-target", "target-not-a-string"],
)
def test_edit_without_target_is_unknown(raw: dict[str, Any]) -> None:
    """An edit that names no original is UNKNOWN: there is nothing it could be an edit of."""
    assert norm(raw).kind is Kind.UNKNOWN


@pytest.mark.parametrize(
    ("new_content", "problem"),
    [("not an object", "m.new_content is not an object"), ({"msgtype": "m.text"}, "m.new_content: body is missing")],
)
def test_bad_new_content_falls_back_to_the_outer_content(new_content: Any, problem: str) -> None:
    """An edit whose m.new_content is unusable keeps its target and the outer (fallback) content,
    marked new_content_missing, with the problem named."""
    event = norm(edit(new_content))
    assert event.kind is Kind.EDIT and event.relates_to == "$original"
    assert event.content == {"msgtype": "m.text", "body": "* Het besluit is uitgesteld.", "new_content_missing": True}
    assert event.problem == problem


# --- deletions and reactions ------------------------------------------------------------------


def test_redaction_before_room_v11() -> None:
    """m.room.redaction with a top-level `redacts` is a DELETION of that event, with its reason."""
    raw = ev("m.room.redaction", {"reason": "verkeerde kamer"}, redacts="$target")
    event = norm(raw)
    assert event.kind is Kind.DELETION
    assert event.relates_to == "$target"
    assert event.content == {"reason": "verkeerde kamer"}


def test_redaction_room_v11() -> None:
    """In room v11 `redacts` lives in content (Synapse also copies it to the top level)."""
    assert norm(ev("m.room.redaction", {"redacts": "$target"})).relates_to == "$target"
    event = norm(ev("m.room.redaction", {"redacts": "$target"}, redacts="$target"))
    assert (event.kind, event.relates_to, event.content) == (Kind.DELETION, "$target", {"reason": None})


@pytest.mark.parametrize(
    "raw",
    [
        ev("m.room.redaction", {"redacts": "$a"}, redacts="$b"),
        ev("m.room.redaction", {}),
        ev("m.room.redaction", {"redacts": ["$a"]}),
        ev("m.room.redaction", {}, redacts=""),
    ],
    ids=["disagree", "missing", "not-a-string", "empty"],
)
def test_malformed_redaction_is_unknown(raw: dict[str, Any]) -> None:
    """A redaction whose target is missing, ambiguous or mistyped is UNKNOWN."""
    assert norm(raw).kind is Kind.UNKNOWN


def test_reaction() -> None:
    """m.reaction is a REACTION on its target with the key."""
    raw = ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$msg", "key": "👍"}})
    event = norm(raw)
    assert (event.kind, event.relates_to, event.content) == (Kind.REACTION, "$msg", {"key": "👍"})


@pytest.mark.parametrize(
    "relation",
    [
        {"rel_type": "m.reference", "event_id": "$msg", "key": "👍"},
        {"rel_type": "m.annotation", "event_id": 7, "key": "👍"},
        {"rel_type": "m.annotation", "event_id": "$msg"},
        "m.annotation",
    ],
)
def test_malformed_reaction_is_unknown(relation: Any) -> None:
    """A reaction with a wrong rel_type, a mistyped target or no key is UNKNOWN."""
    assert norm(ev("m.reaction", {"m.relates_to": relation})).kind is Kind.UNKNOWN


# --- membership, retention, other state -------------------------------------------------------


def test_membership_displayname_change() -> None:
    """m.room.member is MEMBERSHIP with target, profile and the previous membership from unsigned."""
    raw = ev(
        "m.room.member",
        {"membership": "join", "displayname": "Minister van Zaken", "avatar_url": None},
        state_key="@minister:example.org",
        unsigned={"age": 5, "prev_content": {"membership": "join", "displayname": "M. Inister"}},
    )
    event = norm(raw)
    assert event.kind is Kind.MEMBERSHIP
    assert event.content == {
        "membership": "join",
        "target": "@minister:example.org",
        "displayname": "Minister van Zaken",
        "avatar_url": None,
        "reason": None,
        "is_direct": None,
        "previous": {"membership": "join", "displayname": "M. Inister"},
    }


def test_membership_invite_to_a_direct_chat() -> None:
    """An invite keeps is_direct and reason; the target is the state_key, not the sender."""
    raw = ev(
        "m.room.member",
        {"membership": "invite", "is_direct": True, "reason": "overleg"},
        state_key="@archiefbot:example.org",
    )
    content = norm(raw).content
    assert (content["membership"], content["target"]) == ("invite", "@archiefbot:example.org")
    assert (content["is_direct"], content["reason"], content["previous"]) == (True, "overleg", None)


@pytest.mark.parametrize(
    "raw",
    [
        ev("m.room.member", {"displayname": "x"}, state_key="@a:example.org"),
        ev("m.room.member", {"membership": "join"}, state_key=""),
        ev("m.room.member", {"membership": "join", "is_direct": "yes"}, state_key="@a:example.org"),
        ev("m.room.member", {"membership": "join"}, state_key=3),
        ev("m.room.member", {"membership": "join"}),
        ev(
            "m.room.member",
            {"membership": "join"},
            state_key="@a:example.org",
            unsigned={"prev_content": {"membership": 1}},
        ),
    ],
    ids=["no-membership", "empty-target", "bad-is-direct", "bad-state-key", "no-state-key", "bad-prev"],
)
def test_malformed_membership_is_unknown(raw: dict[str, Any]) -> None:
    """A membership event missing or mistyping a field it needs is UNKNOWN."""
    assert norm(raw).kind is Kind.UNKNOWN


def test_retention_change() -> None:
    """m.room.retention is a RETENTION_CHANGE with lifetimes and the previous policy."""
    raw = ev(
        "m.room.retention",
        {"max_lifetime": 86_400_000 * 365},
        state_key="",
        unsigned={"prev_content": {"max_lifetime": 86_400_000, "min_lifetime": 3_600_000}},
    )
    event = norm(raw)
    assert event.kind is Kind.RETENTION_CHANGE
    assert event.content == {
        "max_lifetime": 86_400_000 * 365,
        "min_lifetime": None,
        "previous": {"max_lifetime": 86_400_000, "min_lifetime": 3_600_000},
    }


def test_retention_with_a_state_key_is_plain_state() -> None:
    """Only the room's policy (state_key "") is a retention change; other state keys are STATE."""
    assert norm(ev("m.room.retention", {"max_lifetime": 1}, state_key="x")).kind is Kind.STATE


def test_retention_with_a_string_lifetime_is_unknown() -> None:
    """A lifetime that is not an integer is UNKNOWN, never parsed from text."""
    assert norm(ev("m.room.retention", {"max_lifetime": "1d"}, state_key="")).kind is Kind.UNKNOWN


@pytest.mark.parametrize(
    ("event_type", "state_key", "content"),
    [
        ("m.room.name", "", {"name": "Crisisoverleg"}),
        ("m.room.topic", "", {"topic": "Alleen zakelijk"}),
        ("m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 604800000}),
        ("m.room.create", "", {"room_version": "11"}),
        ("m.room.power_levels", "", {"users": {"@minister:example.org": 100}, "users_default": 0}),
        ("m.bridge", "signal", {"protocol": {"id": "signal"}, "bridgebot": "@signalbot:example.org"}),
        ("uk.half-shot.bridge", "signal", {"protocol": {"id": "signal"}}),
        ("org.example.custom.state", "k", {"anything": [1, 2]}),
        ("m.room.message", "odd", {"msgtype": "m.text", "body": "state, not a message"}),
    ],
)
def test_other_state_events(event_type: str, state_key: str, content: dict[str, Any]) -> None:
    """Any other event with a string state_key is STATE with {type, state_key, content}."""
    event = norm(ev(event_type, content, state_key=state_key))
    assert event.kind is Kind.STATE
    assert event.content == {"type": event_type, "state_key": state_key, "content": content}


def test_state_type_without_state_key_is_unknown() -> None:
    """m.room.name without a state_key is not state: an unknown non-state type is UNKNOWN."""
    event = norm(ev("m.room.name", {"name": "x"}))
    assert event.kind is Kind.UNKNOWN and event.problem is not None


# --- encryption -------------------------------------------------------------------------------


def encrypted() -> dict[str, Any]:
    return ev(
        "m.room.encrypted",
        {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg...",
            "device_id": "RJYKSTBOIE",
            "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
            "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
        },
    )


def test_undecryptable() -> None:
    """A still-encrypted event is UNDECRYPTABLE with its session evidence; the ciphertext stays in raw."""
    raw = encrypted()
    event = norm(raw)
    assert event.kind is Kind.UNDECRYPTABLE
    assert event.content == {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": raw["content"]["sender_key"],
        "session_id": raw["content"]["session_id"],
        "device_id": "RJYKSTBOIE",
    }
    assert event.raw["content"]["ciphertext"] == raw["content"]["ciphertext"]


def test_undecryptable_without_algorithm_is_unknown() -> None:
    """An encrypted event without an algorithm is UNKNOWN."""
    assert norm(ev("m.room.encrypted", {"ciphertext": "x"})).kind is Kind.UNKNOWN


def test_decryption_evidence_is_kept_verbatim() -> None:
    """Evidence for a decrypted event is stored as content["encryption"], unchanged."""
    evidence = {"session_id": "X3lU", "sender_key": "IlRM", "device_id": "RJYKSTBOIE", "verified": True}
    event = norm(text(), decryption=evidence)
    assert event.kind is Kind.MESSAGE
    assert event.content["encryption"] == evidence
    assert event.problem is None


def test_decryption_evidence_that_is_not_json_is_flagged() -> None:
    """Evidence that is not JSON is not recorded and the event says so; it is still normalised."""
    event = norm(text(), decryption={"verified": float("nan")})
    assert event.kind is Kind.MESSAGE and "encryption" not in event.content
    assert event.problem is not None and "decryption evidence" in event.problem


# --- redacted before capture ------------------------------------------------------------------


def test_message_redacted_before_capture() -> None:
    """A message already redacted keeps kind MESSAGE, marked, with the redaction's id."""
    because = {
        "type": "m.room.redaction",
        "sender": "@minister:example.org",
        "event_id": "$redaction",
        "redacts": "$hP7t",
        "content": {},
        "origin_server_ts": TS + 5,
    }
    event = norm(ev("m.room.message", {}, unsigned={"redacted_because": because}))
    assert event.kind is Kind.MESSAGE
    assert event.content == {"redacted_before_capture": True, "redacted_by": "$redaction"}


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("m.room.message", Kind.MESSAGE),
        ("m.sticker", Kind.ATTACHMENT),
        ("m.reaction", Kind.REACTION),
        ("m.room.encrypted", Kind.UNDECRYPTABLE),
    ],
)
def test_empty_content_means_redacted(event_type: str, kind: Kind) -> None:
    """Empty content on a type that needs content is a redaction we did not see: kind kept, marked."""
    raw = ev(event_type, {})
    del raw["unsigned"]
    event = norm(raw)
    assert event.kind is kind
    assert event.content == {"redacted_before_capture": True}


def test_redacted_membership_keeps_what_redaction_keeps() -> None:
    """A redacted m.room.member still has its membership, plus the marker."""
    raw = ev(
        "m.room.member",
        {"membership": "join"},
        state_key="@a:example.org",
        unsigned={"redacted_because": {"event_id": "$r"}},
    )
    event = norm(raw)
    assert event.kind is Kind.MEMBERSHIP
    assert event.content["membership"] == "join"
    assert event.content["redacted_before_capture"] is True and event.content["redacted_by"] == "$r"


def test_redacted_redaction_without_target() -> None:
    """A redaction that was itself redacted in a pre-v11 room lost `redacts`: DELETION of unknown target."""
    event = norm(ev("m.room.redaction", {}, unsigned={"redacted_because": {"event_id": "$r2"}}))
    assert event.kind is Kind.DELETION and event.relates_to is None
    assert event.content["redacted_before_capture"] is True


def test_redacted_because_not_an_object_is_unknown() -> None:
    """unsigned.redacted_because of the wrong type is UNKNOWN."""
    assert norm(ev("m.room.message", {}, unsigned={"redacted_because": "yes"})).kind is Kind.UNKNOWN


# --- malformed input --------------------------------------------------------------------------


def test_unknown_event_type() -> None:
    """An unknown non-state type is UNKNOWN with a problem; ids, sender, time and raw are kept."""
    raw = ev("org.example.poll", {"question": "Akkoord?"})
    event = norm(raw)
    assert event.kind is Kind.UNKNOWN
    assert event.problem is not None and "org.example.poll" in event.problem
    assert (event.event_id, event.sender, event.sent_at) == (raw["event_id"], raw["sender"], TS)
    assert event.raw == raw and event.content == {}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (ev("m.room.message", "text"), "content is not an object"),
        (ev("m.room.message", {"msgtype": "m.text", "body": 5}), "body is not a string"),
        (ev("m.room.message", {"body": "x"}), "msgtype is missing"),
        ({**text(), "type": 7}, "type is not a non-empty string"),
        ({**text(), "origin_server_ts": True}, "origin_server_ts"),
        ({**text(), "origin_server_ts": "1700000000000"}, "origin_server_ts"),
        ({**text(), "sender": ["@a:example.org"]}, "sender"),
        ({**text(), "room_id": 12}, "room_id"),
        ({**text(), "event_id": 12}, "event_id"),
        ({**text(), "unsigned": []}, "unsigned is not an object"),
    ],
)
def test_wrong_types_are_unknown(raw: dict[str, Any], problem: str) -> None:
    """A field of the wrong type anywhere makes the event UNKNOWN with a problem naming it."""
    event = norm(raw)
    assert event.kind is Kind.UNKNOWN
    assert event.problem is not None and problem in event.problem
    assert event.raw == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (text(**{"m.relates_to": "$x"}), "m.relates_to is not an object"),
        (text(**{"m.relates_to": {"m.in_reply_to": {"event_id": 1}}}), "m.in_reply_to.event_id is not a string"),
        (text(**{"m.mentions": ["@a:example.org"]}), "m.mentions is not an object"),
        (text(format=1), "format is not a string"),
        (ev("m.room.message", {"msgtype": "m.location", "body": "x"}), "geo_uri is missing"),
    ],
)
def test_a_bad_optional_field_is_marked_not_fatal(raw: dict[str, Any], problem: str) -> None:
    """A wrongly typed optional field leaves the message a MESSAGE with its body; the problem names the field."""
    event = norm(raw)
    assert event.kind is Kind.MESSAGE and event.content["body"] == raw["content"]["body"]
    assert event.problem == problem
    assert event.raw == raw


def test_boolean_timestamp_is_not_a_time() -> None:
    """origin_server_ts true is not an integer: sent_at is None (bool is not an int)."""
    assert norm({**text(), "origin_server_ts": True}).sent_at is None


def test_missing_event_id_gets_a_deterministic_hash_id() -> None:
    """Without event_id the id is sha256 of the canonical event, the same on every import."""
    raw = text()
    del raw["event_id"]
    first, second = norm(raw), norm(orjson.dumps(raw))
    expected = "sha256:" + hashlib.sha256(events.canonical_json(raw)).hexdigest()
    assert first.event_id == second.event_id == expected
    assert first.kind is Kind.MESSAGE and first.problem is not None and "event_id" in first.problem


def test_json_bytes_and_text_equal_the_dict() -> None:
    """The same event given as dict, JSON bytes or JSON text normalises identically."""
    raw = text()
    as_dict = norm(raw)
    assert norm(json.dumps(raw, indent=2).encode()) == as_dict
    assert norm(json.dumps(raw)) == as_dict


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"type": "m.room.message", ', "not JSON"),
        (b"\xff\xfe garbage", "not JSON"),
        (b"", "not JSON"),
        (b'["m.room.message"]', "not a JSON object"),
        (b"null", "not a JSON object"),
    ],
)
def test_bytes_that_are_not_an_object_are_kept(data: bytes, problem: str) -> None:
    """Input that is not a JSON object is UNKNOWN, kept byte for byte, with a hash id."""
    event = norm(data, room_id=ROOM)
    assert event.kind is Kind.UNKNOWN and event.problem == problem
    assert base64.b64decode(event.raw["unparsed_b64"]) == data
    assert event.event_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert event.conversation == ROOM


def test_integer_beyond_64_bits_in_bytes_is_kept_exactly() -> None:
    """A JSON integer beyond 64 bits is not rounded to a float: the line is kept as bytes, ids salvaged."""
    data = orjson.dumps(text())[:-1] + b', "x": 123456789012345678901234567890}'
    event = norm(data)
    assert event.kind is Kind.UNKNOWN
    assert base64.b64decode(event.raw["unparsed_b64"]) == data
    assert (event.event_id, event.conversation, event.sent_at) == (text()["event_id"], ROOM, TS)


def test_64_bit_integers_are_fine() -> None:
    """Integers at the 64-bit limits and long digit runs in strings do not make an event unknown."""
    raw = text("1234567890123456789012345", x=2**64 - 1, y=-(2**63))
    event = norm(orjson.dumps(raw))
    assert event.kind is Kind.MESSAGE and event.raw == raw


@pytest.mark.parametrize(
    "raw",
    [
        {**text(), "x": 2**70},
        {**text(), "x": float("nan")},
        {**text(), "x": (1, 2)},
        {**text(), "x": "\ud800"},
        {**text(), 5: "non-string key"},
    ],
    ids=["big-int", "nan", "tuple", "lone-surrogate", "int-key"],
)
def test_dict_that_canonical_json_cannot_hold_is_kept_as_bytes(raw: dict[Any, Any]) -> None:
    """A dict canonical JSON would change is UNKNOWN, kept as its stdlib JSON encoding."""
    event = norm(raw)
    assert event.kind is Kind.UNKNOWN
    assert event.event_id == text()["event_id"]
    assert base64.b64decode(event.raw["unparsed_b64"]) == json.dumps(raw).encode()


def test_text_with_a_lone_surrogate_is_kept() -> None:
    """A str input with a lone surrogate is kept as its surrogatepass UTF-8 bytes."""
    data = '{"type": "\ud800"}'
    event = norm(data)
    assert event.kind is Kind.UNKNOWN
    assert base64.b64decode(event.raw["unparsed_b64"]) == data.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("raw", [None, 42, ["a"], object()])
def test_input_of_the_wrong_python_type_does_not_raise(raw: Any) -> None:
    """Even input outside the signature becomes an UNKNOWN event instead of an exception."""
    event = norm(raw)
    assert event.kind is Kind.UNKNOWN and event.problem is not None


# --- properties -------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (9 in 10) a well-typed value, else any JSON value (a wrong type, null, NaN...)."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda i: JSON_VALUES if i == 9 else good)


def some(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {k: maybe(v) for k, v in required.items()}, optional={k: maybe(v) for k, v in optional.items()}
    )


IDISH = st.sampled_from(["$a:example.org", "$b", "@u:example.org", "!r:example.org", ""])
SHORT = st.text(max_size=8)
ENVELOPE_IDS = st.sampled_from(["$a:example.org", "$b", "@u:example.org", "!r:example.org"])
RELATION = some(
    {},
    {
        "rel_type": st.sampled_from(["m.replace", "m.thread", "m.annotation", "m.reference"]),
        "event_id": IDISH,
        "key": SHORT,
        "is_falling_back": st.booleans(),
        "m.in_reply_to": some({}, {"event_id": IDISH}),
    },
)
MESSAGE_FIELDS = {
    "msgtype": st.sampled_from(["m.text", "m.image", "m.file", "m.video", "m.location", "x.custom"]),
    "body": SHORT,
    "format": SHORT,
    "formatted_body": SHORT,
    "url": st.just("mxc://example.org/m"),
    "file": some({"url": st.just("mxc://example.org/f")}, {"key": JSON_VALUES}),
    "info": some({}, {"mimetype": SHORT, "size": st.integers(min_value=-1, max_value=2**40)}),
    "filename": SHORT,
    "geo_uri": SHORT,
    "m.mentions": st.dictionaries(SHORT, JSON_VALUES, max_size=2),
}
NEW_CONTENT = some({}, MESSAGE_FIELDS)
CONTENTS = some(
    {},
    {
        **MESSAGE_FIELDS,
        "m.relates_to": RELATION,
        "m.new_content": NEW_CONTENT,
        "membership": st.sampled_from(["join", "leave", "invite", "ban"]),
        "displayname": SHORT,
        "is_direct": st.booleans(),
        "reason": SHORT,
        "redacts": IDISH,
        "max_lifetime": st.integers(min_value=0, max_value=2**40),
        "min_lifetime": st.integers(min_value=0, max_value=2**40),
        "algorithm": st.just("m.megolm.v1.aes-sha2"),
        "session_id": SHORT,
        "sender_key": SHORT,
        "device_id": SHORT,
    },
)
UNSIGNED = some({}, {"prev_content": CONTENTS, "redacted_because": some({}, {"event_id": IDISH})})
MATRIXISH = st.builds(
    lambda etype, content, envelope: {"type": etype, "content": content, **envelope},
    maybe(
        st.sampled_from(
            [
                "m.room.message",
                "m.sticker",
                "m.reaction",
                "m.room.redaction",
                "m.room.encrypted",
                "m.room.member",
                "m.room.retention",
                "m.room.name",
            ]
        )
    ),
    maybe(CONTENTS),
    some(
        {
            "event_id": ENVELOPE_IDS,
            "sender": ENVELOPE_IDS,
            "origin_server_ts": st.integers(min_value=0, max_value=2**53),
        },
        {
            "room_id": IDISH,
            "state_key": st.sampled_from(["", "@u:example.org"]),
            "redacts": IDISH,
            "unsigned": UNSIGNED,
        },
    ),
)
ANY_DICTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6) | MATRIXISH


def check_encodes(event: Event) -> None:
    assert events.event_from_bytes(events.canonical_bytes(event)) == event
    assert not (event.problem or "").startswith("normaliser bug")


@given(ANY_DICTS)
def test_never_raises_on_dicts(raw: dict[str, Any]) -> None:
    """For any JSON-like dict (Matrix-shaped or not) normalise returns an Event that round-trips."""
    check_encodes(normalise(raw, received_at=RECEIVED))


@given(st.binary() | ANY_DICTS.map(lambda d: json.dumps(d).encode()))
def test_never_raises_on_bytes(data: bytes) -> None:
    """For any bytes (random, or JSON text of a dict) normalise returns an Event that round-trips."""
    check_encodes(normalise(data, received_at=RECEIVED))


@given(ANY_DICTS, st.none() | st.text(min_size=1, max_size=10))
def test_deterministic(raw: dict[str, Any], room_id: str | None) -> None:
    """The same input gives identical canonical bytes, as dict and as JSON bytes alike."""
    original = copy.deepcopy(raw)
    first = normalise(raw, room_id=room_id, received_at=RECEIVED)
    second = normalise(copy.deepcopy(raw), room_id=room_id, received_at=RECEIVED)
    assert events.canonical_bytes(first) == events.canonical_bytes(second)
    assert repr(raw) == repr(original)  # the input is not mutated
    if first.raw == raw:  # kept as parsed JSON: the same event as JSON bytes must agree
        from_bytes = normalise(orjson.dumps(raw), room_id=room_id, received_at=RECEIVED)
        assert events.canonical_bytes(from_bytes) == events.canonical_bytes(first)


IDS = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
BODIES = st.text(alphabet=st.characters(codec="utf-8"))


@given(IDS, IDS, IDS, BODIES, st.integers(min_value=0, max_value=2**63 - 1))
def test_text_messages_carry_fields_exactly(event_id: str, sender: str, room: str, body: str, ts: int) -> None:
    """For a valid m.text, body, sender, event_id, room and timestamp are carried exactly."""
    raw = {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": sender,
        "room_id": room,
        "origin_server_ts": ts,
        "content": {"msgtype": "m.text", "body": body},
    }
    for event in (normalise(raw, received_at=RECEIVED), normalise(orjson.dumps(raw), received_at=RECEIVED)):
        assert event.kind is Kind.MESSAGE and event.problem is None
        assert (event.event_id, event.sender, event.conversation, event.sent_at) == (event_id, sender, room, ts)
        assert event.content["body"] == body


@given(ANY_DICTS)
def test_junk_dicts_are_kept(raw: dict[str, Any]) -> None:
    """Any dict is kept: raw equals it, or (if canonical JSON cannot hold it) its JSON bytes are kept."""
    event = normalise(raw, received_at=RECEIVED)
    if "unparsed_b64" in event.raw and event.raw != raw:
        assert base64.b64decode(event.raw["unparsed_b64"]) == json.dumps(raw).encode()
    else:
        assert event.raw == raw


@given(st.binary() | ANY_DICTS.map(lambda d: json.dumps(d).encode()))
def test_junk_bytes_are_kept(data: bytes) -> None:
    """Any bytes are kept: raw is their parsed object, or unparsed_b64 decodes to them exactly."""
    event = normalise(data, received_at=RECEIVED)
    if "unparsed_b64" in event.raw and event.kind is Kind.UNKNOWN and event.problem in _UNPARSED_PROBLEMS:
        assert base64.b64decode(event.raw["unparsed_b64"]) == data
    else:
        assert event.raw == orjson.loads(data)


_UNPARSED_PROBLEMS = {
    "not JSON",
    "not a JSON object",
    "integer beyond 64 bits",
    "not representable as canonical JSON",
}


INT_MIN, UINT_MAX = -(2**63), 2**64 - 1
#: Integers on both sides of each 64-bit limit, far beyond them, and ordinary ones.
EDGE_INTS = (
    st.integers(min_value=INT_MIN - 2, max_value=INT_MIN + 1)
    | st.integers(min_value=UINT_MAX - 1, max_value=UINT_MAX + 2)
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.integers()
)
#: JSON values with such integers anywhere, next to finite floats (which orjson also parses to float).
NUMBER_TREES = st.recursive(
    EDGE_INTS | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.none() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def json_ints(value: Any) -> list[int]:
    """Every integer (not bool) anywhere in a JSON value."""
    if isinstance(value, dict):
        return [i for item in value.values() for i in json_ints(item)]
    if isinstance(value, list):
        return [i for item in value for i in json_ints(item)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


@given(st.dictionaries(st.text(max_size=8), NUMBER_TREES, max_size=4), st.booleans(), st.sampled_from([None, 1]))
def test_integers_beyond_64_bits_anywhere_keep_the_exact_bytes(
    extra: dict[str, Any], in_content: bool, indent: int | None
) -> None:
    """An integer literal outside [-2**63, 2**64-1] anywhere in a JSON line makes it UNKNOWN kept byte for byte
    (never rounded to a float); with every integer in range the parsed event is kept exactly (types and values)."""
    raw = text()
    (raw["content"] if in_content else raw).update(extra)
    data = json.dumps(raw, indent=indent).encode()
    for given_as in (data, data.decode()):
        event = normalise(given_as, received_at=RECEIVED)
        check_encodes(event)
        if any(not INT_MIN <= i <= UINT_MAX for i in json_ints(raw)):
            assert event.kind is Kind.UNKNOWN and event.problem == "integer beyond 64 bits"
            assert event.raw == {"unparsed_b64": base64.b64encode(data).decode("ascii")}
        else:
            assert json.dumps(event.raw, sort_keys=True) == json.dumps(raw, sort_keys=True)


def test_content_taken_from_the_event_is_a_copy() -> None:
    """Mentions and state content are copied into `content`: they share no object with `raw`."""
    message = norm(text(**{"m.mentions": {"user_ids": ["@a:example.org"]}}))
    state = norm(ev("m.room.name", {"name": "Kamer", "extra": {"list": [1]}}, state_key=""))
    assert message.content["mentions"] == message.raw["content"]["m.mentions"]
    assert message.content["mentions"]["user_ids"] is not message.raw["content"]["m.mentions"]["user_ids"]
    assert state.content["content"] == state.raw["content"]
    assert state.content["content"]["extra"]["list"] is not state.raw["content"]["extra"]["list"]


@pytest.mark.parametrize("depth", [150, 199, 250, 252, 253, 300, 900])
@pytest.mark.parametrize("where", ["content", "unsigned"])
def test_deeply_nested_input_always_encodes(depth: int, where: str) -> None:
    """However deep the input nests, the Event can be canonically encoded (deep input is kept as bytes)."""
    inner: object = "x"
    for _ in range(depth):
        inner = {"k": inner}
    raw = {
        "type": "m.room.name",
        "state_key": "",
        "event_id": "$deep",
        "room_id": "!r:x",
        "sender": "@a:x",
        "origin_server_ts": 1,
        "content": {"name": "n"},
    }
    raw[where] = inner if where == "unsigned" else {"name": "n", "deep": inner}
    for sample in (raw, json.dumps(raw).encode()):
        event = normalise(sample, received_at=1)
        assert event_from_bytes(canonical_bytes(event)) == event
        if depth >= 200:
            assert event.kind is Kind.UNKNOWN and "nested deeper" in (event.problem or "")


# -- duplicate keys (issue 9: import keeps the raw bytes and marks the problem) ------------------------------


def test_duplicate_key_is_kept_raw_and_marked() -> None:
    """A line whose object repeats a key (parsers disagree on which value wins) is kept as its exact bytes,
    flagged, with its ids still used; a `":` inside a string value is no false alarm."""
    line = b'{"type":"m.room.message","room_id":"!r:x","event_id":"$d","content":{"body":"ja","body":"nee"}}'
    event = normalise(line, received_at=1)
    assert event.kind is Kind.UNKNOWN and event.problem == "duplicate JSON key 'body'"
    assert (event.conversation, event.event_id) == ("!r:x", "$d")
    assert base64.b64decode(event.raw["unparsed_b64"]) == line
    spaced = b'{"type" : "m.room.message", "type" : "m.reaction", "room_id":"!r:x","event_id":"$e"}'
    assert normalise(spaced, received_at=1).problem == "duplicate JSON key 'type'"
    quoted = (
        b'{"type":"m.room.message","room_id":"!r:x","event_id":"$q","content":{"msgtype":"m.text","body":"a\\":b"}}'
    )
    assert normalise(quoted, received_at=1).kind is Kind.MESSAGE


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.integers(-5, 5) | st.text(max_size=5), min_size=1),
    st.data(),
)
def test_any_repeated_key_is_caught(content: dict[str, object], data: st.DataObject) -> None:
    """Property: writing one key of an object twice (any position, any value) is always detected."""
    key = data.draw(st.sampled_from(sorted(content)))
    items = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in content.items()]
    items.insert(data.draw(st.integers(0, len(items))), f"{json.dumps(key)}:0")
    line = ('{"type":"m.room.message","room_id":"!r:x","event_id":"$p","content":{' + ",".join(items) + "}}").encode()
    assert normalise(line, received_at=1).problem == f"duplicate JSON key {key[:60]!r}"
