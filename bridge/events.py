"""The normalised Event and its canonical encoding.

Every captured thing (message, edit, deletion, reaction, attachment, membership or
state change, an undecryptable or unparseable event) becomes one frozen `Event`.
`canonical_bytes(event)` is the deterministic encoding that the log encrypts and
commits to: the same event always gives the same bytes (sorted keys, no
whitespace, UTF-8), so the same event always hashes the same.

Contract: `content` and `raw` hold JSON values only (dict/list/str/int/bool/None;
floats are allowed but Matrix forbids them in canonical JSON, so normalisers
avoid producing them). `event_from_bytes(canonical_bytes(e)) == e`.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from typing import Any, NewType

import orjson

from bridge.errors import DataError

SourceName = NewType("SourceName", str)
ConversationId = NewType("ConversationId", str)
EventId = NewType("EventId", str)
SenderId = NewType("SenderId", str)

MATRIX = SourceName("matrix")
SIGNAL = SourceName("signal")

JSONDict = dict[str, Any]

#: Version of the canonical encoding; bump when a field is added or changes meaning.
ENCODING_VERSION = 1
#: `content["notice"]` of the notice questioning an event that came only through the Synapse module's spool
#: (`bridge.sources.matrix.confirm`); transcripts mark the event it names.
SPOOL_UNCONFIRMED = "spool_event_unconfirmed"


class Kind(enum.StrEnum):
    """What an event is, independent of the chat protocol."""

    MESSAGE = "message"
    EDIT = "edit"
    DELETION = "deletion"
    REACTION = "reaction"
    ATTACHMENT = "attachment"
    MEMBERSHIP = "membership"
    STATE = "state"
    RETENTION_CHANGE = "retention_change"
    #: A poll: its start (question, answers), a vote, or its end; votes and ends relate to the start.
    #: content["poll"] = {"action": "start", "question": str, "answers": [{"id": str, "text": str}],
    #: "max_selections": int, "disclosed": bool} | {"action": "vote", "answers": [answer ids]} |
    #: {"action": "end", "text": str | None}; relates_to = the start's event id for "vote" and "end".
    POLL = "poll"
    UNDECRYPTABLE = "undecryptable"
    UNKNOWN = "unknown"
    #: Written by the archiver itself, not by a chat participant: a capture gap, an
    #: outage, a disconnection. Kept in the log so the archive shows what it may miss.
    NOTICE = "notice"


_KINDS: dict[str, Kind] = {k.value: k for k in Kind}


class EncodingError(DataError, ValueError):
    """Bytes that are not a canonical event encoding (local bug or tampering)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A media item referenced by an event.

    `status` says what happened to the bytes: "stored" (in the blob store under
    `blob_id`, plaintext `sha256` and `size` known), "pending" (not fetched yet,
    e.g. a normaliser only saw the reference), "oversized" (larger than the
    configured limit: recorded, not fetched), "failed" (fetch/decrypt failed; the
    reason is in `error`).
    """

    status: str
    media_type: str | None = None
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None
    blob_id: str | None = None
    url: str | None = None
    error: str | None = None

    def to_json(self) -> JSONDict:
        return {
            "blob_id": self.blob_id,
            "error": self.error,
            "filename": self.filename,
            "media_type": self.media_type,
            "sha256": self.sha256,
            "size": self.size,
            "status": self.status,
            "url": self.url,
        }

    @classmethod
    def from_json(cls, d: JSONDict) -> Attachment:
        return cls(
            status=str(d["status"]),
            media_type=d.get("media_type"),
            filename=d.get("filename"),
            size=d.get("size"),
            sha256=d.get("sha256"),
            blob_id=d.get("blob_id"),
            url=d.get("url"),
            error=d.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One captured thing, normalised.

    `(source, conversation, event_id)` is the idempotency key: capturing the same
    upstream event twice stores it once. `sent_at` and `received_at` are integer
    milliseconds since the Unix epoch (UTC). `raw` is the full original event as
    received (decrypted where possible); for input that was not even JSON it is
    `{"unparsed_b64": "..."}`.
    """

    source: SourceName
    conversation: ConversationId
    event_id: EventId
    kind: Kind
    sender: SenderId | None
    sent_at: int | None
    received_at: int
    content: JSONDict = field(default_factory=dict)
    relates_to: EventId | None = None
    attachments: tuple[Attachment, ...] = ()
    raw: JSONDict = field(default_factory=dict)
    #: Why an event is `unknown`/flagged (parse error text), else None.
    problem: str | None = None

    def __post_init__(self) -> None:
        if not self.source or not self.conversation or not self.event_id:
            raise ValueError("source, conversation and event_id must be non-empty")
        if not isinstance(self.kind, Kind):
            raise TypeError(f"kind must be a Kind, got {self.kind!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        """The idempotency key."""
        return (self.source, self.conversation, self.event_id)

    def to_json(self) -> JSONDict:
        return {
            "v": ENCODING_VERSION,
            "attachments": [a.to_json() for a in self.attachments],
            "content": self.content,
            "conversation": self.conversation,
            "event_id": self.event_id,
            "kind": self.kind.value,
            "problem": self.problem,
            "raw": self.raw,
            "received_at": self.received_at,
            "relates_to": self.relates_to,
            "sender": self.sender,
            "sent_at": self.sent_at,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: JSONDict) -> Event:
        if d.get("v") != ENCODING_VERSION:
            raise EncodingError(f"unsupported event encoding version {d.get('v')!r}")
        try:
            # The NewTypes are the identity at run time, so the values go in as they are; a kind is looked up
            # in a dict (an enum call costs more than the rest of this together), and anything but a known
            # kind's text gets the enum's own error. An archive run decodes every event more than once.
            raw_kind = d["kind"]
            kind = _KINDS.get(raw_kind) if type(raw_kind) is str else None
            atts = d["attachments"]
            return cls(
                source=d["source"],
                conversation=d["conversation"],
                event_id=d["event_id"],
                kind=Kind(raw_kind) if kind is None else kind,
                sender=d["sender"],
                sent_at=d["sent_at"],
                received_at=d["received_at"],
                content=d["content"],
                relates_to=d["relates_to"],
                attachments=() if atts == [] else tuple(Attachment.from_json(a) for a in atts),
                raw=d["raw"],
                problem=d["problem"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EncodingError(f"not an event encoding: {exc}") from exc


def notice(source: SourceName, conversation: ConversationId, event_id: str, at_ms: int, content: JSONDict) -> Event:
    """A record the archiver adds itself (heartbeats, capture gaps, upgrade links): `Kind.NOTICE`, no sender,
    sent and received at `at_ms`; `content["notice"]` names what it is."""
    return Event(
        source=source,
        conversation=conversation,
        event_id=EventId(event_id),
        kind=Kind.NOTICE,
        sender=None,
        sent_at=at_ms,
        received_at=at_ms,
        content=content,
    )


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8, no NaN.

    orjson is deterministic for a given value with OPT_SORT_KEYS. Values orjson
    refuses (integers beyond 64 bits, lone surrogates) raise EncodingError; the
    normalisers never put such values in an Event (they keep such input as
    base64 in `raw`).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise EncodingError(f"value cannot be canonically encoded: {exc}") from exc


def canonical_bytes(event: Event) -> bytes:
    """The canonical encoding of an event (what the log stores, encrypted)."""
    return canonical_json(event.to_json())


def event_from_bytes(data: bytes) -> Event:
    """Inverse of `canonical_bytes`."""
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EncodingError(f"event bytes are not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise EncodingError("event bytes are not a JSON object")
    return Event.from_json(d)


def unparsed_raw(data: bytes) -> JSONDict:
    """`raw` for input that is not a JSON object: its exact bytes, base64."""
    return {"unparsed_b64": base64.b64encode(data).decode("ascii")}


def json_safe(value: Any) -> bool:
    """True if `value` can be canonically encoded (used to guard hostile input)."""
    try:
        orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return False
    return True
