"""The subtree-root cache (bridge/log/subtrees.py): consistency proofs equal merkle.consistency_proof, from
O(log n) leaf reads."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log import merkle
from bridge.log.subtrees import SubtreeCache


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(n)]


ALL = leaves(3000)


def cache(chunk_bits: int) -> SubtreeCache:
    return SubtreeCache(lambda start, end: ALL[start:end], chunk_bits)


@settings(max_examples=300)
@given(st.data(), st.integers(0, 6))
def test_proofs_and_roots_equal_the_reference(data: st.DataObject, chunk_bits: int) -> None:
    """For random sizes, grown in random steps, every proof and root equals the all-leaves reference."""
    c = cache(chunk_bits)
    size = 0
    for _ in range(data.draw(st.integers(1, 3))):
        size = data.draw(st.integers(size, len(ALL)))
        c.extend(size)
        new = data.draw(st.integers(0, size))
        old = data.draw(st.integers(0, new))
        assert c.consistency_proof(old, new) == merkle.consistency_proof(ALL[:new], old)
        assert c.root(new) == merkle.root(ALL[:new])
        proof = c.consistency_proof(old, new)
        assert merkle.verify_consistency(old, new, merkle.root(ALL[:old]), merkle.root(ALL[:new]), proof)


def test_a_proof_reads_few_leaves() -> None:
    """Once built, a proof at a large size reads at most two partial chunks (never the whole log)."""
    big = leaves(1 << 14)
    c = SubtreeCache(lambda start, end: big[start:end])
    c.extend(len(big) - 7)
    built = c.leaves_read
    assert built == len(big) - 7
    for old in (1, 255, 257, 1000, 5000, 9999):
        before = c.leaves_read
        assert c.consistency_proof(old, c.size) == merkle.consistency_proof(big[: c.size], old)
        assert c.leaves_read - before <= 2 * 256
    c.extend(len(big))
    assert c.leaves_read - built <= 7 + 6 * 512  # only the 7 new leaves were read to extend


def test_bad_arguments_are_refused() -> None:
    c = cache(2)
    c.extend(10)
    with pytest.raises(ValueError):
        c.extend(5)
    with pytest.raises(ValueError):
        c.consistency_proof(3, 11)
    short = SubtreeCache(lambda start, end: ALL[start : end - 1])
    with pytest.raises(ValueError):
        short.extend(10)
