"""`chatarchief events`: find the id `withhold` needs, and the events of a Woo request, without writing anything.

The log is the shipped sample conversation imported for real (Matrix event shapes from the spec's examples,
see bridge/samples/README or the importer's docs); the filter itself is property-tested.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bridge.cli import app
from bridge.events import Event, EventId, Kind
from bridge.search import Query, matches, snippet

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parent.parent / "bridge" / "samples" / "sample-conversation.jsonl"
ROOM = "!ministerie-overleg:demo.localhost"


@pytest.fixture
def sample_log(tmp_path: Path) -> list[str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    base = ["--data-dir", str(tmp_path / "data"), "--key-file", str(secrets / "k.key")]
    assert runner.invoke(app, ["init", *base]).exit_code == 0
    assert runner.invoke(app, ["import", str(SAMPLE), *base]).exit_code == 0
    return base


def _files(root: Path) -> dict[str, str]:
    """Every file's digest; SQLite's WAL/shared-memory files a reader opens are left out, but the WAL must be
    empty (nothing was written through it)."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith("-wal"):
            assert p.stat().st_size == 0, p
        elif p.is_file() and not p.name.endswith("-shm"):
            files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def test_text_search_prints_an_id_ready_for_withhold(sample_log: list[str], tmp_path: Path) -> None:
    """Search by text, paste the printed id into `withhold`: it withholds exactly that message; the search
    itself changed no file in the data dir."""
    before = _files(tmp_path / "data")
    found = runner.invoke(app, ["events", *sample_log, "--text", "KAMERBRIEF", "--kind", "message"])
    assert found.exit_code == 0, found.stderr
    assert _files(tmp_path / "data") == before
    lines = found.stdout.strip().splitlines()
    assert len(lines) == 1 and "Kamerbrief" in lines[0]
    words = shlex.split(lines[0])
    event_id = words[words.index("--conversation") - 1]
    assert event_id == "$t1" and words[words.index("--conversation") + 1] == ROOM
    done = runner.invoke(app, ["withhold", event_id, "--reason", "privé", "--by", "IS", *sample_log])
    assert done.exit_code == 0 and "withheld $t1" in done.stdout


def test_filters_combine_and_json_lines_parse(sample_log: list[str]) -> None:
    everything = runner.invoke(app, ["events", *sample_log, "--json", "--limit", "0"])
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert len(rows) == 16 and [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    by_sender = runner.invoke(app, ["events", *sample_log, "--json", "--sender", "WOORDVOERDER"])
    senders = {json.loads(line)["sender"] for line in by_sender.stdout.splitlines()}
    assert senders == {"@woordvoerder:demo.localhost"}
    in_period = runner.invoke(app, ["events", *sample_log, "--json", "--since", "2025-11-26", "--until", "2025-11-26"])
    assert len(in_period.stdout.splitlines()) == sum(1 for r in rows if r["sent_at"] and r["sent_at"] < 1764198000000)
    none = runner.invoke(app, ["events", *sample_log, "--until", "2020-01-01"])
    assert none.exit_code == 0 and none.stdout == "" and "no events match" in none.stderr
    limited = runner.invoke(app, ["events", *sample_log, "--limit", "3"])
    assert len(limited.stdout.splitlines()) == 3 and "--limit 0" in limited.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "chat"], "not a kind"),
        (["--since", "26-11-2025"], "expected YYYY-MM-DD"),
        (["--limit", "-1"], "--limit"),
    ],
)
def test_bad_filters_are_usage_errors(sample_log: list[str], args: list[str], says: str) -> None:
    result = runner.invoke(app, ["events", *sample_log, *args])
    assert result.exit_code == 2 and says in result.stderr


def test_a_tampered_log_fails_the_search_with_exit_1(sample_log: list[str], tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "data" / "log.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")  # the insider's first step (docs/threat-model.md)
    body = bytes(conn.execute("SELECT body FROM records WHERE seq = 8").fetchone()[0])
    conn.execute("UPDATE records SET body = ? WHERE seq = 8", (body[:-1] + bytes([body[-1] ^ 1]),))
    conn.close()
    result = runner.invoke(app, ["events", *sample_log, "--limit", "0"])
    assert result.exit_code == 1 and "record 8" in result.stderr


def _event(body: str, sender: str = "@a:x", sent_at: int = 1_000) -> Event:
    return Event(
        "matrix", "!r:x", EventId("$e"), Kind.MESSAGE, sender, sent_at, 2_000, {"msgtype": "m.text", "body": body}
    )


@given(st.text(min_size=1), st.data())
def test_any_piece_of_the_text_finds_it(body: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(body) - 1))
    end = data.draw(st.integers(start + 1, len(body)))
    assert matches(_event(body), Query(text=body[start:end]))


@given(st.text(alphabet="abc", max_size=20))
def test_text_absent_from_the_content_is_not_found(body: str) -> None:
    assert not matches(_event(body), Query(text="d"))


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_period_is_since_inclusive_until_exclusive(at: int, since: int, until: int) -> None:
    assert matches(_event("x", sent_at=at), Query(since_ms=since, until_ms=until)) == (since <= at < until)


def test_encryption_evidence_is_not_searched_and_snippets_show_hidden_characters() -> None:
    ev = Event(
        "matrix",
        "!r:x",
        EventId("$e"),
        Kind.MESSAGE,
        "@a:x",
        1,
        2,
        {"body": "hallo\u202ewereld\n" + "x" * 100, "encryption": {"session_id": "geheimsessie"}},
    )
    assert not matches(ev, Query(text="geheimsessie"))
    line = snippet(ev)
    assert "⟨U+202E⟩" in line and "\n" not in line and line.endswith("…") and len(line) <= 72
