"""`proof/signing-keys.json`: the log's signing-key rotations a package's checkpoints depend on.

An archivist pins the log's ORIGINAL public key (`KEY.pub`) for decades; a package made after a
`rotate-signing-key` carries checkpoints signed by a later key. This file lets the pinned key reach it: each
rotation record (clear: header, salt and payload, so its leaf is recomputed here), the checkpoint over it
(tree size seq + 1, signed by BOTH the old and the new key) and the RFC 9162 inclusion proof of the record
as the last leaf of that checkpoint's tree:

    {"rotations": [{"seq": n, "header": b64, "salt": b64, "signing_key": {...record...},
                    "checkpoint": "<note>", "inclusion": ["<hex>", ...]}, ...]}

`chain_from_package` starts at the pinned key and, in order, checks each entry: the record is a SIGNING_KEY
record at its position, signed by the key current before it and by the key it names
(`bridge.log.rotation.KeyChain.rotate`), and it sits in a checkpoint both keys signed. The chain it returns
gives the key every checkpoint of the package must be signed by (the key current at its tree size). A
package with a rotation left out, or a forged one, fails: its later checkpoints do not verify under the
pinned key, or the forged record is not signed by it.

Written with the rotations up to the one that brought in the newest key signing a checkpoint the package
carries (stored notes: the file is a function of the log and the package). Absent when the pinned key signs
them all.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import orjson

from bridge.errors import Check, DataError, LogIntegrityError
from bridge.events import canonical_json
from bridge.log import checkpoint, format, merkle, rotation
from bridge.log.rotation import Key, KeyChain
from bridge.log.view import LogView

FILE = "proof/signing-keys.json"


class SigningKeysError(DataError, ValueError):
    """proof/signing-keys.json does not show what it claims; the message says which entry and why."""


def signing_keys_json(view: LogView, notes: Iterable[str]) -> bytes | None:
    """The file's bytes for a package carrying the checkpoint `notes`, or None when the pinned key signs them."""
    vkeys = view.signing_chain().vkeys()
    needed = 0  # how many rotations lead to the newest key that signs one of the notes
    for note in notes:
        _, signatures = checkpoint.open_note(note)
        ids = {(s.name, s.key_id.hex()) for s in signatures}
        needed = max([needed, *(i for i, v in enumerate(vkeys) if tuple(v.split("+")[:2]) in ids)])
    entries: list[dict[str, Any]] = []
    for n, rec in enumerate(view.rotation_records()):
        if n >= needed:
            break
        over = view.note_at(rec.seq + 1)
        edge = view.stored_frontier(rec.seq)  # written by the rotation: the old key's last checkpoint
        if over is None:
            raise LogIntegrityError(
                rec.seq, "no checkpoint over the signing-key rotation record is stored", check=Check.TRUNCATED
            )
        if edge is None:
            edge = merkle.extend(merkle.Frontier(), (leaf for _, leaf in view.leaves(0, rec.seq)))
        entries.append(
            {
                "seq": rec.seq,
                "header": base64.b64encode(rec.header_bytes).decode("ascii"),
                "salt": base64.b64encode(rec.salt).decode("ascii"),
                "signing_key": orjson.loads(rec.payload),
                "checkpoint": over,
                "inclusion": [h.hex() for h in reversed(edge.hashes)],
            }
        )
    if not entries:
        return None
    return orjson.dumps({"rotations": entries}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def chain_from_package(data: bytes | None, pinned: Key) -> KeyChain:
    """The key chain from `pinned` through the file's rotations (see the module docstring); raises
    SigningKeysError."""
    chain = KeyChain(pinned)
    if data is None:
        return chain
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SigningKeysError(f"{FILE} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"rotations"} or not isinstance(doc["rotations"], list):
        raise SigningKeysError(f"{FILE} must hold only a list 'rotations'")
    for i, entry in enumerate(doc["rotations"]):
        try:
            _take(chain, entry)
        except (SigningKeysError, LogIntegrityError, checkpoint.CheckpointError) as exc:
            raise SigningKeysError(f"{FILE} entry {i}: {exc}") from None
    return chain


_ENTRY = {"seq", "header", "salt", "signing_key", "checkpoint", "inclusion"}


def _take(chain: KeyChain, entry: object) -> None:
    if not isinstance(entry, dict) or set(entry) != _ENTRY:
        raise SigningKeysError(f"an entry holds exactly {sorted(_ENTRY)}")
    seq, note, inclusion = entry["seq"], entry["checkpoint"], entry["inclusion"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or not isinstance(note, str):
        raise SigningKeysError("seq must be a non-negative integer and checkpoint a note")
    if not isinstance(entry["signing_key"], dict):
        raise SigningKeysError("signing_key is not an object")
    try:
        header_b = base64.b64decode(str(entry["header"]), validate=True)
        salt = base64.b64decode(str(entry["salt"]), validate=True)
        path = _hashes(inclusion)
    except (binascii.Error, ValueError):
        raise SigningKeysError("header, salt or inclusion is not encoded as it should be") from None
    try:
        header = format.unpack_header(header_b)
    except format.FormatError as exc:
        raise SigningKeysError(f"header: {exc}") from None
    if header.type != format.RecordType.SIGNING_KEY or header.seq != seq:
        raise SigningKeysError(f"the header is not the one of a signing-key record at {seq}")
    body = salt + canonical_json(entry["signing_key"])
    commit = format.commitment(body)
    record = rotation.open_record(seq, header, commit, body)
    old = chain.current
    chain.rotate(seq, record)
    new = chain.current
    cp = checkpoint.verify_checkpoint_note(note, *old, origin=chain.origin)
    checkpoint.verify_checkpoint_note(note, *new, origin=chain.origin)
    if cp.size != seq + 1:
        raise SigningKeysError(f"the checkpoint over the rotation is for tree size {cp.size}, not {seq + 1}")
    if not merkle.verify_inclusion(format.leaf_of(header_b, commit, body), seq, cp.size, path, cp.root):
        raise SigningKeysError(f"rotation record {seq} is not in the checkpoint over it (inclusion proof fails)")


def _hashes(raw: object) -> list[bytes]:
    if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
        raise ValueError("inclusion is not a list of hex hashes")
    out = [bytes.fromhex(h) for h in raw]
    if any(len(h) != merkle.HASH_SIZE for h in out):
        raise ValueError("an inclusion hash is not 32 bytes")
    return out
