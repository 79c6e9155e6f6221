"""Consistency proofs in O(log n) leaf reads: a cache of the tree's aligned subtree roots (no I/O of its own).

`merkle.consistency_proof` needs every leaf of the tree (about 1 s per 10^6 records in Python). The
witness client asks for one proof per checkpoint, so `SubtreeCache` keeps, in memory, the root of every
complete aligned chunk of `2**chunk_bits` leaves (256 by default) and of every complete aligned subtree of
chunks above it: level j holds the roots of the subtrees of 256 * 2**j leaves, about 2 x 32 bytes per 256
leaves in all (some 250 KB per 10^6 records). It is built once from the leaves (one streaming read) and
extended with the new leaves only (`extend`).

In the RFC 9162 tree every node is MTH(D[lo:hi]) for a range that is either an aligned perfect subtree
(its size a power of two, `lo` a multiple of it) or lies inside one aligned block of its split size
(§2.1.1 recursion). So a node of 256 leaves or more is a lookup, or the node hash of its two children;
a node below a chunk lies inside one chunk and is hashed from at most 256 leaves (from the tail the cache
keeps, else read with the injected `read(start, end)`). A consistency proof has O(log n) nodes, and reads
at most two partial chunks: O(log n) hashes and at most ~512 leaf reads per proof, whatever the size.

`consistency_proof(old, new)` follows RFC 9162 §2.1.4.1 exactly as `merkle.consistency_proof` does (a
property test pins them equal); `root(size)` gives MTH of the first `size` leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bridge.log import merkle

#: Leaves per cached chunk: 2**8 = 256 (32 bytes per 256 leaves at the bottom level).
CHUNK_BITS = 8
#: Leaves read per call while extending.
READ_BATCH = 65536

Reader = Callable[[int, int], Sequence[bytes]]


class SubtreeCache:
    """Aligned subtree roots of one growing log; `read(start, end)` gives the stored leaf hashes [start, end)."""

    def __init__(self, read: Reader, chunk_bits: int = CHUNK_BITS) -> None:
        if not 0 <= chunk_bits <= 30:
            raise ValueError(f"chunk_bits must be 0..30, got {chunk_bits}")
        self._read = read
        self._chunk = 1 << chunk_bits
        self._levels: list[list[bytes]] = [[]]
        self._tail: list[bytes] = []  # leaves after the last complete chunk
        self._size = 0
        #: Leaves read from `read` so far (extending and proofs): what the bench and tests count.
        self.leaves_read = 0

    @property
    def size(self) -> int:
        """Leaves taken so far."""
        return self._size

    def extend(self, size: int) -> None:
        """Take the leaves up to `size` (reading only those not taken yet)."""
        if size < self._size:
            raise ValueError(f"the cache holds {self._size} leaves; it cannot shrink to {size}")
        while self._size < size:
            end = min(size, self._size + READ_BATCH)
            leaves = self._get(self._size, end)
            for leaf in leaves:
                self._tail.append(leaf)
                if len(self._tail) == self._chunk:
                    self._push(merkle.root(self._tail))
                    self._tail = []
            self._size = end

    def _get(self, start: int, end: int) -> Sequence[bytes]:
        leaves = self._read(start, end)
        self.leaves_read += len(leaves)
        if len(leaves) != end - start:
            raise ValueError(f"the log gave {len(leaves)} leaves for [{start}, {end})")
        return leaves

    def _push(self, node: bytes) -> None:
        level = 0
        self._levels[0].append(node)
        while len(self._levels[level]) % 2 == 0:
            left, right = self._levels[level][-2:]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(merkle.node_hash(left, right))
            level += 1

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range that is a node of the tree (see the module docstring); hi <= size."""
        if not 0 <= lo < hi <= self._size:
            raise ValueError(f"[{lo}, {hi}) is not a non-empty range of the {self._size} leaves taken")
        n = hi - lo
        if n >= self._chunk and n & (n - 1) == 0 and lo % n == 0:
            return self._levels[(n // self._chunk).bit_length() - 1][lo // n]
        if n <= self._chunk:
            return merkle.root(self._leaves(lo, hi))
        k = 1 << ((n - 1).bit_length() - 1)
        return merkle.node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def _leaves(self, lo: int, hi: int) -> Sequence[bytes]:
        tail_start = self._size - len(self._tail)
        if lo >= tail_start:
            return self._tail[lo - tail_start : hi - tail_start]
        return self._get(lo, hi)

    def root(self, size: int) -> bytes:
        """MTH of the first `size` leaves (size <= the leaves taken)."""
        return merkle.EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(old_size, D[0:new_size]); equals `merkle.consistency_proof`."""
        if not 0 <= old_size <= new_size <= self._size:
            raise ValueError(f"need 0 <= old {old_size} <= new {new_size} <= {self._size} leaves taken")
        if old_size in (0, new_size):
            return []
        return merkle.consistency_path(old_size, new_size, self.subtree)
