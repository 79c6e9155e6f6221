"""Withholding: decision records, folding, the withhold command and the verifier's view of decisions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bridge.cli import app
from bridge.errors import LogIntegrityError, UsageError
from bridge.events import MATRIX, ConversationId, EncodingError, Event, EventId, Kind, SenderId
from bridge.log import format
from bridge.log.decision import (
    DECISION_SOURCE,
    Decision,
    DecisionError,
    DecisionTarget,
    encode_decision,
    new_decision_id,
    parse_decision,
)
from bridge.log.reader import iter_decisions
from bridge.log.schema import INIT_RECORDS as B  # a new log holds its two key records
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from bridge.policy import Withheld, fold_decisions, withheld_for
from bridge.withhold import current_withheld, withhold
from tests.conftest import LogDir, create_log, make_event

ROOM = "!room:example.org"
OTHER = "!other:example.org"
runner = CliRunner()


def decision(verdict: str, event_id: str = "$e1", conversation: str = ROOM, at_ms: int = 5) -> Decision:
    return Decision(
        new_decision_id(),
        verdict,
        DecisionTarget("matrix", conversation, event_id),
        "privé",
        "archivaris",
        at_ms,  # type: ignore[arg-type]
    )


async def append(log: LogDir, events: list[Event]) -> None:
    async with await LogStore.open(log.data_dir, log.keys) as store:
        await store.append_events(events)
        await store.checkpoint()


async def decide(log: LogDir, event_id: str, **kwargs: object) -> int:
    async with await LogStore.open(log.data_dir, log.keys) as store:
        done = await withhold(store, event_id, "privé", "archivaris", data_dir=log.data_dir, **kwargs)  # type: ignore[arg-type]
        return done.seq


@pytest.fixture
def log(tmp_path: Path) -> LogDir:
    log = create_log(tmp_path)
    asyncio.run(append(log, [make_event(i) for i in range(3)] + [make_event(1, OTHER)]))
    return log


# -- the payload -----------------------------------------------------------------


def test_decision_round_trips_and_is_canonical() -> None:
    """encode/parse round-trip; the encoding is canonical JSON, and a non-canonical variant is refused."""
    d = decision("withhold")
    assert parse_decision(encode_decision(d)) == d
    spaced = encode_decision(d).replace(b",", b", ")
    with pytest.raises(DecisionError):
        parse_decision(spaced)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b"{}",
        b'{"v":2}',
        b"not json",
        b'{"at_ms":1,"by":"x","decision":"delete","id":"decision:1",'
        b'"reason":"r","target":{"conversation":"c","event_id":"e","source":"s"},"v":1}',
    ],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    """Anything that is not a canonical v1 withhold/release payload raises DecisionError."""
    with pytest.raises(DecisionError):
        parse_decision(payload)


@given(st.text(min_size=1).filter(str.strip), st.text(min_size=1).filter(str.strip), st.integers(0, 2**62))
@example(reason="why \ud800", by="archivist", at_ms=0)
def test_any_text_round_trips(reason: str, by: str, at_ms: int) -> None:
    """Hostile reason/author text survives the canonical encoding exactly; text holding a lone surrogate
    (which cannot be encoded) is refused with EncodingError, never mangled."""
    try:
        d = Decision(new_decision_id(), "withhold", DecisionTarget("matrix", ROOM, "$x"), reason, by, at_ms)
        payload = encode_decision(d)
    except EncodingError:  # lone surrogates cannot be encoded: refused, never mangled
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in reason + by)
        return
    assert parse_decision(payload) == d


# -- folding ---------------------------------------------------------------------


def test_fold_withhold_then_release() -> None:
    """The last decision per target wins: withhold, release, withhold again; release removes."""
    w1, r, w2 = decision("withhold", at_ms=1), decision("release", at_ms=2), decision("withhold", at_ms=3)
    key = ("matrix", ROOM, "$e1")
    assert fold_decisions([(4, w1)]) == {key: Withheld("privé", "archivaris", 1, 4)}
    assert fold_decisions([(4, w1), (5, r)]) == {}
    assert fold_decisions([(4, w1), (5, r), (6, w2)]) == {key: Withheld("privé", "archivaris", 3, 6)}
    assert fold_decisions([(5, r)]) == {}


def test_fold_keeps_targets_apart() -> None:
    """Same event id in another conversation is another target."""
    state = fold_decisions([(1, decision("withhold")), (2, decision("release", conversation=OTHER))])
    assert list(state) == [("matrix", ROOM, "$e1")]


def test_edits_of_a_withheld_message_are_withheld_too() -> None:
    """An edit carries the new text: it is hidden by its original's decision; reactions are not."""
    key = ("matrix", ROOM, "$event1")
    state = {key: Withheld("privé", "archivaris", 1, 9)}
    edit = Event(
        MATRIX,
        ConversationId(ROOM),
        EventId("$edit"),
        Kind.EDIT,
        SenderId("@a:x"),
        1,
        1,
        {"body": "new"},
        relates_to=EventId("$event1"),
    )
    reaction = Event(
        MATRIX,
        ConversationId(ROOM),
        EventId("$r"),
        Kind.REACTION,
        SenderId("@a:x"),
        1,
        1,
        {"key": "+1"},
        relates_to=EventId("$event1"),
    )
    assert withheld_for(make_event(1), state) == state[key]
    assert withheld_for(edit, state) == state[key]
    assert withheld_for(reaction, state) is None
    assert withheld_for(make_event(2), state) is None


# -- the log -----------------------------------------------------------------------


async def test_withhold_appends_one_record_and_release_undoes(log: LogDir) -> None:
    """Each decision is a new record (the log grows, earlier rows are untouched); release folds it away."""
    before = sqlite3.connect(log.db).execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    seq = await decide(log, "$event0")
    assert seq == len(before)
    state = current_withheld(log.data_dir, log.keys)
    assert state == {
        ("matrix", ROOM, "$event0"): Withheld("privé", "archivaris", state[("matrix", ROOM, "$event0")].at_ms, seq)
    }
    seq2 = await decide(log, "$event0", release=True)
    assert seq2 == seq + 1
    after = sqlite3.connect(log.db).execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    assert after[: len(before)] == before and len(after) == len(before) + 2
    assert current_withheld(log.data_dir, log.keys) == {}
    kinds = [d.decision for _, d in iter_decisions(log.data_dir, log.keys)]
    assert kinds == ["withhold", "release"]


async def test_verify_passes_after_decisions_and_counts_them(log: LogDir) -> None:
    """verify with the key decrypts and checks decision records; everything is sealed by a checkpoint."""
    await decide(log, "$event2")
    await decide(log, "$event2", release=True)
    report = verify_log(log.data_dir, log.keys)
    assert report.kinds.get("decision") == 2
    assert report.unsealed == 0


async def test_verify_catches_a_decision_that_does_not_parse(log: LogDir) -> None:
    """A DECISION record whose payload is not a decision (appended by a buggy or hostile writer) is tampering."""
    async with await LogStore.open(log.data_dir, log.keys) as store:
        res = await store.append_records([(format.RecordType.DECISION, DECISION_SOURCE, ROOM, "decision:x", b"{}")])
        await store.checkpoint()
    with pytest.raises(LogIntegrityError) as err:
        verify_log(log.data_dir, log.keys)
    assert err.value.seq == res.seqs[0]
    with pytest.raises(LogIntegrityError):
        list(iter_decisions(log.data_dir, log.keys))


async def test_verify_catches_a_decision_filed_under_another_conversation(log: LogDir) -> None:
    """The header's conversation tag must be the target's conversation: a misfiled decision is caught."""
    d = decision("withhold")
    async with await LogStore.open(log.data_dir, log.keys) as store:
        await store.append_records([(format.RecordType.DECISION, DECISION_SOURCE, OTHER, d.id, encode_decision(d))])
        await store.checkpoint()
    with pytest.raises(LogIntegrityError, match="another conversation"):
        verify_log(log.data_dir, log.keys)


async def test_unknown_and_ambiguous_ids_are_refused(log: LogDir) -> None:
    """Unknown id: UsageError. An id in two conversations needs --conversation; then it works."""
    with pytest.raises(UsageError, match="no event"):
        await decide(log, "$nope")
    with pytest.raises(UsageError, match="several conversations") as err:
        await decide(log, "$event1")
    assert ROOM in str(err.value) and OTHER in str(err.value)
    seq = await decide(log, "$event1", conversation=OTHER)
    assert list(current_withheld(log.data_dir, log.keys)) == [("matrix", OTHER, "$event1")]
    assert seq > 0
    with pytest.raises(UsageError, match="no event"):
        await decide(log, "$event0", conversation=OTHER)


async def test_empty_reason_or_author_and_needless_release_are_refused(log: LogDir) -> None:
    """Reason and author are shown in the package, so blanks are refused; releasing what is not withheld too."""
    async with await LogStore.open(log.data_dir, log.keys) as store:
        with pytest.raises(UsageError, match="--reason"):
            await withhold(store, "$event0", "  ", "x", data_dir=log.data_dir)
        with pytest.raises(UsageError, match="--by"):
            await withhold(store, "$event0", "r", "", data_dir=log.data_dir)
        with pytest.raises(UsageError, match="not withheld"):
            await withhold(store, "$event0", "r", "x", data_dir=log.data_dir, release=True)
        assert store.size == B + 4


# -- the command line ----------------------------------------------------------------


def test_cli_withhold_exit_codes(log: LogDir) -> None:
    """withhold/--release exit 0 and print the record; unknown or ambiguous ids and missing --reason exit 2."""
    base = ["withhold", "--data-dir", str(log.data_dir), "--key-file", str(log.key_file)]
    ok = runner.invoke(app, [*base, "$event0", "--reason", "privé", "--by", "archivaris"])
    assert ok.exit_code == 0, ok.stderr
    assert f"withheld $event0: decision record {B + 4}" in ok.stdout
    undo = runner.invoke(app, [*base, "$event0", "--reason", "toch zakelijk", "--by", "archivaris", "--release"])
    assert undo.exit_code == 0 and "released" in undo.stdout
    unknown = runner.invoke(app, [*base, "$missing", "--reason", "r", "--by", "b"])
    assert unknown.exit_code == 2 and "no event" in unknown.stderr
    ambiguous = runner.invoke(app, [*base, "$event1", "--reason", "r", "--by", "b"])
    assert ambiguous.exit_code == 2 and "--conversation" in ambiguous.stderr
    picked = runner.invoke(app, [*base, "$event1", "--reason", "r", "--by", "b", "--conversation", OTHER])
    assert picked.exit_code == 0, picked.stderr
    missing = runner.invoke(app, [*base, "$event0", "--by", "b"])
    assert missing.exit_code == 2
    assert verify_log(log.data_dir, log.keys).kinds["decision"] == 3


def test_withholding_twice_is_one_decision(log: LogDir) -> None:
    """A second withhold of an already withheld event appends nothing, exits 0 and names the standing decision;
    after a release, withholding again is a new decision (that is how a reason is changed)."""
    base = ["withhold", "--data-dir", str(log.data_dir), "--key-file", str(log.key_file), "$event0"]
    first = runner.invoke(app, [*base, "--reason", "privé", "--by", "archivaris"])
    assert first.exit_code == 0, first.stderr
    size = sqlite3.connect(log.db).execute("SELECT count(*) FROM records").fetchone()[0]
    again = runner.invoke(app, [*base, "--reason", "andere reden", "--by", "iemand anders"])
    assert again.exit_code == 0, again.stderr
    assert "already withheld" in again.stdout and f"decision record {B + 4}" in again.stdout
    assert "privé" in again.stdout  # the standing reason, not the new one
    assert sqlite3.connect(log.db).execute("SELECT count(*) FROM records").fetchone()[0] == size
    assert [d.decision for _, d in iter_decisions(log.data_dir, log.keys)] == ["withhold"]
    assert runner.invoke(app, [*base, "--reason", "r", "--by", "b", "--release"]).exit_code == 0
    renewed = runner.invoke(app, [*base, "--reason", "andere reden", "--by", "iemand anders"])
    assert renewed.exit_code == 0 and "withheld $event0" in renewed.stdout
    state = current_withheld(log.data_dir, log.keys)
    assert [w.reason for w in state.values()] == ["andere reden"]
