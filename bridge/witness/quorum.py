"""What a verifier demands: a checkpoint carries valid cosignatures from at least N of the pinned witnesses.

Pure. Each pinned witness counts once however many lines it has; lines by unknown keys are ignored; a line
that names a pinned key but does not verify is a forged cosignature and fails the check (signed-note.md:
reject the note). `QuorumError` is a `LogIntegrityError` (exit 1) naming the checkpoint's size.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.errors import Check, LogIntegrityError
from bridge.witness.note import BadSignature, NoteSignature, Verifier, parse_checkpoint, verified_signatures


class QuorumError(LogIntegrityError):
    """Too few valid cosignatures on a checkpoint the verifier relies on."""


def check_quorum(
    text: str, signatures: Sequence[NoteSignature], witnesses: Sequence[Verifier], quorum: int, *, where: str = ""
) -> list[str]:
    """The names of the pinned witnesses whose cosignature over `text` verifies; raises QuorumError below `quorum`."""
    cp = parse_checkpoint(text)
    label = f"checkpoint at tree size {cp.size}{where}"
    try:
        good = verified_signatures(text, list(signatures), list(witnesses))
    except BadSignature as exc:
        raise QuorumError(cp.size, f"{label}: a cosignature is forged ({exc})", check=Check.WITNESS) from None
    names = sorted({v.vkey for v, _ in good})
    if len(names) < quorum:
        raise QuorumError(
            cp.size,
            f"{label} has {len(names)} valid witness cosignature(s), the quorum is {quorum}",
            quorum,
            len(names),
            check=Check.WITNESS,
        )
    return [name.split("+", 1)[0] for name in names]
