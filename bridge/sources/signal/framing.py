"""Framing of signal-cli's wire formats, without I/O: lines, Server-Sent Events, JSON-RPC.

Contract (pure; bytes in, values out; never raises on input):

* `LineSplitter(max_bytes).feed(chunk)` returns the complete lines in `chunk`
  (newline-delimited JSON-RPC, as signal-cli writes on its unix socket and
  TCP port; a trailing CR is dropped, blank lines skipped unless `keep_blank`). A line longer than
  `max_bytes` is not buffered: it comes out as `Oversized(size, head)` with
  its first `HEAD_BYTES`, so memory stays bounded and the record still exists.
* `SseParser.feed(line)` turns the lines of `GET /api/v1/events` into
  `SseEvent(id, event, data)` at each blank line (WHATWG rules: `:` comments
  such as signal-cli's keep-alive are ignored, one optional space after the
  colon is dropped, several `data:` lines join with a newline).
* `classify(line)` tells a JSON-RPC response (`Response`, matched to our
  request by id) from everything else, which is for the normaliser (a
  `receive` notification, or junk it keeps as UNKNOWN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: How much of an oversized line is kept.
HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line (or SSE data, or frame) longer than the limit: its size and first bytes."""

    size: int
    head: bytes


class LineSplitter:
    """Splits a byte stream into lines of at most `max_bytes` (see module docstring)."""

    def __init__(self, max_bytes: int, *, keep_blank: bool = False) -> None:
        self._max = max_bytes
        self._keep_blank = keep_blank  # SSE: a blank line ends an event
        self._buf = bytearray()
        self._skipping: tuple[bytes, int] | None = None  # (head, size so far) of an oversized line

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            self._take(piece)
            if newline < 0:
                return out
            if self._skipping is not None:
                head, size = self._skipping
                out.append(Oversized(size, head))
                self._skipping = None
            else:
                line = bytes(self._buf).rstrip(b"\r")
                if self._keep_blank or line.strip():
                    out.append(line)
            self._buf.clear()
            start = newline + 1

    def _take(self, piece: bytes) -> None:
        if self._skipping is not None:
            head, size = self._skipping
            if len(head) < HEAD_BYTES:
                head += piece[: HEAD_BYTES - len(head)]
            self._skipping = (head, size + len(piece))
        elif len(self._buf) + len(piece) > self._max:
            head = (bytes(self._buf[:HEAD_BYTES]) + piece[:HEAD_BYTES])[:HEAD_BYTES]
            self._skipping = (head, len(self._buf) + len(piece))
            self._buf.clear()
        else:
            self._buf += piece

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (0 between lines)."""
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str | None
    event: str | None
    data: bytes | Oversized


class SseParser:
    """Server-Sent Events from lines (see module docstring)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[bytes] = []
        self._oversized: Oversized | None = None
        #: The last event id seen (SSE's `Last-Event-ID`), kept across events as the spec says.
        self.last_id: str | None = None

    def feed(self, line: bytes | Oversized) -> SseEvent | None:
        if isinstance(line, Oversized):
            self._oversized = line
            return None
        if line == b"":
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SseEvent | None:
        if self._id is not None:
            self.last_id = self._id
        data: bytes | Oversized | None = self._oversized
        if data is None and self._data:
            data = b"\n".join(self._data)
        event = None if data is None else SseEvent(self._id, self._event, data)
        self._id, self._event, self._data, self._oversized = None, None, [], None
        return event


@dataclass(frozen=True, slots=True)
class Response:
    """A JSON-RPC response: `id`, and `result` or `error` (a dict with code and message)."""

    id: Any
    result: Any
    error: dict[str, Any] | None


def classify(line: bytes) -> Response | None:
    """A JSON-RPC response, or None for anything else (a notification, or junk for the normaliser)."""
    if b'"id"' not in line:  # notifications carry no id; avoids parsing them twice
        return None
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or "method" in message or ("result" not in message and "error" not in message):
        return None
    error = message.get("error")
    return Response(message.get("id"), message.get("result"), error if isinstance(error, dict) else None)


def request(request_id: int, method: str, params: dict[str, Any] | None) -> bytes:
    """One JSON-RPC 2.0 request as a line."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params:
        body["params"] = params
    return orjson.dumps(body) + b"\n"
