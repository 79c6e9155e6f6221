"""The module's spool config and the pure decision of what is spooled (no Synapse)."""

from __future__ import annotations

import base64
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.dev.synapse import SYNAPSE_MODULE_DIR

sys.path.insert(0, str(SYNAPSE_MODULE_DIR))
from chatarchief_synapse.rules import parse, spooled

KEY = base64.b64encode(bytes(range(32))).decode()
BASE = {"archiver": "@a:x", "officials": ["@o:x"]}


@pytest.mark.parametrize(
    "spool",
    [
        {"path": "/s"},
        {"path": "/s", "public_key": KEY, "extra": 1},
        {"path": "", "public_key": KEY},
        {"path": "/s", "public_key": "not base64!"},
        {"path": "/s", "public_key": base64.b64encode(b"short").decode()},
        {"path": "/s", "public_key": KEY, "keep_days": 0},
        {"path": "/s", "public_key": KEY, "keep_days": "7"},
        {"path": "/s", "public_key": KEY, "keep_days": 1.5},
        {"path": "/s", "public_key": KEY, "keep_days": True},
        "/s",
    ],
)
def test_a_bad_spool_config_is_refused_with_one_line(spool: object) -> None:
    """A spool config without both keys, with extra keys, or with a key that is not 32 bytes of base64 is refused."""
    with pytest.raises(ValueError, match="chatarchief_synapse: 'spool"):
        parse({**BASE, "spool": spool})


def test_keep_days_is_optional() -> None:
    """`keep_days` absent: files are kept; given: a whole number of days."""
    spool = parse({**BASE, "spool": {"path": "/s", "public_key": KEY}}).spool
    assert spool is not None and spool.keep_days is None
    spool = parse({**BASE, "spool": {"path": "/s", "public_key": KEY, "keep_days": 30}}).spool
    assert spool is not None and spool.keep_days == 30


def test_without_spool_nothing_is_spooled() -> None:
    """No `spool:` key, no spooling."""
    policy = parse(BASE)
    assert policy.spool is None and not spooled(policy, "join")


@given(membership=st.sampled_from([None, "join", "invite", "leave", "ban"]))
def test_spooled_exactly_the_rooms_the_archiver_is_joined_to(membership: str | None) -> None:
    """Spooled exactly when the archiver is joined, encrypted rooms included (their events as ciphertext)."""
    policy = parse({**BASE, "spool": {"path": "/s", "public_key": KEY}}).with_server("x")
    assert policy.spool is not None and policy.spool.public_key == bytes(range(32))
    assert spooled(policy, membership) is (membership == "join")
