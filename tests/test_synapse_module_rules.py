"""The archiver module's pure decisions (synapse-module/chatarchief_synapse/rules.py), without Synapse."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.dev.synapse import SYNAPSE_MODULE_DIR

sys.path.insert(0, str(SYNAPSE_MODULE_DIR))
from chatarchief_synapse.rules import Action, guard, initial_invites, parse, reaction

ARCHIVER = "@archive:example.org"
POLICY = parse({"archiver": ARCHIVER, "officials": ["@minister:example.org"], "admins": ["@admin:example.org"]})
ALL_LOCAL = parse({"archiver": ARCHIVER, "all_local_users": True}).with_server("example.org")

users = st.sampled_from(
    [ARCHIVER, "@minister:example.org", "@admin:example.org", "@mallory:example.org", "@eve:evil.example"]
)
memberships = st.sampled_from(["join", "invite", "leave", "ban", "knock", None])


@given(sender=users, membership=st.sampled_from(["leave", "ban"]), current=st.sampled_from(["join", "invite"]))
def test_no_one_but_an_admin_removes_a_present_archiver(sender: str, membership: str, current: str) -> None:
    """Whoever sends it, a leave or ban of a joined or officially invited archiver is refused unless by an admin."""
    refusal = guard(POLICY, ARCHIVER, membership, sender, current, "@minister:example.org")
    assert (refusal is None) == (sender == "@admin:example.org")


def test_the_archiver_may_decline_an_outsiders_invite_only() -> None:
    """Declining is how the bot refuses strangers' rooms; an official's invite cannot be declined."""
    assert guard(POLICY, ARCHIVER, "leave", ARCHIVER, "invite", "@mallory:example.org") is None
    assert guard(POLICY, ARCHIVER, "leave", ARCHIVER, "invite", "@minister:example.org") is not None


@given(state_key=users, membership=memberships, sender=users, current=memberships)
def test_changes_to_other_users_are_never_guarded(
    state_key: str, membership: str | None, sender: str, current: str | None
) -> None:
    """The guard only ever concerns the archiver's own membership."""
    if state_key != ARCHIVER:
        assert guard(POLICY, state_key, str(membership), sender, current) is None


def test_official_rooms_get_the_archiver_in_the_initial_invites() -> None:
    """An official's createRoom gains the archiver (once); anyone else's is left alone."""
    assert initial_invites(POLICY, "@minister:example.org", ["@x:example.org"]) == ["@x:example.org", ARCHIVER]
    assert initial_invites(POLICY, "@minister:example.org", [ARCHIVER]) is None
    assert initial_invites(POLICY, "@mallory:example.org", []) is None
    assert initial_invites(ALL_LOCAL, "@anyone:example.org", []) == [ARCHIVER]
    assert initial_invites(ALL_LOCAL, "@remote:other.example", []) is None
    assert initial_invites(ALL_LOCAL, ARCHIVER, []) is None


@given(current=memberships)
def test_an_official_joining_brings_the_archiver(current: str | None) -> None:
    """An official's join: invite+join when the archiver is absent, join when invited, nothing when in or banned."""
    action = reaction(
        POLICY, "@minister:example.org", "join", "@minister:example.org", current, covered_at_creation=False
    )
    expected = {"join": None, "ban": None, "invite": Action.JOIN}.get(str(current), Action.INVITE_AND_JOIN)
    assert action is expected


def test_invites_are_followed_by_a_join_only_from_officials_and_admins() -> None:
    """The module joins the archiver on an official's or admin's invite; a stranger's invite is the bot's call."""
    for inviter, expected in [
        ("@minister:example.org", Action.JOIN),
        ("@admin:example.org", Action.JOIN),
        ("@mallory:example.org", None),
    ]:
        assert reaction(POLICY, ARCHIVER, "invite", inviter, None, covered_at_creation=False) is expected


def test_creation_is_not_covered_twice_and_outsiders_are_ignored() -> None:
    """The creator's first join was covered by createRoom; a non-official's join triggers nothing."""
    assert (
        reaction(POLICY, "@minister:example.org", "join", "@minister:example.org", None, covered_at_creation=True)
        is None
    )
    assert (
        reaction(POLICY, "@mallory:example.org", "join", "@mallory:example.org", None, covered_at_creation=False)
        is None
    )


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({}, "'archiver'"),
        ({"archiver": "archive"}, "'archiver' must be a full Matrix user id"),
        ({"archiver": ARCHIVER}, "set 'officials'"),
        ({"archiver": ARCHIVER, "officials": "@a:b"}, "'officials' must be a list"),
        ({"archiver": ARCHIVER, "all_local_users": "yes"}, "true or false"),
        ({"archiver": ARCHIVER, "all_local_users": True, "admin": []}, "unknown config key 'admin'"),
    ],
)
def test_bad_config_is_one_clear_line(raw: dict[str, object], needle: str) -> None:
    """Synapse refuses to start with a one-line reason naming the key."""
    with pytest.raises(ValueError, match=needle) as info:
        parse(raw)
    assert "\n" not in str(info.value)
