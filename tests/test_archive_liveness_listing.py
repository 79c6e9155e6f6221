"""proof/liveness.json: the month's gaps and heartbeats, derived from its records and re-derived on verify."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.gaps import LISTING_REL, Listing
from bridge.archive.package import snapshot
from bridge.archive.range import Month, window
from bridge.events import MATRIX, ConversationId
from bridge.liveness import heartbeat_notice, restart_gap
from bridge.log import store as store_module
from bridge.log.store import LogStore
from bridge.sources.outage import Outage, gap_notice
from bridge.withhold import withhold
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, ROOM_A, append, create_archive_log, event, ms, seal_for
from tests.test_archive_forgery import rebag, verify

MARCH = Month(2024, 3)
QUARTER = 15 * 60 * 1000


def beat(at: int) -> Any:
    return heartbeat_notice(at, QUARTER, ms(2024, 3, 1, 9))


@pytest.fixture(scope="module")
def march(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LogDir, Path]]:
    """March 2024: heartbeats on the 2nd, the bot dead from the 2nd to the 9th (restart gap), one heartbeat
    on the 9th, a homeserver outage in room alpha on the 15th, chat, then nothing until the month's end."""
    tmp = tmp_path_factory.mktemp("liveness")
    log = create_archive_log(tmp)
    hs_outage = Outage(ms(2024, 3, 15, 10), "homeserver_unreachable")
    with pytest.MonkeyPatch.context() as mp:
        append(
            log,
            mp,
            [
                (ms(2024, 3, 2), [beat(ms(2024, 3, 2)), event(1, body="maart")]),
                (ms(2024, 3, 2, 13), [beat(ms(2024, 3, 2) + QUARTER), beat(ms(2024, 3, 2) + 2 * QUARTER)]),
                (ms(2024, 3, 9), [restart_gap(ms(2024, 3, 2) + 2 * QUARTER, ms(2024, 3, 9), 4), beat(ms(2024, 3, 9))]),
                (
                    ms(2024, 3, 15, 11),
                    [
                        gap_notice(MATRIX, ConversationId(ROOM_A), hs_outage, ms(2024, 3, 15, 11), {"homeserver": "x"}),
                        event(2, body="weer terug"),
                    ],
                ),
            ],
        )
    out = tmp / "pkg" / "march"
    yield log, snapshot(log.data_dir, log.keys, MARCH, out, OPTIONS, seal=seal_for(log)).path


@pytest.fixture
def pkg(march: tuple[LogDir, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "forged"
    shutil.copytree(march[1], dst)
    return dst


def listing_of(path: Path) -> dict[str, Any]:
    d = orjson.loads((path / "data" / LISTING_REL).read_bytes())
    assert isinstance(d, dict)
    return d


def test_the_package_lists_every_gap_with_kind_span_conversation_and_seq(march: tuple[LogDir, Path]) -> None:
    """Both gaps of the month are listed, in record order, with their kind, span, conversation and record seq;
    and the package verifies."""
    log, path = march
    gaps = listing_of(path)["gaps"]
    assert [g["kind"] for g in gaps] == ["bot_not_running", "homeserver_unreachable"]
    code, out = verify(log, path)
    assert code == 0 and "2 capture gaps, 4 heartbeats" in out, out
    restart, outage = gaps
    assert (restart["start_ms"], restart["end_ms"]) == (ms(2024, 3, 2) + 2 * QUARTER, ms(2024, 3, 9))
    assert (restart["source"], restart["conversation"]) == ("chatarchief", "liveness")
    assert (outage["start_ms"], outage["end_ms"]) == (ms(2024, 3, 15, 10), ms(2024, 3, 15, 11))
    assert (outage["source"], outage["conversation"]) == ("matrix", ROOM_A)
    assert restart["seq"] < outage["seq"]
    code, out = verify(log, path)
    assert code == 0, out


def test_heartbeats_show_the_longest_silence_a_dead_bot_leaves(march: tuple[LogDir, Path]) -> None:
    """Four heartbeats; the longest silence runs from the last one (the 9th) to the month's end: the bot stopped
    beating, which a month that is merely quiet (beats every 15 minutes) never shows."""
    hb = listing_of(march[1])["heartbeats"]
    assert hb["count"] == 4
    assert (hb["first_ms"], hb["last_ms"]) == (ms(2024, 3, 2), ms(2024, 3, 9))
    assert hb["declared_interval_ms"] == [QUARTER]
    end = window(MARCH, "Europe/Amsterdam").end_ms
    assert (hb["longest_silence_from_ms"], hb["longest_silence_to_ms"]) == (ms(2024, 3, 9), end)
    assert hb["longest_silence_ms"] == end - ms(2024, 3, 9)


def test_a_quiet_month_with_a_live_bot_has_short_silences_only() -> None:
    """A month without chat but with a heartbeat every 15 minutes: the longest silence is one interval."""
    win = window(MARCH, "Europe/Amsterdam")
    listing = Listing()
    for i, at in enumerate(range(win.start_ms, win.end_ms, QUARTER)):
        listing.add(i, beat(at))
    hb = listing.heartbeats(win, win.end_ms + 1)
    assert hb["count"] == (win.end_ms - win.start_ms) // QUARTER
    assert hb["longest_silence_ms"] == QUARTER
    assert listing.heartbeats(win, win.end_ms)["longest_silence_ms"] == QUARTER


def test_a_month_without_any_heartbeat_is_one_silence() -> None:
    """No heartbeat at all (the bot dead all month): one silence spanning the whole window."""
    win = window(MARCH, "Europe/Amsterdam")
    hb = Listing().heartbeats(win, win.end_ms)
    assert hb["count"] == 0 and hb["first_ms"] is None
    assert hb["longest_silence_ms"] == win.end_ms - win.start_ms


def test_chat_notices_from_officials_are_not_heartbeats() -> None:
    """A Matrix notice whose content claims to be a heartbeat is not one: only the bot's own source counts."""
    forged = event(9, kind=beat(0).kind, content={"notice": "heartbeat", "interval_ms": 1})
    listing = Listing()
    listing.add(9, forged)
    assert listing.empty


@given(st.lists(st.integers(min_value=0, max_value=31 * 86_400_000), max_size=40, unique=True), st.randoms())
def test_the_listing_does_not_depend_on_the_order_records_are_fed(offsets: list[int], rnd: random.Random) -> None:
    """The writer feeds records in log order, verify-package dossier by dossier: same bytes either way, and the
    longest silence is at least every interval between consecutive proofs."""
    win = window(MARCH, "Europe/Amsterdam")
    items = [(seq, beat(win.start_ms + off)) for seq, off in enumerate(offsets)]
    items += [(100 + i, restart_gap(win.start_ms + o, win.start_ms + o + 5, 0)) for i, o in enumerate(offsets[:3])]
    a, b = Listing(), Listing()
    for seq, e in items:
        a.add(seq, e)
    shuffled = items[:]
    rnd.shuffle(shuffled)
    for seq, e in shuffled:
        b.add(seq, e)
    assert a.to_json(win, win.end_ms) == b.to_json(win, win.end_ms)
    points = sorted({win.start_ms, win.end_ms, *(min(win.start_ms + o, win.end_ms) for o in offsets)})
    longest = a.heartbeats(win, win.end_ms)["longest_silence_ms"]
    assert all(q - p <= longest for p, q in itertools.pairwise(points))


def _edit(pkg: Path, change: Any) -> None:
    p = pkg / "data" / LISTING_REL
    d = orjson.loads(p.read_bytes())
    change(d)
    p.write_bytes(orjson.dumps(d, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
    rebag(pkg)


def test_a_gap_removed_from_the_listing_is_caught(march: tuple[LogDir, Path], pkg: Path) -> None:
    """An insider hides the bot's week-long outage from the listing (bag rebuilt): verify-package exits 1."""
    _edit(pkg, lambda d: d["gaps"].pop(0))
    code, out = verify(march[0], pkg)
    assert code == 1 and LISTING_REL in out, out


def test_a_shortened_silence_in_the_listing_is_caught(march: tuple[LogDir, Path], pkg: Path) -> None:
    """Heartbeat figures made to look like a live bot (more beats, short silence) are caught."""

    def forge(d: dict[str, Any]) -> None:
        d["heartbeats"]["count"] = 2900
        d["heartbeats"]["longest_silence_ms"] = QUARTER

    _edit(pkg, forge)
    code, out = verify(march[0], pkg)
    assert code == 1 and LISTING_REL in out, out


def test_a_deleted_listing_is_caught(march: tuple[LogDir, Path], pkg: Path) -> None:
    """The listing removed (bag rebuilt without it): the records give one, so it is missing."""
    (pkg / "data" / LISTING_REL).unlink()
    rebag(pkg)
    code, out = verify(march[0], pkg)
    assert code == 1 and LISTING_REL in out, out


def test_a_withheld_gap_notice_is_listed_as_withheld_and_cannot_be_dropped(tmp_path: Path) -> None:
    """An insider withholds a gap notice (a decision, in the package): the gap leaves the listing, but the
    withheld record is listed with its conversation and decision, so the listing says where it cannot see;
    removing that entry (bag rebuilt) is caught."""
    log = create_archive_log(tmp_path)
    outage = Outage(ms(2024, 4, 10, 10), "homeserver_unreachable")
    gap = gap_notice(MATRIX, ConversationId(ROOM_A), outage, ms(2024, 4, 10, 11), {})

    async def hide() -> int:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            done = await withhold(
                store,
                str(gap.event_id),
                "ongemakkelijk",
                "insider",
                data_dir=log.data_dir,
                clock=lambda: ms(2024, 4, 12),
            )
            return done.seq

    with pytest.MonkeyPatch.context() as mp:
        append(log, mp, [(ms(2024, 4, 10, 11), [beat(ms(2024, 4, 10, 11)), gap, event(1)])], seal=False)
        mp.setattr(store_module, "now_ms", lambda: ms(2024, 4, 12))
        decision_seq = asyncio.run(hide())
    path = snapshot(log.data_dir, log.keys, Month(2024, 4), tmp_path / "april", OPTIONS, seal=seal_for(log)).path
    listing = listing_of(path)
    assert listing["gaps"] == []
    (withheld,) = listing["withheld"]
    assert (withheld["conversation"], withheld["decision_seq"]) == (ROOM_A, decision_seq)
    code, out = verify(log, path)
    assert code == 0, out

    _edit(path, lambda d: d["withheld"].clear())
    code, out = verify(log, path)
    assert code == 1 and LISTING_REL in out, out
