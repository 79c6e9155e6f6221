"""Wire framing for signal-cli: newline-delimited JSON-RPC, Server-Sent Events, responses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.sources.signal.framing import HEAD_BYTES, LineSplitter, Oversized, SseEvent, SseParser, classify, request


def test_lines_split_across_chunks() -> None:
    """Lines arrive whole however the stream is chunked; CR is dropped and blank lines skipped."""
    splitter = LineSplitter(100)
    assert splitter.feed(b'{"a":1}\r\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\n\n") == [b'{"b":2}']
    assert splitter.pending == 0


@given(st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b and b.strip()), max_size=8),
       st.integers(1, 17))  # fmt: skip
def test_any_chunking_gives_the_same_lines(lines: list[bytes], size: int) -> None:
    """Chunk boundaries never change the lines."""
    stream = b"".join(line.rstrip(b"\r") + b"\n" for line in lines)
    splitter = LineSplitter(1000)
    out = [x for i in range(0, len(stream), size) for x in splitter.feed(stream[i : i + size])]
    assert out == [line.rstrip(b"\r") for line in lines if line.rstrip(b"\r").strip()]


def test_oversized_line_is_not_buffered() -> None:
    """A line past the limit comes out as Oversized(size, head) and the next line is intact."""
    splitter = LineSplitter(1000)
    huge = b"x" * (HEAD_BYTES * 3)
    out = [x for i in range(0, len(huge), 4096) for x in splitter.feed(huge[i : i + 4096])]
    out += splitter.feed(b"\nnext\n")
    assert out == [Oversized(len(huge), huge[:HEAD_BYTES]), b"next"]


def test_sse_events_and_keepalives() -> None:
    """`:` keep-alives are ignored, id/event/data are read, several data lines join, a blank line dispatches."""
    parser = SseParser()
    lines = [b":", b"id:1-1", b"event:receive", b'data:{"a":', b"data: 1}", b"", b":", b""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert events == [SseEvent("1-1", "receive", b'{"a":\n1}')]
    assert parser.last_id == "1-1"


def test_classify_tells_responses_from_notifications() -> None:
    """Responses are matched by id; notifications and junk go to the normaliser."""
    response = classify(b'{"jsonrpc":"2.0","result":0,"id":3}')
    assert response is not None and (response.id, response.result, response.error) == (3, 0, None)
    error = classify(b'{"jsonrpc":"2.0","error":{"code":-1,"message":"no"},"id":4}')
    assert error is not None and error.error == {"code": -1, "message": "no"}
    assert classify(b'{"jsonrpc":"2.0","method":"receive","params":{"envelope":{"id":1}}}') is None
    assert classify(b'{"id": 1, broken') is None
    assert request(5, "subscribeReceive", None) == b'{"jsonrpc":"2.0","id":5,"method":"subscribeReceive"}\n'
