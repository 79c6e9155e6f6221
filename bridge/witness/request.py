"""The `add-checkpoint` request body of tlog-witness.md (pure: bytes in, values out).

    old <size>\\n
    <base64 hash>\\n          (zero to 63 consistency proof lines)
    \\n
    <checkpoint note>

Sizes are canonical ASCII decimal (`0`, or no leading zero); each proof line is canonical standard base64
of one 32-byte hash. Anything else is `RequestError` (the witness answers 400 Bad Request).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from bridge.witness.note import NoteError

MAX_PROOF_LINES = 63
MAX_BODY = 256 * 1024  # 16+ signatures of up to ~5 kB each, as signed-note.md asks verifiers to accept
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})", re.ASCII)


class RequestError(NoteError):
    """The request body is not an add-checkpoint body (400)."""


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note: str

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}"] + [base64.b64encode(h).decode("ascii") for h in self.proof]
        return ("\n".join(lines) + "\n\n" + self.note).encode("utf-8")


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    if len(body) > MAX_BODY:
        raise RequestError(f"request body over {MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise RequestError("no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise RequestError(f"first line is not 'old <size>': {lines[0][:40]!r}")
    old = int(match.group(1))
    if old > 2**64 - 1:
        raise RequestError("old size out of range")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise RequestError(f"{len(lines) - 1} consistency proof lines, at most {MAX_PROOF_LINES}")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise RequestError(f"proof line is not base64: {line[:60]!r}") from None
        if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != line:
            raise RequestError(f"proof line is not canonical base64 of a 32-byte hash: {line[:60]!r}")
        proof.append(raw)
    return AddCheckpoint(old, tuple(proof), note)
