"""RFC 9162 §2.1 Merkle tree over leaf hashes (pure: values in, values out).

Hashing is SHA-256 with domain separation: a leaf is `H(0x00 || data)`, an
interior node `H(0x01 || left || right)`, the empty tree `H(b"")`. A tree of n
leaves splits at k, the largest power of two smaller than n, so the left subtree
is always perfect and the tree shape depends only on n.

Contract:
- Every function except `leaf_hash` takes leaf HASHES (32 bytes each), never
  leaf data. Generators (`root`, `inclusion_proof`, `consistency_proof`) raise
  `ValueError` on arguments that cannot describe a tree (a hash of the wrong
  length, an index or size out of range): that is a caller bug.
- Verifiers (`verify_inclusion`, `verify_consistency`) follow RFC 9162 §2.1.3.2
  and §2.1.4.2 step by step, never raise on a bad proof and return False
  instead, and compare hashes in constant time. One deliberate strictness beyond
  the RFC: a tree of size 0 must have root `H(b"")`, so a "consistent with the
  empty tree" claim cannot smuggle in an arbitrary old root.
- `Frontier` is the right edge of a growing tree: one subtree root per set bit
  of the size, O(log n) memory, O(1) amortised hashing per append. Its root
  equals `root(all leaves appended)`. A monthly package proves that it extends
  last month's signed tree by carrying the old frontier: its root must equal the
  old signed root and `extend(frontier, month's leaves).root()` the new one.
- A `Subtree` is (first leaf, size, root) of a perfect subtree aligned to its
  size (its size a power of two dividing its first leaf): `append_subtree` grows
  a frontier by one at once (the hashing below it done elsewhere, in parallel),
  `range_root` gives the root of a tree node from the subtrees that tile it.

`root` hashes level by level (pairing neighbours and carrying an odd last node
up unchanged), which builds exactly the left-balanced RFC tree without
per-leaf recursion: about 0.5 s for a million leaves on one core.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from hashlib import sha256

HASH_SIZE = 32
#: RFC 9162 domain separation: a leaf is SHA-256(LEAF_PREFIX || data) (inlined on hot paths: `format`).
LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_ROOT = sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: SHA-256(0x00 || data)."""
    return sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    return sha256(_NODE_PREFIX + left + right).digest()


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _require_hashes(leaves: Sequence[bytes]) -> None:
    for i, h in enumerate(leaves):
        if not _is_hash(h):
            raise ValueError(f"leaf {i} is not a {HASH_SIZE}-byte hash: {h!r}")


#: What `Frontier.append_many`'s cheap check accepts: exact bytes, 32 of them.
_BYTES: frozenset[type] = frozenset({bytes})
_HASH_SIZES = frozenset({HASH_SIZE})


def _perfect_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two number (at least 2) of leaf hashes, a level at a time."""
    level = leaves
    while len(level) > 1:
        pairs = iter(level)
        level = [sha256(_NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_unchecked(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        carry = level[-1] if len(level) & 1 else None
        pairs = iter(level)  # zip(pairs, pairs) walks neighbours; a lone last node is the carry
        level = [sha256(_NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]
        if carry is not None:
            level.append(carry)
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes."""
    _require_hashes(leaves)
    return _root_unchecked(leaves)


class Frontier:
    """The compact right edge of a tree: enough to append and to compute the root.

    `hashes` are the roots of the perfect subtrees that make up the tree, left to
    right, largest first; their sizes are the set bits of `size`, high to low.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        """Rebuild a frontier from its size and subtree roots (as `hashes` gave them)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"frontier size must be a non-negative int, got {size!r}")
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} subtree hashes, got {len(hashes)}")
        _require_hashes(hashes)
        frontier = cls()
        frontier._size = size
        frontier._hashes = list(hashes)
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Subtree roots, left to right (one per set bit of `size`, largest first)."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash; merges the equal-sized subtrees it completes."""
        if not _is_hash(leaf):
            raise ValueError(f"leaf {self._size} is not a {HASH_SIZE}-byte hash: {leaf!r}")
        node, n = leaf, self._size
        while n & 1:
            node = node_hash(self._hashes.pop(), node)
            n >>= 1
        self._hashes.append(node)
        self._size += 1

    def append_many(self, leaves: Sequence[bytes]) -> None:
        """`append` each of `leaves` in order (one call per batch: the writer's hot path). All or nothing:
        ValueError, and no leaf appended, if one is not a 32-byte hash.

        How: the leaves are cut as `aligned_ranges` (perfect subtrees, each a power of two dividing its first
        leaf), each subtree's root is hashed a level at a time (`_perfect_root`), and the root is merged into
        the frontier as `append_subtree` does: the same nodes hashed as one leaf at a time (a property test
        pins it), with less Python per node (a 4096-leaf batch alone: 0.56 -> 0.47 us per leaf)."""
        if not (set(map(type, leaves)) <= _BYTES and set(map(len, leaves)) <= _HASH_SIZES) and not all(
            map(_is_hash, leaves)
        ):  # the exact check only when the cheap one (exact bytes of 32 bytes) does not pass
            bad = next(i for i, leaf in enumerate(leaves) if not _is_hash(leaf))
            raise ValueError(f"leaf {self._size + bad} is not a {HASH_SIZE}-byte hash: {leaves[bad]!r}")
        hashes, size, prefix, at = self._hashes, self._size, _NODE_PREFIX, 0
        for lo, width in aligned_ranges(size, size + len(leaves)):
            node = leaves[at] if width == 1 else _perfect_root(leaves[at : at + width])
            at += width
            n = lo // width
            while n & 1:
                node = sha256(prefix + hashes.pop() + node).digest()
                n >>= 1
            hashes.append(node)
        self._size = size + len(leaves)

    def root(self) -> bytes:
        """Root hash of the tree of all leaves appended so far."""
        if not self._hashes:
            return EMPTY_ROOT
        node = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            node = node_hash(left, node)
        return node

    def copy(self) -> Frontier:
        """An independent frontier with the same state."""
        return Frontier.from_hashes(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, hashes=[{', '.join(h.hex()[:8] for h in self._hashes)}])"


#: A perfect subtree of a tree: (first leaf, number of leaves (a power of two dividing the first leaf), root).
Subtree = tuple[int, int, bytes]


def aligned_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) as the fewest perfect subtrees of a tree, left to right: (first leaf, size), each size a power of
    two dividing its first leaf (how a frontier grows: what `append_subtree` takes)."""
    out: list[tuple[int, int]] = []
    while lo < hi:
        size = lo & -lo if lo else 1 << ((hi - lo).bit_length() - 1)
        while lo + size > hi:
            size >>= 1
        out.append((lo, size))
        lo += size
    return out


def subtrees_of(start: int, leaves: bytes) -> list[Subtree]:
    """The leaves (32 bytes each, joined) from leaf `start` as `aligned_ranges`, each with its root (MTH)."""
    out: list[Subtree] = []
    for lo, size in aligned_ranges(start, start + len(leaves) // HASH_SIZE):
        i = (lo - start) * HASH_SIZE
        out.append((lo, size, root([leaves[j : j + HASH_SIZE] for j in range(i, i + size * HASH_SIZE, HASH_SIZE)])))
    return out


def append_subtree(frontier: Frontier, subtree: Subtree) -> Frontier:
    """A new frontier: `frontier` with the subtree's leaves appended (it must start at the frontier's size, and
    its size, a power of two, divide that; else ValueError). The same frontier as appending the leaves one by
    one: the merges below the subtree's level are inside it."""
    lo, size, node = subtree
    if lo != frontier.size or size <= 0 or size & (size - 1) or lo % size or not _is_hash(node):
        raise ValueError(f"subtree [{lo}, {lo + size}) does not extend a frontier of size {frontier.size}")
    hashes = list(frontier.hashes)
    n = lo // size
    while n & 1:
        node = node_hash(hashes.pop(), node)
        n >>= 1
    hashes.append(node)
    return Frontier.from_hashes(lo + size, hashes)


def frontier_subtrees(frontier: Frontier) -> list[Subtree]:
    """A frontier's perfect subtrees (left to right, largest first)."""
    out: list[Subtree] = []
    lo = 0
    for bit in reversed(range(frontier.size.bit_length())):
        if frontier.size >> bit & 1:
            out.append((lo, 1 << bit, frontier.hashes[len(out)]))
            lo += 1 << bit
    return out


def range_root(subtrees: Sequence[Subtree], lo: int, hi: int) -> bytes:
    """MTH of leaves [lo, hi) from those of `subtrees` (disjoint, left to right) that lie inside it. [lo, hi)
    must be a node of the tree (a consistency or inclusion proof's range is one; then `lo` is a multiple of
    every subtree size inside it), tiled by them: else ValueError."""
    inside = [(first, size, node) for first, size, node in subtrees if first >= lo and first + size <= hi]
    if not lo < hi or sum(size for _, size, _ in inside) != hi - lo:
        raise ValueError(f"[{lo}, {hi}) is not tiled by the subtrees")
    frontier = Frontier()
    for first, size, node in inside:
        frontier = append_subtree(frontier, (first - lo, size, node))
    return frontier.root()


def extend(frontier: Frontier, leaves: Iterable[bytes]) -> Frontier:
    """A new frontier: `frontier` with `leaves` appended (the argument is untouched).

    Streams: `leaves` may be a generator over a month of records.
    """
    grown = frontier.copy()
    for leaf in leaves:
        grown.append(leaf)
    return grown


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, leaves): sibling hashes from the leaf up."""
    _require_hashes(leaves)
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} is outside a tree of size {len(leaves)}")
    top_down: list[bytes] = []
    lo, hi = 0, len(leaves)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append(_root_unchecked(leaves[lo + k : hi]))
            hi = lo + k
        else:
            top_down.append(_root_unchecked(leaves[lo : lo + k]))
            lo += k
    return top_down[::-1]


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, leaves); empty when old_size is 0 or len(leaves)."""
    _require_hashes(leaves)
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    return consistency_path(old_size, n, lambda lo, hi: _root_unchecked(leaves[lo:hi]))


def consistency_path(old_size: int, new_size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[0:new_size]) for 0 < old_size < new_size, with `subtree(lo, hi)` giving
    MTH(D[lo:hi]): one walk shared by the proof from leaves and the one from cached subtree roots."""
    # SUBPROOF(m, D[lo:hi], b), unrolled: each step records the sibling subtree,
    # and the innermost step may record the old tree's own subtree.
    top_down: list[bytes] = []
    lo, hi, m, whole_old_tree = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            top_down.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(subtree(lo, lo + k))
            lo, m, whole_old_tree = lo + k, m - k, False
    if not whole_old_tree:
        top_down.append(subtree(lo, hi))
    return top_down[::-1]


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _shift_until_odd_or_zero(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` put `leaf_hash` at `index` under `root`?"""
    if not (_is_hash(leaf_hash) and _is_hash(root) and all(_is_hash(p) for p in proof)):
        return False
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False  # proof longer than the path
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_until_odd_or_zero(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _same(r, root)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (old_size, old_root) a prefix of (new_size, new_root)?"""
    if not (_is_hash(old_root) and _is_hash(new_root) and all(_is_hash(p) for p in proof)):
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == 0 and not _same(old_root, EMPTY_ROOT):
        return False
    if old_size == new_size:
        return not proof and _same(old_root, new_root)
    if old_size == 0:
        return not proof  # every tree extends the empty tree
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # old tree is a perfect subtree: its root is implied
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False  # proof longer than the path
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _shift_until_odd_or_zero(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Both comparisons always run: no early exit that depends on secret-ish data.
    old_ok = _same(fr, old_root)
    new_ok = _same(sr, new_root)
    return sn == 0 and old_ok and new_ok
