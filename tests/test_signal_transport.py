"""The Signal transport's attachment decoding (bridge/sources/signal/transport.py)."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.sources.signal import transport
from bridge.sources.signal.transport import b64decode_chunked


@given(st.binary(max_size=200), st.sampled_from([4, 8, 12]))
def test_chunked_decode_equals_one_strict_decode(data: bytes, chunk: int) -> None:
    """Decoding in pieces gives the bytes of one strict decode, for any data and piece size."""
    transport.B64_CHUNK, saved = chunk, transport.B64_CHUNK
    try:
        assert b64decode_chunked(base64.b64encode(data).decode()) == data
    finally:
        transport.B64_CHUNK = saved


@pytest.mark.parametrize("text", ["AAA=AAAA", "AAAAAAA", "AAAA AAA", "AAAA*AAA", "AAAAAAAAAAA="[:-1]])
def test_chunked_decode_refuses_what_a_strict_decode_refuses(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding before the end (at a piece boundary too), a length not a multiple of 4 and characters outside
    the alphabet are refused as by `b64decode(validate=True)`."""
    monkeypatch.setattr(transport, "B64_CHUNK", 4)
    with pytest.raises((binascii.Error, ValueError)):
        base64.b64decode(text, validate=True)
    with pytest.raises((binascii.Error, ValueError)):
        b64decode_chunked(text)


def test_a_large_attachment_decodes_in_pieces() -> None:
    """A payload longer than one piece (B64_CHUNK) decodes to the original bytes."""
    data = bytes(range(256)) * (transport.B64_CHUNK // 256 + 7)
    assert b64decode_chunked(base64.b64encode(data).decode()) == data
