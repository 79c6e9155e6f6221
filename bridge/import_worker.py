"""The pure stage of `chatarchief import` in a worker process: lines in, presealed batches out.

This module is the worker's side (and what both sides share: `cut`, `preseal`, the frames); the writer's
side, which starts the workers and reads their frames, is `bridge.import_pool` (its docstring has the
whole protocol: who preseals which batch, secrets, failure).

Contract. `serve(config)` runs in a `python -I` process the pool started, with its config from its stdin
pipe (the input's path, the index key, the source, the batch size, its index among `count` workers and the
`head` batches the writer keeps). It reads the whole input file itself, cuts it into the same batches as
the in-process import (`cut`), and for batch k >= head with k % count == index, normalises each line,
encodes it canonically and computes what does not depend on the record's place in the log (`preseal`): the
dedup and conversation tags (keyed with the index key) and `format.prepare_plaintext` (fresh salt,
commitment, zstd frame). It writes one frame per batch on stdout, in file order, and ends with an "end" frame.

Frames on the pipe are `marshal`ed tuples of str, bytes and int (marshal builds no objects but those and
runs no code on load, unlike pickle), each behind an 8-byte length: ("batch", bytes read at the cut,
full?, unknown, conversations, event ids, tags, conversation tags, versions, commitments, plaintexts),
("split", the same fields, then the batch's last lines raw) for a batch whose last lines the writer asked
for, ("lines", bytes read at the cut, full?, lines) for a batch it asked for whole, ("end", lines, blank
lines, bytes read) or ("error", message) for an input it cannot read. The writer's stdin pipe carries the
config frame (8-byte length, then `marshal`ed), then one byte per request ("leave `share` more lines of your
next batch raw", the config's `share`; read between batches without blocking: `_Requests`).

This module's top level imports only what a worker needs (the writer's modules pull in psycopg and the
Matrix package matrix-nio, ~0.3-0.9 s of start-up): see `pure_encoder`.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bridge.clock import now_ms
from bridge.errors import UsageError
from bridge.log import crypto, format

#: One line's (conversation, event id, canonical payload, unknown?) (`bridge.sources.matrix.fast.encode_line`).
Encoder = Callable[[bytes, int], tuple[str, str, bytes, bool]]
#: Lines encoded or presealed on an event loop between two yields to it (the importer in process, the
#: writer's own share of the presealing: `importer._encode_yielding`, `import_pool.preseal_yielding`).
YIELD_EVERY = 256
#: Bytes of a frame's length prefix (big-endian), on both pipes.
LENGTH_BYTES = 8
#: The input's read buffer (`cut`): with the default 8 KiB a 10^6-line file took 71k read(2) calls and
#: 0.24-0.62 s to read line by line on this machine, with 1 MiB 0.14 s.
READ_BUFFER = 1 << 20
#: The dedup tag's length (`crypto.keyed_tag`'s default, as `schema.dedup_tag` makes it).
_TAG_LENGTH = 16


@dataclass
class Tally:
    """What `cut` has read so far."""

    lines: int = 0
    blank: int = 0
    read: int = 0


def cut(path: Path, size: int, tally: Tally) -> Iterator[list[bytes]]:
    """The non-blank lines of `path` in batches of `size` (the last may be shorter); `tally` holds the
    counts and the bytes read up to the end of the batch just yielded. UsageError if the file cannot be read."""
    try:
        fh = path.open("rb", buffering=READ_BUFFER)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    batch: list[bytes] = []
    read, blank = tally.read, tally.blank
    with fh:
        for line in fh:
            read += len(line)
            if line.isspace():  # `not line.strip()`: the same ASCII whitespace, without copying the line
                blank += 1
                continue
            batch.append(line)
            if len(batch) >= size:
                tally.read, tally.blank, tally.lines = read, blank, tally.lines + len(batch)
                yield batch
                batch = []
    tally.read, tally.blank, tally.lines = read, blank, tally.lines + len(batch)
    if batch:
        yield batch


def preseal(
    encode: Encoder, lines: list[bytes], received: int, index_key: bytes, source: str, conv_tags: dict[str, bytes]
) -> tuple[int, list[str], list[str], list[bytes], list[bytes], bytes, list[bytes], list[bytes]]:
    """(unknown, conversations, event ids, tags, conversation tags, versions, commitments, plaintexts) of a
    batch: the pure work of the import, as `importer.encode_batch` then `LogStore._prepare`/`_seal_all` do
    it in process. `conv_tags` caches conversation tags across batches. The tags are
    `schema.dedup_tag`/`schema.conversation_tag` (a test pins it; `schema` pulls in psycopg)."""
    unknown = 0
    convs: list[str] = []
    ids: list[str] = []
    payloads: list[bytes] = []
    tags: list[bytes] = []
    ctags: list[bytes] = []
    keyed_tag = crypto.keyed_tag
    # `keyed_tag(index_key, "event", source, conversation, event_id)`, its constant parts hashed once per batch
    event_tag = crypto.keyed_tag_prefix(index_key, "event", source, length=_TAG_LENGTH)
    for line in lines:
        conversation, event_id, payload, is_unknown = encode(line.rstrip(b"\r\n"), received)
        unknown += is_unknown
        ctag = conv_tags.get(conversation)
        if ctag is None:
            if len(conv_tags) > 100_000:
                conv_tags.clear()
            ctag = conv_tags[conversation] = keyed_tag(index_key, "conversation", source, conversation)
        convs.append(conversation)
        ids.append(event_id)
        payloads.append(payload)
        tag = event_tag.copy()
        tag.update(f"{conversation}\x00{event_id}".encode("utf-8", "surrogatepass"))
        tags.append(tag.digest())
        ctags.append(ctag)
    versions, commits, plaintexts = format.prepare_plaintexts(os.urandom(crypto.SALT_BYTES * len(lines)), payloads)
    return unknown, convs, ids, tags, ctags, versions, commits, plaintexts


# -- the worker process --------------------------------------------------------


def pure_encoder() -> Encoder:
    """`encode_line` without importing `bridge.sources.matrix`'s package module, which imports the
    matrix-nio client (0.3-0.9 s here; the worker needs only the pure normaliser). The package is
    registered bare (its path, no `__init__` run): its submodules import as usual."""
    name = "bridge.sources.matrix"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            package = types.ModuleType(name)
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            sys.modules[name] = package
    from bridge.sources.matrix.fast import encode_line

    return encode_line


def _write(out: IO[bytes], frame: tuple[Any, ...]) -> None:
    data = marshal.dumps(frame)
    out.write(len(data).to_bytes(LENGTH_BYTES, "big"))
    out.write(data)


def serve(config: dict[str, Any]) -> int:
    """The worker's main: `config` from the parent's pipe (file, index_key, source, batch, index, count)."""
    out = os.fdopen(os.dup(1), "wb")  # the frames' pipe; fd 1 becomes stderr so a stray print cannot corrupt it
    os.dup2(2, 1)
    encode = pure_encoder()
    path, index_key, source = Path(config["file"]), bytes(config["index_key"]), str(config["source"])
    size, index, count = int(config["batch"]), int(config["index"]), int(config["count"])
    head = int(config.get("head", 0))
    share = int(config.get("share", size))
    tally, conv_tags, requests = Tally(), dict[str, bytes](), _Requests(0)
    try:
        with out:
            try:
                for k, lines in enumerate(cut(path, size, tally)):
                    if k < head or k % count != index:
                        continue
                    full = len(lines) >= size
                    raw = requests.take(len(lines), share)  # the writer is waiting: it preseals these itself
                    if raw >= len(lines):
                        _write(out, ("lines", tally.read, full, lines))
                        continue
                    columns = preseal(encode, lines[: len(lines) - raw], now_ms(), index_key, source, conv_tags)
                    if raw:
                        _write(out, ("split", tally.read, full, *columns, lines[len(lines) - raw :]))
                    else:
                        _write(out, ("batch", tally.read, full, *columns))
            except UsageError as exc:
                _write(out, ("error", str(exc)))
                return 2
            _write(out, ("end", tally.lines, tally.blank, tally.read))
    except BrokenPipeError:  # the parent is gone or stopped reading: nothing to report to
        return 1
    return 0


class _Requests:
    """The writer's requests on the worker's stdin (one byte each), read without blocking between batches."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._pending = 0
        os.set_blocking(fd, False)

    def take(self, lines: int, share: int) -> int:
        """How many of the last of a batch's `lines` to send raw: `share` per request the writer has made and
        this batch can use (the requests it uses are spent), 0 if none is pending."""
        while self._fd is not None:
            try:
                got = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not got:  # the writer closed the pipe: no more requests
                self._fd = None
                break
            self._pending += len(got)
        used = min(self._pending, -(-lines // share))
        self._pending -= used
        return min(lines, used * share)
