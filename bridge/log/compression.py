"""Per-record compression of an encrypted record's payload (record format version 2; see docs/log-format.md).

A version-2 record encrypts `salt || zstd frame of the payload` instead of `salt || payload`; its commitment
is still SHA-256(salt || payload), of the payload itself, so a package (which holds the payload) and an
auditor recompute it as before. Each payload is compressed alone, with one fixed dictionary, `DICTIONARY_V2`,
that holds only the structure of the events the code writes: field names and fixed values of the canonical
event encoding and of the Matrix and Signal shapes it keeps as `raw`. It holds no chat content, so a
record's compressed length depends on its own bytes only, never on what other records say (see the docs for
why that leaks nothing a reader of record sizes could use). The dictionary is part of format version 2:
changing one byte of it makes every version-2 record unreadable, so a new dictionary needs a new version
(a test pins its SHA-256).

Decompression is bounded: a frame must state its content size, at most `MAX_PAYLOAD` bytes, and hold
nothing after the frame; anything else is a `DecompressionError`. The writer stores a payload larger than
`MAX_PAYLOAD` uncompressed (version 1), so no payload it accepts is ever refused here.
"""

from __future__ import annotations

import threading

import zstandard

from bridge.errors import DataError

#: The largest payload a version-2 record may decompress to (a larger one is stored as version 1).
MAX_PAYLOAD = 64 << 20
LEVEL = 3

# Field names and fixed values only (from the event encoding in bridge/events.py and the Matrix and Signal
# shapes of the specs and tests/fixtures/*), never message text. zstd finds a match sooner at the end of a
# raw-content dictionary, so the most common shape, a canonical Matrix text message, comes last.
#: Format version 2's dictionary (raw content). Frozen: see the module docstring.
DICTIONARY_V2 = (
    # Signal (signal-cli JSON-RPC envelopes kept as raw)
    b'{"account":"+","envelope":{"dataMessage":{"expiresInSeconds":0,"groupInfo":{"groupId":"","groupName":"",'
    b'"revision":0,"type":"DELIVER"},"message":"","timestamp":1,"viewOnce":false},"serverDeliveredTimestamp":1,'
    b'"serverReceivedTimestamp":1,"source":"+","sourceDevice":1,"sourceName":"","sourceNumber":"+","sourceUuid":"",'
    b'"syncMessage":{"sentMessage":{"destination":"+","destinationNumber":"+","destinationUuid":"",'
    b'"expiresInSeconds":0,"message":"","timestamp":1,"viewOnce":false}},"timestamp":1}}'
    b'"attachments":[{"contentType":"image/jpeg","filename":"","id":"","size":0}],"quote":{"author":"",'
    b'"authorNumber":"+","authorUuid":"","id":1,"text":""},"reaction":{"emoji":"","isRemove":false,'
    b'"targetAuthor":"","targetAuthorNumber":"+","targetAuthorUuid":"","targetSentTimestamp":1},'
    b'"remoteDelete":{"timestamp":1},"editMessage":{"dataMessage":{"message":""},"targetSentTimestamp":1},'
    b'"receiptMessage":{"isDelivery":true,"isRead":false,"timestamps":[1]},"typingMessage":{"action":"STARTED"}'
    b'"source":"signal"'
    # Matrix event shapes (client-server API)
    b'"content":{"displayname":"","membership":"join","avatar_url":"mxc://"},"state_key":"@:","type":"m.room.member"'
    b'"membership":"leave""membership":"invite""type":"m.room.redaction","redacts":"$"'
    b'"type":"m.room.encrypted","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"","device_id":"",'
    b'"sender_key":"","session_id":""}"type":"m.room.name""type":"m.room.topic""type":"m.room.create"'
    b'"type":"m.room.retention","content":{"max_lifetime":0}"type":"m.reaction","content":{"m.relates_to":'
    b'{"event_id":"$","key":"","rel_type":"m.annotation"}}"m.new_content":{"body":"","msgtype":"m.text"},'
    b'"m.relates_to":{"event_id":"$","rel_type":"m.replace"}"m.relates_to":{"m.in_reply_to":{"event_id":"$"}}'
    b'"format":"org.matrix.custom.html","formatted_body":"<p></p>""msgtype":"m.notice""msgtype":"m.emote"'
    b'"msgtype":"m.image","info":{"h":0,"mimetype":"image/png","size":0,"w":0},"url":"mxc://"'
    b'"msgtype":"m.file","filename":"","info":{"mimetype":"application/pdf","size":0},"url":"mxc://"'
    b'"kind":"edit""kind":"deletion""kind":"reaction""kind":"attachment""kind":"membership""kind":"state"'
    b'"kind":"retention_change""kind":"poll""kind":"undecryptable""kind":"unknown""kind":"notice"'
    b'"attachments":[{"blob_id":"","error":null,"filename":"","media_type":"image/jpeg","sha256":"","size":0,'
    b'"status":"stored","url":"mxc://"}]'
    b'"unsigned":{"age":1,"transaction_id":""}'
    # the canonical encoding of a Matrix text message (bridge/events.py: sorted keys, no spaces)
    b'{"attachments":[],"content":{"body":"","msgtype":"m.text"},"conversation":"!:","event_id":"$",'
    b'"kind":"message","problem":null,"raw":{"content":{"body":"","msgtype":"m.text"},"event_id":"$",'
    b'"origin_server_ts":1,"room_id":"!:","sender":"@:","type":"m.room.message","unsigned":{"age":1}},'
    b'"received_at":1,"relates_to":null,"sender":"@:","sent_at":1,"source":"matrix","v":1}'
)

_DICT = zstandard.ZstdCompressionDict(DICTIONARY_V2, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DICT.precompute_compress(level=LEVEL)  # digested once, not per record (same frames; ~15% cheaper per call)


class DecompressionError(DataError, ValueError):
    """A version-2 record's plaintext that is not one bounded zstd frame of this format."""


class _Codec(threading.local):
    """One compression and one decompression context per thread (a zstandard context is not thread-safe)."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=_DICT, write_checksum=False, write_content_size=True, write_dict_id=False
        )
        self.decompressor = zstandard.ZstdDecompressor(dict_data=_DICT)


_codec = _Codec()


def compressor() -> zstandard.ZstdCompressor:
    """This thread's compression context, for a loop over many payloads (`format.prepare_plaintexts`): its
    `compress(payload)` is `compress`'s frame for a payload of at most `MAX_PAYLOAD` bytes."""
    return _codec.compressor


def compress(payload: bytes) -> bytes:
    """One zstd frame of `payload` (at most `MAX_PAYLOAD` bytes), with its content size in the frame header."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a payload of {len(payload)} bytes is stored uncompressed (limit {MAX_PAYLOAD})")
    return _codec.compressor.compress(payload)


def decompress(frame: bytes) -> bytes:
    """The payload of one frame made by `compress`; raises DecompressionError for anything else, before
    allocating more than `MAX_PAYLOAD` bytes."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise DecompressionError("compressed payload is not a zstd frame") from None
    if size < 0:
        raise DecompressionError("compressed payload does not state its size")
    if size > MAX_PAYLOAD:
        raise DecompressionError(f"compressed payload claims {size} bytes, more than the limit of {MAX_PAYLOAD}")
    try:
        payload = _codec.decompressor.decompress(frame, max_output_size=MAX_PAYLOAD, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"compressed payload does not decompress: {exc}") from None
    if len(payload) != size:  # zstd checks this; a second look costs nothing
        raise DecompressionError("compressed payload is not the size its frame states")
    return payload
