"""Backfill commits page by page (bridge/sources/matrix/backfill.py) against a real Synapse."""

from __future__ import annotations

import pytest

from bridge.events import Event
from tests.support.officials import OfficialFactory, ok
from tests.test_matrix_source import Bot, MemorySink, bot, wait_event

__all__ = ["bot"]  # the fixture, re-used from the source tests

pytestmark = pytest.mark.synapse

PAGE = 25


def check_gap_commits(commits: list[tuple[list[Event], str | None]], room_id: str, bodies: list[str]) -> None:
    """The gap's messages arrive oldest first in pages of at most PAGE events committed without a
    cursor, and the first commit that stores a cursor comes after the last page."""
    pages = [i for i, (events, cursor) in enumerate(commits) if cursor is None and events]
    assert len(pages) >= len(bodies) // PAGE, "the gap was not committed page by page"
    assert all(len(commits[i][0]) <= PAGE for i in pages)
    assert all(cursor is None for _, cursor in commits[pages[0] : pages[-1] + 1]), "cursor advanced mid-gap"
    final_events, final_cursor = commits[pages[-1] + 1]
    assert final_cursor is not None and any(e.conversation == room_id for e in final_events)
    stream = [e.content.get("body") for events, _ in commits for e in events if e.conversation == room_id]
    captured = [b for b in stream if b in set(bodies)]
    assert captured == bodies, "gap not stored exactly once, oldest first"


async def test_history_and_limited_gap_commit_page_by_page(bot: Bot, official: OfficialFactory) -> None:
    """A room's history on joining and a long `limited` gap after downtime are each committed one
    /messages page at a time, oldest first, with the stored cursor left alone until the sync batch
    that follows the whole gap: memory is bounded by the page, and a crash mid-gap loses nothing."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    room_id = await alice.create_room(encrypted=False)
    history = [f"geschiedenis {i}" for i in range(110)]
    for body in history:
        await alice.send_text(room_id, body)

    sink = MemorySink()
    await bot.start(sink, backfill_page=PAGE, timeline_limit=5)
    ok(await alice.client.room_invite(room_id, bot.user_id))
    await alice.wait_member(room_id, bot.user_id)
    await wait_event(sink, await alice.send_text(room_id, "na de uitnodiging"))
    check_gap_commits(sink.commits, room_id, history)

    await bot.stop()
    before = len(sink.commits)
    downtime = [f"tijdens {i}" for i in range(80)]
    for body in downtime:
        await alice.send_text(room_id, body)
    await bot.start(sink, backfill_page=PAGE, timeline_limit=5)
    await wait_event(sink, await alice.send_text(room_id, "weer terug"))
    check_gap_commits(sink.commits[before:], room_id, downtime[:-5])
