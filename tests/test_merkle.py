"""Tests for bridge.log.merkle: RFC 9162 hashing, frontier, proofs and verifiers."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log import merkle
from bridge.log.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    extend,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# RFC 6962 reference data as published in transparency-dev/merkle (testonly/constants.go,
# proof/verify_test.go): eight leaf inputs, the root at every size, the complete subtree
# hashes, and known inclusion/consistency proofs.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
NODES = [
    [
        bytes.fromhex(h)
        for h in (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        )
    ],
    [bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]
LEAVES = [leaf_hash(d) for d in LEAF_INPUTS]
# (leaf index, tree size, proof) and (old size, new size, proof), 0-based indices.
KNOWN_INCLUSION = [
    (0, 1, []),
    (0, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (5, 8, [NODES[0][4], NODES[1][3], NODES[2][0]]),
    (2, 3, [NODES[1][0]]),
    (1, 5, [NODES[0][0], NODES[1][1], NODES[0][4]]),
]
KNOWN_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (6, 8, [NODES[1][2], NODES[1][3], NODES[2][0]]),
    (2, 5, [NODES[1][1], NODES[0][4]]),
    (6, 7, [NODES[1][2], NODES[0][6], NODES[2][0]]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def distinct_leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]


# Reference implementation: the RFC's recursive definitions, written as literally as possible.
def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = ref_split(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_path_length(m: int, n: int) -> int:
    length = 0
    while n > 1:
        k = ref_split(n)
        m, n = (m, k) if m < k else (m - k, n - k)
        length += 1
    return length


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def flip(h: bytes, bit: int) -> bytes:
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- hashing and roots -----------------------------------------------------------------


def test_leaf_and_node_hash_use_rfc_prefixes() -> None:
    """leaf_hash is SHA-256(0x00||data) and node_hash is SHA-256(0x01||l||r)."""
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    """The empty tree's root is SHA-256 of the empty string."""
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert Frontier().root() == EMPTY_ROOT


def test_leaf_hashes_match_rfc6962_vectors() -> None:
    """Leaf hashes of the RFC 6962 test inputs match the published level-0 node hashes."""
    assert NODES[0] == LEAVES


@pytest.mark.parametrize("size", range(9))
def test_roots_match_rfc6962_vectors(size: int) -> None:
    """root() and Frontier agree with the published root for every prefix of the 8-leaf tree."""
    assert root(LEAVES[:size]) == ROOTS[size]
    assert extend(Frontier(), LEAVES[:size]).root() == ROOTS[size]


def test_frontier_hashes_match_published_compact_ranges() -> None:
    """Frontier.hashes are the published compact-range subtree roots, largest first."""
    expected: list[list[bytes]] = [
        [],
        [NODES[0][0]],
        [NODES[1][0]],
        [NODES[1][0], NODES[0][2]],
        [NODES[2][0]],
        [NODES[2][0], NODES[0][4]],
        [NODES[2][0], NODES[1][2]],
        [NODES[2][0], NODES[1][2], NODES[0][6]],
        [NODES[3][0]],
    ]
    frontier = Frontier()
    assert list(frontier.hashes) == expected[0]
    for size in range(1, 9):
        frontier.append(LEAVES[size - 1])
        assert frontier.size == size
        assert list(frontier.hashes) == expected[size]


@given(st.integers(0, 300))
def test_root_matches_recursive_rfc_definition(n: int) -> None:
    """The level-by-level root equals the RFC's recursive MTH for any size."""
    leaves = distinct_leaves(n)
    assert root(leaves) == ref_mth(leaves)


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200))
def test_frontier_root_equals_root_at_every_size(leaves: list[bytes]) -> None:
    """Appending leaves one by one, the frontier's root always equals root() of the prefix."""
    frontier = Frontier()
    for i, leaf in enumerate(leaves):
        assert frontier.root() == root(leaves[:i])
        frontier.append(leaf)
    assert frontier.root() == root(leaves)
    assert len(frontier.hashes) == bin(len(leaves)).count("1")


@given(st.integers(0, 200), st.integers(0, 200))
def test_frontier_rebuilt_from_hashes_continues_identically(n: int, more: int) -> None:
    """A frontier rebuilt from (size, hashes) grows to the same root as the original."""
    leaves = distinct_leaves(n + more)
    original = extend(Frontier(), leaves[:n])
    rebuilt = Frontier.from_hashes(original.size, original.hashes)
    assert rebuilt == original
    assert extend(rebuilt, leaves[n:]).root() == root(leaves)


def test_frontier_copy_and_extend_leave_the_original_untouched() -> None:
    """copy() and extend() return independent frontiers; the source does not move."""
    base = extend(Frontier(), LEAVES[:3])
    copied = base.copy()
    copied.append(LEAVES[3])
    grown = extend(base, LEAVES[3:])
    assert base.size == 3 and base.root() == ROOTS[3]
    assert copied.root() == ROOTS[4]
    assert grown.size == 8 and grown.root() == ROOTS[8]


def test_extend_consumes_a_generator() -> None:
    """extend() streams: it accepts any iterable, such as a generator over records."""
    grown = extend(Frontier(), (leaf for leaf in LEAVES))
    assert grown.root() == ROOTS[8]


@pytest.mark.parametrize(
    ("size", "hashes"),
    [(-1, []), (1, []), (2, [SOME_HASH, SOME_HASH]), (1, [b"short"]), (3, [SOME_HASH, SOME_HASH[:31]])],
)
def test_frontier_from_hashes_rejects_impossible_states(size: int, hashes: list[bytes]) -> None:
    """from_hashes needs one 32-byte hash per set bit of a non-negative size."""
    with pytest.raises(ValueError):
        Frontier.from_hashes(size, hashes)


def test_generators_reject_non_hashes() -> None:
    """root, Frontier.append and the proof generators refuse leaves that are not 32 bytes."""
    with pytest.raises(ValueError, match="leaf 1"):
        root([SOME_HASH, b"data, not a hash"])
    with pytest.raises(ValueError):
        Frontier().append(b"x" * 31)
    with pytest.raises(ValueError):
        inclusion_proof([SOME_HASH, b""], 0)
    with pytest.raises(ValueError):
        consistency_proof([b""], 0)


# --- inclusion ---------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), KNOWN_INCLUSION)
def test_inclusion_proofs_match_published_vectors(index: int, size: int, proof: list[bytes]) -> None:
    """Generated inclusion proofs equal the published ones and verify against the known root."""
    assert inclusion_proof(LEAVES[:size], index) == proof
    assert verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("index", "size", "proof"), [p for p in KNOWN_INCLUSION if p[2]])
def test_corrupted_published_inclusion_proofs_fail(index: int, size: int, proof: list[bytes]) -> None:
    """The transparency-dev corruption probes (index, size, leaf, root, extra/missing nodes) all fail."""
    leaf, good_root = LEAVES[index], ROOTS[size]
    probes = [
        (leaf, index - 1, size, proof, good_root),
        (leaf, index + 1, size, proof, good_root),
        (leaf, index ^ 2, size, proof, good_root),
        (leaf, index, size * 2, proof, good_root),
        (leaf, index, size // 2, proof, good_root),
        (SOME_HASH, index, size, proof, good_root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, good_root], good_root),
        (leaf, index, size, [good_root, *proof], good_root),
        (leaf, index, size, proof[:-1], good_root),
        (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], good_root),
        (leaf, index, size, [*proof, b""], good_root),
    ]
    for args in probes:
        assert not verify_inclusion(*args), args


def test_c2sp_seven_entry_inclusion_examples() -> None:
    """The C2SP merkle-tree.md 7-entry examples: d[0]:[b,i,l], d[3]:[c,h,l], d[4]:[f,g,k], d[6]:[j,k]."""
    a, b, c, d, e, f, g = distinct_leaves(7)
    h, i, j = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, l_ = node_hash(h, i), node_hash(j, g)
    leaves = [a, b, c, d, e, f, g]
    assert inclusion_proof(leaves, 0) == [b, i, l_]
    assert inclusion_proof(leaves, 3) == [c, h, l_]
    assert inclusion_proof(leaves, 4) == [f, g, k]
    assert inclusion_proof(leaves, 6) == [j, k]
    assert root(leaves) == node_hash(k, l_)


def test_single_leaf_tree_inclusion() -> None:
    """In a one-leaf tree the root is the leaf hash and the proof is empty."""
    assert verify_inclusion(SOME_HASH, 0, 1, [], SOME_HASH)
    assert not verify_inclusion(SOME_HASH, 0, 1, [], EMPTY_ROOT)
    assert not verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1), (8, 8)])
def test_inclusion_index_out_of_range_is_false(index: int, size: int) -> None:
    """An index outside 0..size-1 (including any index in an empty tree) never verifies."""
    assert not verify_inclusion(SOME_HASH, index, size, [], SOME_HASH)
    assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


def test_inclusion_verifier_never_raises_on_garbage() -> None:
    """Non-hash proof items, leaf or root make the verifier return False, not raise."""
    garbage: list[object] = [None, "text", b"", 7]
    for item in garbage:
        assert not verify_inclusion(LEAVES[0], 0, 8, [item, NODES[1][1], NODES[2][1]], ROOTS[8])  # type: ignore[list-item]
        assert not verify_inclusion(item, 0, 1, [], ROOTS[1])  # type: ignore[arg-type]
        assert not verify_inclusion(LEAVES[0], 0, 1, [], item)  # type: ignore[arg-type]


def test_inclusion_proof_generator_rejects_bad_index() -> None:
    """inclusion_proof raises ValueError for an index outside the tree."""
    for index in (-1, 8):
        with pytest.raises(ValueError):
            inclusion_proof(LEAVES, index)


@given(st.data())
def test_every_inclusion_proof_verifies_and_matches_the_rfc(data: st.DataObject) -> None:
    """For any size and index, the proof equals the RFC's PATH and verifies."""
    n = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, n - 1))
    leaves = distinct_leaves(n)
    proof = inclusion_proof(leaves, index)
    assert proof == ref_path(index, leaves)
    assert verify_inclusion(leaves[index], index, n, proof, root(leaves))


@given(st.data())
def test_inclusion_fails_with_any_single_bit_flipped(data: st.DataObject) -> None:
    """Flipping one bit of the leaf, the root or any proof node makes verification fail."""
    n = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, n - 1))
    leaves = distinct_leaves(n)
    proof, good_root = inclusion_proof(leaves, index), root(leaves)
    bit = data.draw(st.integers(0, 255))
    assert not verify_inclusion(flip(leaves[index], bit), index, n, proof, good_root)
    assert not verify_inclusion(leaves[index], index, n, proof, flip(good_root, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
        assert not verify_inclusion(leaves[index], index, n, bad, good_root)


@given(st.data())
def test_inclusion_fails_for_wrong_index(data: st.DataObject) -> None:
    """A valid proof presented for any other index of the same tree fails."""
    n = data.draw(st.integers(2, 300))
    index = data.draw(st.integers(0, n - 1))
    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    leaves = distinct_leaves(n)
    proof = inclusion_proof(leaves, index)
    assert not verify_inclusion(leaves[index], other, n, proof, root(leaves))


@given(st.data())
def test_inclusion_fails_for_wrong_size_with_other_path_length(data: st.DataObject) -> None:
    """A proof presented under a tree size whose path has another length fails.

    (Two sizes can share a path shape, e.g. index 0 in sizes 3 and 4; there the
    signed root, not the verifier, binds the size.)
    """
    n = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, n - 1))
    wrong = data.draw(st.integers(0, 600).filter(lambda s: s != n))
    leaves = distinct_leaves(n)
    proof = inclusion_proof(leaves, index)
    if index < wrong and ref_path_length(index, wrong) == len(proof):
        return
    assert not verify_inclusion(leaves[index], index, wrong, proof, root(leaves))


# --- consistency -------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "proof"), KNOWN_CONSISTENCY)
def test_consistency_proofs_match_published_vectors(old: int, new: int, proof: list[bytes]) -> None:
    """Generated consistency proofs equal the published ones and verify against the known roots."""
    assert consistency_proof(LEAVES[:new], old) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize(("old", "new", "proof"), [p for p in KNOWN_CONSISTENCY if p[2]])
def test_corrupted_published_consistency_proofs_fail(old: int, new: int, proof: list[bytes]) -> None:
    """The transparency-dev corruption probes (sizes, roots, extra/missing/flipped nodes) all fail."""
    r1, r2 = ROOTS[old], ROOTS[new]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, SOME_HASH, r2, proof),
        (old, new, r1, SOME_HASH, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    probes += [(old, new, r1, r2, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]]) for i in range(len(proof))]
    for args in probes:
        assert not verify_consistency(*args), args


def test_c2sp_seven_entry_consistency_examples() -> None:
    """The C2SP merkle-tree.md examples: 3->7 [c,d,h,l], 4->7 [l], 6->7 [j,g,k]."""
    a, b, c, d, e, f, g = distinct_leaves(7)
    h, i, j = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, l_ = node_hash(h, i), node_hash(j, g)
    leaves = [a, b, c, d, e, f, g]
    assert consistency_proof(leaves, 3) == [c, d, h, l_]
    assert consistency_proof(leaves, 4) == [l_]
    assert consistency_proof(leaves, 6) == [j, g, k]


def test_consistency_edge_cases() -> None:
    """Equal sizes need an empty proof and equal roots; size 0 needs the empty root; no time travel."""
    r = ROOTS[1]
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    assert verify_consistency(1, 1, r, r, [])
    assert verify_consistency(8, 8, ROOTS[8], ROOTS[8], [])
    false_cases = [
        (0, 0, EMPTY_ROOT, SOME_HASH, []),  # roots differ
        (0, 0, SOME_HASH, SOME_HASH, []),  # not the empty tree's root
        (0, 5, SOME_HASH, ROOTS[5], []),  # "empty" old tree with a made-up root
        (0, 5, EMPTY_ROOT, ROOTS[5], [EMPTY_ROOT]),  # proof must be empty
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (1, 1, r, r, [EMPTY_ROOT]),
        (1, 1, r, SOME_HASH, []),
        (1, 0, r, EMPTY_ROOT, []),  # time travel
        (2, 1, ROOTS[2], r, []),
        (-1, 1, EMPTY_ROOT, r, []),
        (1, 2, r, ROOTS[2], []),  # empty proof for a real extension
        (1, 1, b"short", b"short", []),
    ]
    for args in false_cases:
        assert not verify_consistency(*args), args


def test_consistency_verifier_never_raises_on_garbage() -> None:
    """Non-hash proof items or roots make the verifier return False, not raise."""
    garbage: list[object] = [None, "text", b"", 3]
    for item in garbage:
        assert not verify_consistency(2, 5, ROOTS[2], ROOTS[5], [item, NODES[0][4]])  # type: ignore[list-item]
        assert not verify_consistency(2, 5, item, ROOTS[5], [NODES[1][1], NODES[0][4]])  # type: ignore[arg-type]


def test_consistency_proof_generator_rejects_bad_old_size() -> None:
    """consistency_proof raises ValueError for an old size outside 0..n; 0 and n give []."""
    for old in (-1, 9):
        with pytest.raises(ValueError):
            consistency_proof(LEAVES, old)
    assert consistency_proof(LEAVES, 0) == [] == consistency_proof(LEAVES, 8)


def test_every_consistency_proof_up_to_48_leaves_verifies() -> None:
    """Exhaustively for all 0 <= m <= n <= 48: the proof equals the RFC's and verifies."""
    leaves = distinct_leaves(48)
    roots = [root(leaves[:n]) for n in range(49)]
    for n in range(49):
        for m in range(n + 1):
            proof = consistency_proof(leaves[:n], m)
            if 0 < m < n:
                assert proof == ref_subproof(m, leaves[:n], True)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)


@given(st.data())
@settings(max_examples=200)
def test_consistency_fails_if_either_root_or_any_node_is_altered(data: st.DataObject) -> None:
    """For any 0 < m <= n, flipping a bit of the old root, new root or any node fails.

    (m = 0 is excluded for the new root: every tree extends the empty tree.)
    """
    n = data.draw(st.integers(1, 1000))
    m = data.draw(st.integers(1, n))
    bit = data.draw(st.integers(0, 255))
    leaves = distinct_leaves(n)
    old_root, new_root = root(leaves[:m]), root(leaves)
    proof = consistency_proof(leaves, m)
    assert verify_consistency(m, n, old_root, new_root, proof)
    assert not verify_consistency(m, n, flip(old_root, bit), new_root, proof)
    assert not verify_consistency(m, n, old_root, flip(new_root, bit), proof)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
        assert not verify_consistency(m, n, old_root, new_root, bad)


@given(st.data())
def test_consistency_fails_against_a_diverged_history(data: st.DataObject) -> None:
    """If one leaf before m differs between the old and new tree, no honest proof passes."""
    n = data.draw(st.integers(2, 500))
    m = data.draw(st.integers(1, n - 1))
    changed = data.draw(st.integers(0, m - 1))
    leaves = distinct_leaves(n)
    rewritten = [*leaves[:changed], SOME_HASH, *leaves[changed + 1 :]]
    proof = consistency_proof(rewritten, m)
    assert not verify_consistency(m, n, root(leaves[:m]), root(rewritten), proof)


@given(st.integers(0, 400), st.integers(0, 400))
def test_frontier_extension_proves_a_month_extends_the_last(old: int, added: int) -> None:
    """Old frontier + new leaves reproduces the new root; a frontier from another history does not."""
    leaves = distinct_leaves(old + added)
    start = extend(Frontier(), leaves[:old])
    assert start.root() == root(leaves[:old])
    assert extend(start, leaves[old:]).root() == root(leaves)
    if old:
        forged = extend(Frontier(), [SOME_HASH, *leaves[1:old]])
        assert extend(forged, leaves[old:]).root() != root(leaves)


def test_module_exports_hash_size() -> None:
    """HASH_SIZE is the SHA-256 digest size that every hash argument must have."""
    assert merkle.HASH_SIZE == 32 == len(EMPTY_ROOT)


@given(st.integers(0, 100), st.lists(st.binary(min_size=32, max_size=32), max_size=150))
def test_frontier_append_many_is_append_in_turn(start: int, leaves: list[bytes]) -> None:
    """`Frontier.append_many(leaves)` (the writer's one call per batch) leaves the frontier exactly as appending
    each leaf in turn does, from any size."""
    one_by_one = merkle.extend(Frontier(), distinct_leaves(start))
    batched = one_by_one.copy()
    for leaf in leaves:
        one_by_one.append(leaf)
    batched.append_many(leaves)
    assert batched == one_by_one


def test_frontier_append_many_refuses_a_bad_leaf_before_appending_any() -> None:
    """A leaf that is not a 32-byte hash anywhere in the batch: ValueError naming its position, and the
    frontier unchanged (all or nothing)."""
    frontier = merkle.extend(Frontier(), LEAVES[:3])
    before = frontier.copy()
    with pytest.raises(ValueError, match="leaf 5 is not a 32-byte hash"):
        frontier.append_many([LEAVES[3], LEAVES[4], b"short"])
    for bad in (bytearray(LEAVES[5]), LEAVES[5].hex()[:32], None, b"x" * 33):  # of 32 items, or not bytes at all
        with pytest.raises(ValueError, match="leaf 4 is not a 32-byte hash"):
            frontier.append_many([LEAVES[3], bad])  # type: ignore[list-item]
    assert frontier == before
    # A bytes subclass of 32 bytes is a hash (as `append` has it), past the exact-type fast check.
    frontier.append_many([LEAVES[3], type("Leaf", (bytes,), {})(LEAVES[4])])
    assert frontier == merkle.extend(Frontier(), LEAVES[:5])


def _cut(start: int, end: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) cut at the multiples of `chunk` (as the record pass cuts a range)."""
    cuts = [start, *range((start // chunk + 1) * chunk, end, chunk), end]
    return [(a, b) for a, b in itertools.pairwise(cuts) if a < b]


@settings(max_examples=300, deadline=None)
@given(sizes=st.tuples(st.integers(0, 300), st.integers(0, 300)), chunk=st.sampled_from([1, 2, 3, 4, 8, 64]))
def test_a_frontier_grown_a_subtree_at_a_time_is_the_leaf_by_leaf_one(sizes: tuple[int, int], chunk: int) -> None:
    """`append_subtree` of each chunk's `subtrees_of` (aligned, fewest, each with its MTH) gives the frontier
    that appending the leaves one by one gives, for any start, end and chunk size; and a frontier rebuilt from
    its own `frontier_subtrees` is the same frontier."""
    start, end = min(sizes), max(sizes)
    leaves = distinct_leaves(end)
    at_start = extend(Frontier(), leaves[:start])
    rebuilt = Frontier()
    for subtree in merkle.frontier_subtrees(at_start):
        rebuilt = merkle.append_subtree(rebuilt, subtree)
    assert rebuilt == at_start
    frontier = at_start
    for a, b in _cut(start, end, chunk):
        subtrees = merkle.subtrees_of(a, b"".join(leaves[a:b]))
        assert [(lo, size) for lo, size, _ in subtrees] == merkle.aligned_ranges(a, b)
        assert sum(size for _, size, _ in subtrees) == b - a
        for lo, size, node in subtrees:
            assert lo % size == 0 and size & (size - 1) == 0 and node == root(leaves[lo : lo + size])
            frontier = merkle.append_subtree(frontier, (lo, size, node))
    assert frontier == extend(Frontier(), leaves)


@settings(max_examples=300, deadline=None)
@given(sizes=st.tuples(st.integers(0, 300), st.integers(0, 300)), chunk=st.sampled_from([1, 2, 3, 4, 8, 64]))
def test_the_roots_of_a_proof_from_tiling_subtrees_are_the_rfc_ones(sizes: tuple[int, int], chunk: int) -> None:
    """`range_root` over a frontier's subtrees and then the chunks' aligned ones gives each range's MTH: the
    whole PROOF(start, end) as `consistency_proof` makes it from the leaves; from the start frontier's alone, the
    start tree's root and its last subtree's. A range they do not tile is refused (ValueError)."""
    start, end = min(sizes), max(sizes)
    leaves = distinct_leaves(end)
    subtrees = merkle.frontier_subtrees(extend(Frontier(), leaves[:start]))
    for a, b in _cut(start, end, chunk):
        subtrees += merkle.subtrees_of(a, b"".join(leaves[a:b]))
    if 0 < start < end:
        ranges = _consistency_ranges(start, end)
        assert [merkle.range_root(subtrees, lo, hi) for lo, hi in ranges] == consistency_proof(leaves, start)
    if start:
        edge = merkle.frontier_subtrees(extend(Frontier(), leaves[:start]))
        assert merkle.range_root(edge, 0, start) == root(leaves[:start])
        lo = start - (start & -start)  # the last subtree of the frontier, then the range from just before it
        assert merkle.range_root(edge, lo, start) == root(leaves[lo:start])
    if start > 1:  # a range cutting through the first subtree is not tiled
        with pytest.raises(ValueError, match="not tiled"):
            merkle.range_root(subtrees, 1, start)


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges of PROOF(old, new) in proof order, from `consistency_path` itself."""
    ranges: list[tuple[int, int]] = []

    def subtree(lo: int, hi: int) -> bytes:
        ranges.append((lo, hi))
        return SOME_HASH

    merkle.consistency_path(old, new, subtree)
    return ranges[::-1]
