"""proof.extend_leaf_lines: leaves.txt hashed a block at a time gives what leaf-by-leaf appending gives.

verify-package extends the start frontier with every line of proof/leaves.txt; whole aligned blocks in the
writer's strict form are decoded and hashed as one subtree each. Property: for any start size, count and
block size, and for lines damaged anywhere (upper case, a space, a lost newline, a stray byte), the result is
the frontier `merkle.extend` gives, or the same error at the same line.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.archive import proof
from bridge.log import merkle


class BadLine(Exception):
    pass


def _one(lines: bytes, i: int) -> bytes:
    """A reader of line i as verify-package's `_leaf_at` reads it (64 hex digits, then a newline)."""
    line = lines[i * proof.LEAF_LINE_BYTES : (i + 1) * proof.LEAF_LINE_BYTES]
    try:
        if line[64:] != b"\n":
            raise ValueError
        return bytes.fromhex(line[:64].decode("ascii"))
    except ValueError:
        raise BadLine(i) from None


def _start(size: int) -> merkle.Frontier:
    return merkle.extend(merkle.Frontier(), (hashlib.sha256(b"s%d" % k).digest() for k in range(size)))


def _result(fn: object) -> tuple[str, object]:
    try:
        tree = fn()  # type: ignore[operator]
    except (BadLine, ValueError) as exc:
        return ("error", (type(exc).__name__, str(exc)))
    return ("tree", (tree.size, tree.hashes))


_DAMAGE = st.sampled_from([b"A", b"F", b" ", b"\n", b"g", b"\xff", b""])


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 40),
    count=st.integers(0, 70),
    block=st.sampled_from([2, 4, 8]),
    damage=st.lists(st.tuples(st.integers(0, 10**6), _DAMAGE), max_size=2),
)
def test_blocks_give_the_leaf_by_leaf_frontier(
    size: int, count: int, block: int, damage: list[tuple[int, bytes]]
) -> None:
    leaves = [hashlib.sha256(b"l%d" % k).digest() for k in range(count)]
    lines = b"".join(proof.leaf_line(leaf) for leaf in leaves)
    for at, byte in damage:
        if lines:
            k = at % len(lines)
            lines = lines[:k] + byte + lines[k + 1 :]  # same length unless byte is b""
    start = _start(size)
    want = _result(lambda: merkle.extend(start, (_one(lines, i) for i in range(count))))
    got = _result(lambda: proof.extend_leaf_lines(start, lines, count, lambda i: _one(lines, i), block))
    assert got == want
    assert start == _start(size)  # the argument is untouched


def test_a_large_run_takes_the_block_path_and_agrees() -> None:
    """Real block size, a start that is not aligned: the leaves read one by one are only the unaligned ones."""
    count = 3 * proof.LEAF_BLOCK + 5
    leaves = [hashlib.sha256(b"l%d" % k).digest() for k in range(count)]
    lines = b"".join(proof.leaf_line(leaf) for leaf in leaves)
    start = _start(7)
    read: list[int] = []

    def one(i: int) -> bytes:
        read.append(i)
        return _one(lines, i)

    got = proof.extend_leaf_lines(start, lines, count, one)
    assert got == merkle.extend(start, leaves)
    assert len(read) < proof.LEAF_BLOCK + 5 + 1  # the head up to alignment and the tail, never a whole block
