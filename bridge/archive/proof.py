"""What ties a plaintext package to the signed log (pure: bytes in, values out).

Record lines
------------
Every record of a package's range is one JSON line (canonical: sorted keys, no
whitespace) in exactly one file: an event in its dossier's `events.jsonl`,
anything else (decision records) in `proof/other-records.jsonl`. A line holds
what an auditor needs to recompute the record's Merkle leaf without any key:

    {"ciphertext_sha256": hex, "event" | "decision": <the canonical payload>,
     ["files": {blob id: path in the package}], "header": base64, "salt": base64, "seq": n}

    leaf = SHA-256(0x00 || header || SHA-256(salt || payload) || ciphertext hash)

where payload = canonical JSON of the "event"/"decision" value. A withheld
event keeps its leaf but not its content: "commitment" (base64) replaces the
payload and salt, and "withheld" {reason, by, at_ms, decision_seq} says why. A
record of a type this version does not know carries only its commitment.

Proof folder
------------
`range.json` (month, time zone, start, end, status), `frontier-start.json` (the
tree's right edge at `start`: one subtree root per set bit of `start`),
`leaves.txt` (the range's leaf hashes, hex, one per line, in order),
`consistency-proof.json` (RFC 9162 PROOF(start, end)), and the signed
checkpoints at `start` (absent for a package starting at 0) and `end`.
The frontier extended with the range's leaves must give the end root, and its
own root the start root: that alone proves the range extends the start tree;
the consistency proof says the same in the RFC's form, for tools that speak it.
`ConsistencyBuilder` computes the proof from the start frontier and a stream
of the range's leaves, in O(log n) memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from bridge.errors import DataError
from bridge.events import canonical_json
from bridge.log import clear, format, merkle, rotation

LEAF_LINE_BYTES = 65  # 64 hex digits + "\n"


class LineError(DataError, ValueError):
    """A record line that cannot be read (malformed, wrong lengths, not canonical)."""


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value: object, length: int | None, what: str) -> bytes:
    if not isinstance(value, str):
        raise LineError(f"{what} is not a string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise LineError(f"{what} is not base64") from None
    if length is not None and len(raw) != length:
        raise LineError(f"{what} is {len(raw)} bytes, expected {length}")
    return raw


def _unhex(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length:
        raise LineError(f"{what} is not {2 * length} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise LineError(f"{what} is not hex") from None


# -- writing lines (fast paths: keys already in sorted order, payload already canonical) --------


def content_line(
    key: str, seq: int, header: bytes, salt: bytes, payload: bytes, ct_hash: bytes, files: Mapping[str, str] | None
) -> bytes:
    """The line of a record shown in full; `key` is "event" or "decision"; equals canonical_json of the dict."""
    files_part = b',"files":' + canonical_json(dict(files)) if files else b""
    return b'{"ciphertext_sha256":"%b","%b":%b%b,"header":"%b","salt":"%b","seq":%d}\n' % (
        binascii.hexlify(ct_hash),
        key.encode(),
        payload,
        files_part,
        binascii.b2a_base64(header, newline=False),
        binascii.b2a_base64(salt, newline=False),
        seq,
    )


def carried_line(seq: int, header: bytes, salt: bytes, payload: bytes, ct_hash: bytes, path: Sequence[bytes]) -> bytes:
    """A decision from before the range with its RFC 9162 inclusion proof (proof/decisions-before.jsonl)."""
    d = orjson.loads(content_line("decision", seq, header, salt, payload, ct_hash, None))
    d["inclusion"] = [h.hex() for h in path]
    return canonical_json(d) + b"\n"


def sealed_line(seq: int, header: bytes, commit: bytes, ct_hash: bytes, withheld: Mapping[str, Any] | None) -> bytes:
    """The line of a record whose content is not in the package (withheld, or of an unknown type)."""
    d: dict[str, Any] = {
        "ciphertext_sha256": ct_hash.hex(),
        "commitment": b64(commit),
        "header": b64(header),
        "seq": seq,
    }
    if withheld is not None:
        d["withheld"] = dict(withheld)
    return canonical_json(d) + b"\n"


# -- reading lines --------------------------------------------------------------------------------


class RecordLine(NamedTuple):
    seq: int
    header: format.RecordHeader
    leaf: bytes
    #: "event", "decision", "key", "blob", "signing_key" or None (content not in the package)
    key: str | None
    content: dict[str, Any] | None
    withheld: dict[str, Any] | None
    files: dict[str, str]
    header_bytes: bytes = b""
    commitment: bytes = b""
    ciphertext_hash: bytes = b""
    salt: bytes = b""
    payload: bytes = b""  # canonical JSON of `content` (b"" without content)
    inclusion: tuple[bytes, ...] = ()


#: The content key of a line for each record type shown in full.
CONTENT_KEYS = {
    "event": format.RecordType.EVENT,
    "decision": format.RecordType.DECISION,
    "key": format.RecordType.KEY,
    "blob": format.RecordType.BLOB,
    "signing_key": format.RecordType.SIGNING_KEY,
}


def parse_line(line: bytes, *, inclusion: bool = False) -> RecordLine:
    """Parse and check one record line; its leaf is recomputed from what it holds. Raises LineError.

    With `inclusion`, the line also carries "inclusion": [hex] (proof/decisions-before.jsonl).
    """
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise LineError("not JSON") from None
    if not isinstance(d, dict):
        raise LineError("not a JSON object")
    seq = d.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise LineError("seq is not a non-negative integer")
    header_b = _unb64(d.get("header"), format.HEADER_BYTES, "header")
    try:
        header = format.unpack_header(header_b)
    except format.FormatError as exc:
        raise LineError(f"header: {exc}") from None
    if header.seq != seq:
        raise LineError(f"header says record {header.seq}, line says {seq}")
    ct_hash = _unhex(d.get("ciphertext_sha256"), format.HASH_BYTES, "ciphertext_sha256")
    key = next((k for k in CONTENT_KEYS if k in d), None)
    content: dict[str, Any] | None = None
    withheld = d.get("withheld")
    salt = payload = b""
    if key is not None:
        allowed = {"ciphertext_sha256", key, "files", "header", "salt", "seq"}
        if header.type != CONTENT_KEYS[key]:
            raise LineError(f"a {key} line on a record of type {header.type.name}")
        content = d[key]
        if not isinstance(content, dict):
            raise LineError(f"{key} is not an object")
        salt = _unb64(d.get("salt"), None, "salt")
        payload = canonical_json(content)
        commit = format.commitment(salt + payload)
        if header.type in format.CLEAR_TYPES:
            _check_clear(header, key, payload, commit, ct_hash)
    else:
        allowed = {"ciphertext_sha256", "commitment", "header", "seq", "withheld"}
        commit = _unb64(d.get("commitment"), format.HASH_BYTES, "commitment")
        if not isinstance(withheld, dict):
            raise LineError("a line without content must carry a withheld tombstone (a bare line)")
    proof_path: tuple[bytes, ...] = ()
    if inclusion:
        allowed.add("inclusion")
        raw = d.get("inclusion")
        if not isinstance(raw, list):
            raise LineError("inclusion is not a list of hashes")
        proof_path = tuple(_unhex(h, merkle.HASH_SIZE, "inclusion hash") for h in raw)
    extra = set(d) - allowed
    if extra:
        raise LineError(f"unexpected fields {sorted(extra)}")
    files = d.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise LineError("files is not an object of strings")
    leaf = merkle.leaf_hash(format.leaf_data(header_b, commit, ct_hash))
    return RecordLine(
        seq, header, leaf, key, content, withheld, files, header_b, commit, ct_hash, salt, payload, proof_path
    )


def _check_clear(header: format.RecordHeader, key: str, payload: bytes, commit: bytes, ct_hash: bytes) -> None:
    """A clear record (KEY, BLOB): stored body = salt || payload, so its hash is the commitment."""
    if header.conversation_tag != format.CLEAR_TAG or header.nonce != format.CLEAR_NONCE:
        raise LineError("a clear record must carry a zero conversation tag and nonce")
    if ct_hash != commit:
        raise LineError("ciphertext_sha256 of a clear record is not SHA-256(salt || payload)")
    try:
        if key == "signing_key":
            rotation.parse_record(payload)  # its signatures are checked with the key chain (signing_keys.py)
        else:
            (clear.parse_key if key == "key" else clear.parse_blob)(payload)
    except (clear.ClearRecordError, rotation.RotationError) as exc:
        raise LineError(f"{key} record: {exc}") from None


# -- proof folder files ------------------------------------------------------------------------------


def pretty_json(value: Any) -> bytes:
    """Deterministic, readable JSON for the proof folder."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def frontier_json(frontier: merkle.Frontier) -> bytes:
    return pretty_json({"size": frontier.size, "hashes": [h.hex() for h in frontier.hashes]})


def parse_frontier(data: bytes) -> merkle.Frontier:
    d = orjson.loads(data)
    if not isinstance(d, dict) or not isinstance(d.get("hashes"), list):
        raise ValueError("frontier-start.json must hold size and hashes")
    hashes = [_unhex(h, merkle.HASH_SIZE, "frontier hash") for h in d["hashes"]]
    size = d.get("size")
    if not isinstance(size, int):
        raise ValueError("frontier size must be an integer")
    return merkle.Frontier.from_hashes(size, hashes)


def consistency_json(old_size: int, new_size: int, proof: Sequence[bytes]) -> bytes:
    return pretty_json({"old_size": old_size, "new_size": new_size, "proof": [h.hex() for h in proof]})


def closing_json(
    seq: int,
    header: bytes,
    commit: bytes,
    ct_hash: bytes,
    size: int,
    inclusion: Sequence[bytes],
    consistency: Sequence[bytes],
) -> bytes:
    """proof/closing.json: the first record after the range, in a later checkpoint (see `plan.Closing`)."""
    return pretty_json(
        {
            "record": {
                "seq": seq,
                "header": b64(header),
                "commitment": b64(commit),
                "ciphertext_sha256": ct_hash.hex(),
            },
            "checkpoint_size": size,
            "inclusion": [h.hex() for h in inclusion],
            "consistency": [h.hex() for h in consistency],
        }
    )


@dataclass(frozen=True)
class ClosingProof:
    seq: int
    header: format.RecordHeader
    leaf: bytes
    size: int
    inclusion: list[bytes]
    consistency: list[bytes]


def parse_closing(data: bytes) -> ClosingProof:
    """Raises ValueError (LineError) for anything but what `closing_json` writes."""
    d = orjson.loads(data)
    rec = d.get("record") if isinstance(d, dict) else None
    if (
        not isinstance(rec, dict)
        or not isinstance(d.get("inclusion"), list)
        or not isinstance(d.get("consistency"), list)
    ):
        raise ValueError("closing.json must hold record, checkpoint_size, inclusion and consistency")
    seq, size = rec.get("seq"), d.get("checkpoint_size")
    if not (isinstance(seq, int) and isinstance(size, int)):
        raise ValueError("seq and checkpoint_size must be integers")
    header_b = _unb64(rec.get("header"), format.HEADER_BYTES, "header")
    commit = _unb64(rec.get("commitment"), format.HASH_BYTES, "commitment")
    ct_hash = _unhex(rec.get("ciphertext_sha256"), format.HASH_BYTES, "ciphertext_sha256")
    inclusion = [_unhex(h, merkle.HASH_SIZE, "inclusion hash") for h in d["inclusion"]]
    consistency = [_unhex(h, merkle.HASH_SIZE, "consistency hash") for h in d["consistency"]]
    if closing_json(seq, header_b, commit, ct_hash, size, inclusion, consistency) != data:
        raise ValueError("closing.json is not in the form the package writer gives")
    header = format.unpack_header(header_b)
    leaf = merkle.leaf_hash(format.leaf_data(header_b, commit, ct_hash))
    return ClosingProof(seq, header, leaf, size, inclusion, consistency)


def parse_consistency(data: bytes) -> tuple[int, int, list[bytes]]:
    d = orjson.loads(data)
    if not isinstance(d, dict) or not isinstance(d.get("proof"), list):
        raise ValueError("consistency-proof.json must hold old_size, new_size and proof")
    old, new = d.get("old_size"), d.get("new_size")
    if not (isinstance(old, int) and isinstance(new, int)):
        raise ValueError("old_size and new_size must be integers")
    return old, new, [_unhex(h, merkle.HASH_SIZE, "proof hash") for h in d["proof"]]


def leaf_line(leaf: bytes) -> bytes:
    return leaf.hex().encode("ascii") + b"\n"


# -- consistency proof from a frontier and a stream of leaves ----------------------------------------


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges [lo, hi) whose subtree roots make RFC 9162 PROOF(old_size, new_size), in proof order."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} is outside 0..{new_size}")
    if old_size in (0, new_size):
        return []
    top_down: list[tuple[int, int]] = []
    lo, hi, m, whole_old_tree = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            lo, m, whole_old_tree = lo + k, m - k, False
    if not whole_old_tree:
        top_down.append((lo, hi))
    return top_down[::-1]


class ConsistencyBuilder:
    """PROOF(start, end) from the frontier at `start` and the leaves start..end-1 fed in order."""

    def __init__(self, start_frontier: merkle.Frontier, end: int) -> None:
        self._start = start_frontier.size
        self._end = end
        self._ranges = consistency_ranges(self._start, end)
        start_subtrees = merkle.frontier_subtrees(start_frontier)
        self._roots: dict[tuple[int, int], bytes] = {
            r: merkle.range_root(start_subtrees, *r) for r in self._ranges if r[1] <= self._start
        }
        self._pending = sorted(r for r in self._ranges if r[0] >= self._start)
        self._current: merkle.Frontier | None = None
        self._next = self._start

    def add(self, leaf: bytes) -> None:
        i = self._next
        self._next += 1
        if not self._pending or i < self._pending[0][0]:
            return
        lo, hi = self._pending[0]
        if self._current is None:
            self._current = merkle.Frontier()
        self._current.append(leaf)
        if i + 1 == hi:
            self._roots[(lo, hi)] = self._current.root()
            self._current = None
            self._pending.pop(0)

    def proof(self) -> list[bytes]:
        if self._next != self._end:
            raise ValueError(f"fed {self._next - self._start} leaves, expected {self._end - self._start}")
        return [self._roots[r] for r in self._ranges]


#: Leaves per block `extend_leaf_lines` hashes as one perfect subtree (a power of two).
LEAF_BLOCK = 1 << 12
_NODE_PREFIX = b"\x01"


def extend_leaf_lines(
    frontier: merkle.Frontier,
    lines: bytes | memoryview | Any,
    count: int,
    one: Callable[[int], bytes],
    block_leaves: int | None = None,
) -> merkle.Frontier:
    """`frontier` extended with the `count` leaves of leaves.txt held in `lines` (64 hex digits and a newline
    each): the frontier `merkle.extend(frontier, (one(i) for i in range(count)))` gives, where `one(i)` is the
    caller's reading of line i (which raises for a line that is not a leaf).

    Where the frontier's size is a multiple of `LEAF_BLOCK`, a whole block of lines in the strict form (every
    newline in place, nothing but hex digits) is decoded at once and hashed level by level into its subtree's
    root; every other leaf, and every line of a block not in that form, goes through `one`, so a bad line gives
    the caller's error at the first bad line, as leaf by leaf. (`block_leaves`: another power of two, for tests.)"""
    span = LEAF_BLOCK if block_leaves is None else block_leaves
    tree = frontier.copy()
    width = LEAF_LINE_BYTES
    newlines = b"\n" * span
    sha = hashlib.sha256
    i = 0
    while i < count:
        block = None
        if tree.size % span == 0 and count - i >= span:
            raw = bytes(lines[i * width : (i + span) * width])
            if raw[width - 1 :: width] == newlines:
                try:
                    block = binascii.unhexlify(raw.replace(b"\n", b""))
                except binascii.Error:
                    block = None
                if block is not None and len(block) != span * merkle.HASH_SIZE:  # a newline among the digits
                    block = None
        if block is None:  # one leaf, as the caller reads it
            tree.append(one(i))
            i += 1
            continue
        level = [block[k : k + merkle.HASH_SIZE] for k in range(0, len(block), merkle.HASH_SIZE)]
        while len(level) > 1:
            level = [sha(_NODE_PREFIX + level[k] + level[k + 1]).digest() for k in range(0, len(level), 2)]
        tree = merkle.append_subtree(tree, (tree.size, span, level[0]))
        i += span
    return tree


def extend_root(frontier: merkle.Frontier, leaves: Iterable[bytes]) -> bytes:
    return merkle.extend(frontier, leaves).root()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- inclusion proofs for chosen leaves from one stream of leaves --------------------------------------


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges [lo, hi) whose subtree roots make RFC 9162 PATH(index, size), in proof order.

    Each range is either a perfect subtree aligned to its width or ends at `size` (a right edge).
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside 0..{size - 1}")
    top_down: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            lo += k
    return top_down[::-1]


class SubtreeRoots:
    """Roots of chosen ranges (from `inclusion_ranges`) of a tree of `size` leaves, fed in order once.

    Perfect subtrees are caught as they complete (amortised O(1) per leaf); right-edge ranges
    come from the finished frontier.
    """

    def __init__(self, wanted: set[tuple[int, int]], size: int) -> None:
        self._wanted = wanted
        self._size = size
        self._stack: list[tuple[int, int, bytes]] = []
        self._frontier = merkle.Frontier()
        self._found: dict[tuple[int, int], bytes] = {}

    def add(self, leaf: bytes) -> None:
        i = self._frontier.size
        self._frontier.append(leaf)
        node = (i, i + 1, leaf)
        while True:
            if node[:2] in self._wanted:
                self._found[node[:2]] = node[2]
            if not self._stack or self._stack[-1][1] - self._stack[-1][0] != node[1] - node[0]:
                break
            left = self._stack.pop()
            node = (left[0], node[1], merkle.node_hash(left[2], node[2]))
        self._stack.append(node)

    def finish(self) -> dict[tuple[int, int], bytes]:
        if self._frontier.size != self._size:
            raise ValueError(f"fed {self._frontier.size} leaves, expected {self._size}")
        edge = merkle.frontier_subtrees(self._frontier)
        for rng in self._wanted - set(self._found):
            self._found[rng] = merkle.range_root(edge, *rng)
        return dict(self._found)
