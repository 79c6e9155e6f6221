"""`proof/witnessed.json`: checkpoints of the log that witnesses cosigned, each shown to extend the package.

A month-end checkpoint is signed after the log has grown past it (`seal_prefix`), so no witness can cosign
it (tlog-witness refuses anything smaller than what it cosigned). What the package carries instead, per
witness that cosigned the log at or after the package's end, is the smallest such checkpoint: its note
(log signature + every stored cosignature over it) and an RFC 9162 consistency proof from the package's
end checkpoint to it. A verifier who pins witness keys then knows the package's records are in the history
those witnesses saw: a key holder who rewrote the month cannot make a cosigned checkpoint extend it.

    {"end": <package end>, "witnessed": [{"checkpoint": "<note>", "consistency": ["<base64>", ...]}, ...]}

Entries are sorted by size then note, so the file is a function of the log and its cosignature store: a
witness only ever cosigns larger sizes, so the smallest cosigned size at or after `end` never changes once
it exists. The file is absent when nothing is cosigned at or after the end (no [witness] configured);
`verify-package --witness-key` then fails, plain `verify-package` does not need it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.errors import DataError
from bridge.log import checkpoint, merkle
from bridge.log.rotation import KeyChain
from bridge.log.view import LogView
from bridge.witness.cosigned import CosignatureStore
from bridge.witness.note import BadSignature, NoteError, Verifier, split_note, verified_signatures

FILE = "proof/witnessed.json"


def witnessed_json(view: LogView, data_dir: Path, end: int) -> bytes | None:
    """The file's bytes for a package ending at `end`, or None when no cosigned checkpoint reaches it."""
    store = CosignatureStore(data_dir, readonly=True)
    try:
        rows = store.rows_from(end)
        chosen: dict[str, tuple[int, str]] = {}
        for size, witness, text in rows:  # ordered by size: the first per witness is its smallest
            chosen.setdefault(witness, (size, text))
        entries: list[tuple[int, str, list[bytes]]] = []
        for size, text in sorted(set(chosen.values())):
            note = view.note_at(size)
            if note is None or split_note(note)[0] != text:
                continue  # cosigned text is not this log's stored checkpoint: nothing to carry
            leaves = [leaf for _, leaf in view.leaves(0, size)]
            cp = checkpoint.parse_checkpoint_body(text)
            if merkle.root(leaves) != cp.root:
                continue
            entries.append((size, store.cosigned_note(note), merkle.consistency_proof(leaves, end)))
    finally:
        store.close()
    if not entries:
        return None
    doc = {
        "end": end,
        "witnessed": [
            {"checkpoint": note, "consistency": [base64.b64encode(h).decode("ascii") for h in proof]}
            for _, note, proof in entries
        ],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def witnessed_notes(data: bytes | None) -> list[str]:
    """The checkpoint notes the file (as `witnessed_json` wrote it) carries."""
    return [] if data is None else [str(e["checkpoint"]) for e in orjson.loads(data)["witnessed"]]


class WitnessedError(DataError, ValueError):
    """proof/witnessed.json does not show what it claims; the message says which entry and why."""


def check_witnessed(
    data: bytes | None,
    public_key: tuple[str, Ed25519PublicKey] | KeyChain,
    end: int,
    end_root: bytes,
    witnesses: Sequence[Verifier],
) -> tuple[int | None, list[str]]:
    """(size of the smallest carried checkpoint, names of the pinned witnesses that cosigned a checkpoint
    extending the end). Every entry must be log-signed and extend the end; a forged cosignature by a pinned
    key fails. Raises WitnessedError."""
    if data is None:
        return None, []
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WitnessedError(f"{FILE} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("end") != end or not isinstance(doc.get("witnessed"), list):
        raise WitnessedError(f"{FILE} must hold end = {end} and a list 'witnessed'")
    names: set[str] = set()
    smallest: int | None = None
    chain = public_key if isinstance(public_key, KeyChain) else KeyChain(public_key)
    for i, entry in enumerate(doc["witnessed"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("checkpoint"), str):
            raise WitnessedError(f"{FILE} entry {i}: no checkpoint note")
        note = entry["checkpoint"]
        try:
            cp = chain.verify_checkpoint(note)
            proof = [base64.b64decode(h, validate=True) for h in entry.get("consistency", [])]
        except (checkpoint.CheckpointError, ValueError, TypeError) as exc:
            raise WitnessedError(f"{FILE} entry {i}: {exc}") from None
        if not merkle.verify_consistency(end, cp.size, end_root, cp.root, proof):
            raise WitnessedError(f"{FILE} entry {i}: checkpoint {cp.size} does not extend the package's end ({end})")
        text, sigs = split_note(note)
        try:
            good = verified_signatures(text, sigs, list(witnesses))
        except (BadSignature, NoteError) as exc:
            raise WitnessedError(f"{FILE} entry {i} (checkpoint {cp.size}): {exc}") from None
        names.update(v.vkey for v, _ in good)
        smallest = cp.size if smallest is None else min(smallest, cp.size)
    return smallest, sorted(n.split("+", 1)[0] for n in names)
