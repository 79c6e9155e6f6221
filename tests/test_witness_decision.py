"""Properties of the witness's add-checkpoint decision (`Witness.add_checkpoint`, no HTTP): an honest log
is always cosigned, a forked one never, and a refusal changes nothing."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log import checkpoint, keys, merkle
from bridge.witness.note import CosignerKey, parse_vkey
from bridge.witness.request import AddCheckpoint
from bridge.witness.server import Witness
from bridge.witness.state import WitnessState

LOG = keys.generate(b"\x07" * 16)
WITNESS_KEY = CosignerKey.generate("w.example/prop")


def signed(leaves: list[bytes]) -> str:
    cp = checkpoint.Checkpoint(LOG.key_name, len(leaves), merkle.root(leaves), timestamp_ms=len(leaves))
    return checkpoint.sign_checkpoint(cp, LOG.key_name, LOG.signing_key)


def request(leaves: list[bytes], old: int) -> bytes:
    return AddCheckpoint(old, tuple(merkle.consistency_proof(leaves, old)), signed(leaves)).encode()


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.integers(0, 17), min_size=1, max_size=6),
    fork_index=st.integers(0, 10**6),
    fork_growth=st.integers(0, 9),
)
def test_honest_growth_is_cosigned_and_any_fork_refused(steps: list[int], fork_index: int, fork_growth: int) -> None:
    """Growing by any steps (0 included: the same checkpoint again) is cosigned each time; then a tree that
    differs in one earlier leaf, at the same or a larger size, is refused with 422 and evidence, and the
    witness still cosigns the honest log from the size it held."""

    async def go(tmp: Path) -> None:
        state = WitnessState(tmp / "s.sqlite3", tmp / "evidence")
        w = Witness(WITNESS_KEY, {LOG.key_name: (parse_vkey(LOG.vkey()),)}, state)
        leaves: list[bytes] = []
        old = 0
        for grow in steps:
            leaves += [os.urandom(32) for _ in range(grow)]
            reply = await w.add_checkpoint(request(leaves, old))
            assert reply.status == 200, reply.text
            old = len(leaves)
        if not leaves:
            return
        forked = list(leaves)
        i = fork_index % len(forked)
        forked[i] = bytes(b ^ 1 for b in forked[i])
        forked += [os.urandom(32) for _ in range(fork_growth)]
        reply = await w.add_checkpoint(request(forked, old))
        assert reply.status == 422 and reply.evidence is not None and reply.evidence.exists()
        assert (await w.add_checkpoint(AddCheckpoint(0, (), signed(forked)).encode())).status == 409
        leaves.append(os.urandom(32))
        assert (await w.add_checkpoint(request(leaves, old))).status == 200
        state.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp)))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 40), old=st.integers(1, 40), wrong=st.integers(0, 10**6))
def test_a_wrong_proof_never_passes(size: int, old: int, wrong: int) -> None:
    """Any single proof hash altered, or a proof for the wrong old size: never cosigned."""
    old = min(old, size)

    async def go(tmp: Path) -> None:
        state = WitnessState(tmp / "s.sqlite3", tmp / "evidence")
        w = Witness(WITNESS_KEY, {LOG.key_name: (parse_vkey(LOG.vkey()),)}, state)
        leaves = [os.urandom(32) for _ in range(size)]
        assert (await w.add_checkpoint(request(leaves[:old], 0))).status == 200
        proof = merkle.consistency_proof(leaves, old)
        if proof:
            j = wrong % len(proof)
            proof[j] = bytes(b ^ 0x80 for b in proof[j])
        else:
            proof = [os.urandom(32)]  # an empty proof was right: any hash is wrong
        reply = await w.add_checkpoint(AddCheckpoint(old, tuple(proof), signed(leaves)).encode())
        assert reply.status == 422
        state.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp)))
