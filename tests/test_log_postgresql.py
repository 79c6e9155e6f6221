"""PostgreSQL as the log store: what only it has (schema objects, the cross-host writer lock and a standby taking
over, migrate-store from SQLite, config and marker). The shared contract is in test_log_store.py and
test_log_tamper.py, which run against both backends. A real server from Debian's binaries (tests/support/pg.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.dev.synapse import SynapseServer
from bridge.errors import Check, LogIntegrityError, UsageError
from bridge.log import db
from bridge.log.reader import iter_events
from bridge.log.schema import INIT_RECORDS as B
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, create_log, fill_log, make_event
from tests.support.botrun import chatarchief
from tests.support.logview import LogView
from tests.support.officials import OfficialFactory, poll_until
from tests.support.pg import Attacker, PgServer, rows
from tests.support.standby import two_hosts

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture
def pg_log(pg_server: PgServer, tmp_path: Path) -> LogDir:
    log = create_log(tmp_path, pg_server.new_log_target())
    fill_log(log, 30)
    return log


def write_config(path: Path, data_dir: Path, key_file: Path, target: db.PgTarget, *, standby: bool = False) -> Path:
    dsn = target.dsn
    path.write_text(
        "[storage]\n"
        f'data_dir = "{data_dir}"\nkey_file = "{key_file}"\nbackend = "postgresql"\n'
        f'dsn = "{dsn}"\npassword_file = "{target.password_file}"\nstandby = {"true" if standby else "false"}\n'
        "checkpoint_every_records = 50\n"
    )
    return path


def test_the_data_dir_names_its_log_without_the_password(pg_log: LogDir, pg_server: PgServer) -> None:
    """The data dir holds a marker (DSN, password file path), never the password; verify finds the log by it."""
    marker = (pg_log.data_dir / db.MARKER_NAME).read_text()
    assert pg_server.password not in marker and "search_path" in marker
    assert not (pg_log.data_dir / db.SQLITE_NAME).exists()
    assert verify_log(pg_log.data_dir).records == B + 30


def test_a_password_in_the_dsn_is_refused() -> None:
    with pytest.raises(UsageError, match="password_file"):
        db.PgTarget.checked("host=127.0.0.1 dbname=x password=hunter2", None)


def test_config_and_data_dir_naming_other_logs_is_exit_2(pg_log: LogDir, tmp_path: Path, pg_server: PgServer) -> None:
    """A config pointing at another PostgreSQL log, or at SQLite, than the data dir holds is one line, exit 2."""
    other = pg_server.new_log_target()
    cfg = write_config(tmp_path / "other.toml", pg_log.data_dir, pg_log.key_file, other)
    code, text = cli("import", tmp_path / "nothing.jsonl", "--config", cfg)
    assert code == 2 and "is not the log of" in text and "Traceback" not in text
    sqlite_cfg = tmp_path / "sqlite.toml"
    sqlite_cfg.write_text(f'[storage]\ndata_dir = "{pg_log.data_dir}"\nkey_file = "{pg_log.key_file}"\n')
    code, text = cli("rotate-key", "--config", sqlite_cfg)
    assert code == 2 and "holds a postgresql log" in text


def test_checking_the_config_of_a_sqlite_log_does_not_load_psycopg(tmp_path: Path) -> None:
    """`check_configured` (every command given a config) over a SQLite log and a SQLite config loads no
    psycopg (a quarter second per process here), and still refuses a PostgreSQL config for it."""
    log = create_log(tmp_path)
    code = (
        "import sys; from pathlib import Path; from bridge.log import db; "
        f"db.check_configured(Path({str(log.data_dir)!r}), 'sqlite', None); print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip() == "False"
    with pytest.raises(UsageError, match="holds a sqlite log"):
        db.check_configured(log.data_dir, "postgresql", None)


def test_init_creates_the_log_in_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    """`init` with backend = "postgresql" creates the tables there and the marker here; a second init on the
    same schema is refused."""
    target = pg_server.new_log_target()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "data", tmp_path / "keys" / "k.key", target)
    code, text = cli("init", "--config", cfg)
    assert code == 0, text
    assert "postgresql://127.0.0.1" in text and pg_server.password not in text
    code, text = cli("verify", "--data-dir", tmp_path / "data")
    assert code == 0 and f"intact: {B} records" in text
    cfg2 = write_config(tmp_path / "c2.toml", tmp_path / "data2", tmp_path / "keys2" / "k.key", target)
    code, text = cli("init", "--config", cfg2)
    assert code == 2 and "already holds log tables" in text


def test_append_only_triggers_refuse_update_delete_and_truncate(pg_log: LogDir) -> None:
    """With the triggers in place, the log's rows cannot be changed by accident, TRUNCATE included (which
    skips row triggers in PostgreSQL)."""
    assert pg_log.pg is not None
    with psycopg.connect(pg_log.pg.dsn, **pg_log.pg.connect_args(), autocommit=True) as conn:
        for sql in (
            "UPDATE records SET body = body WHERE seq = 3",
            "DELETE FROM records WHERE seq = 3",
            "TRUNCATE records",
            "UPDATE checkpoints SET note = note",
            "TRUNCATE checkpoints",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
    assert verify_log(pg_log.data_dir).records == B + 30


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE records ALTER COLUMN body TYPE text USING encode(body, 'hex')",
        "DROP INDEX records_dedup",
        "CREATE OR REPLACE FUNCTION chatarchief_append_only() RETURNS trigger LANGUAGE plpgsql"
        " AS $$BEGIN RETURN NEW; END$$",
        "CREATE TABLE records_shadow (seq BIGINT)",
    ],
)
def test_an_altered_schema_is_named(pg_log: LogDir, sql: str) -> None:
    """verify compares the PostgreSQL schema objects (columns, indexes, triggers, their function) as it compares
    sqlite_master: a neutered trigger function or a dropped unique index is a hand-edited log."""
    conn = Attacker(pg_log.data_dir)
    conn.execute(sql)
    conn.close()
    with pytest.raises(LogIntegrityError) as info:
        verify_log(pg_log.data_dir)
    assert info.value.check in (Check.SCHEMA, Check.DATABASE), str(info.value)


async def test_one_writer_across_hosts_by_advisory_lock(pg_log: LogDir, tmp_path: Path) -> None:
    """A second bot on the same PostgreSQL log (its own data dir, as on another host) is refused, naming the
    holder's session; when the first closes, the second opens and continues the same tree."""
    other_dir = tmp_path / "host-b"
    other_dir.mkdir(mode=0o700)
    assert pg_log.pg is not None
    db.write_marker(other_dir, pg_log.pg)
    async with await LogStore.open(pg_log.data_dir, pg_log.keys) as first:
        with pytest.raises(db.PgWriterBusy) as info:
            await LogStore.open(other_dir, pg_log.keys)
        assert f"pid {os.getpid()}" in str(info.value) and "advisory lock" in str(info.value)
        await first.append_events([make_event(100)])
    async with await LogStore.open(other_dir, pg_log.keys) as second:
        assert second.size == B + 31
        await second.append_events([make_event(101)])
        await second.checkpoint()
    assert verify_log(pg_log.data_dir, pg_log.keys).records == B + 32


def test_standby_takes_over_after_sigkill_nothing_lost_or_duplicated(pg_server: PgServer, tmp_path: Path) -> None:
    """Two bots on one PostgreSQL log, separate data dirs (two hosts). The active one is SIGKILLed mid-stream;
    the standby, waiting on the advisory lock, takes over from what is committed (events and cursor in one
    transaction) and finishes. Every event is in the log exactly once: 0 lost, 0 duplicated; verify passes."""
    total = 400
    log = create_log(tmp_path / "a", pg_server.new_log_target())
    assert log.pg is not None
    standby_dir = tmp_path / "b" / "data"
    standby_dir.mkdir(parents=True, mode=0o700)
    db.write_marker(standby_dir, log.pg)
    cfg_a = write_config(tmp_path / "a.toml", log.data_dir, log.key_file, log.pg, standby=True)
    cfg_b = write_config(tmp_path / "b.toml", standby_dir, log.key_file, log.pg, standby=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(cfg: Path) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "tests.support.failover_writer", str(cfg), str(log.key_file), str(total)]
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)

    active = start(cfg_a)
    assert active.stdout is not None
    assert active.stdout.readline().startswith("active")
    standby = start(cfg_b)
    acknowledged = -1
    for line in active.stdout:  # let it run a while, then pull the plug mid-stream
        acknowledged = int(line.split()[1])
        if acknowledged >= 120:
            break
    active.send_signal(signal.SIGKILL)
    active.wait(timeout=30)
    out, _ = standby.communicate(timeout=120)
    assert standby.returncode == 0, out
    took_over_at = int(out.splitlines()[0].split()[1])
    assert took_over_at >= B + acknowledged + 1  # everything the killed bot acknowledged was durable
    events = [e for _, e in iter_events(log.data_dir, log.keys)]
    counts = Counter(e.event_id for e in events)
    lost = [i for i in range(total) if counts[f"$event{i}"] == 0]
    duplicated = [k for k, n in counts.items() if n > 1]
    print(f"failover: lost {len(lost)}, duplicated {len(duplicated)}, standby took over at {took_over_at}")
    assert (lost, duplicated) == ([], [])
    assert len(events) == total
    seqs = [r[0] for r in rows(log.data_dir, "SELECT seq FROM records ORDER BY seq")]
    assert seqs == list(range(B + total))
    report = verify_log(log.data_dir, log.keys)
    assert report.records == B + total and report.unsealed == 0


def test_migrate_store_copies_sqlite_and_proves_the_same_signed_root(tmp_path: Path, pg_server: PgServer) -> None:
    """`migrate-store` copies a SQLite log row for row; both verify to the same root and newest checkpoint, the
    events read back the same, the PostgreSQL log accepts appends; a target holding a log is refused."""
    log = create_log(tmp_path)
    fill_log(log, 40)

    async def more() -> None:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            await store.rotate_data_key()
            await store.append_events([make_event(i) for i in range(40, 45)], cursor=("matrix:@bot:x", "s9_1"))
            await store.checkpoint()

    asyncio.run(more())
    target = pg_server.new_log_target()
    cfg = tmp_path / "sqlite.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{log.data_dir}"\nkey_file = "{log.key_file}"\n')
    args = ("--config", cfg, "--to", target.dsn, "--password-file", target.password_file or "")
    code, text = cli("migrate-store", *args)
    assert code == 0, text
    new_dir = log.data_dir.with_name("data.postgresql")
    before, after = verify_log(log.data_dir, log.keys), verify_log(new_dir, log.keys)
    assert (after.records, after.root, after.newest_checkpoint) == (
        before.records,
        before.root,
        before.newest_checkpoint,
    )
    assert after.root.hex() in text and "same signed root" in text
    assert list(iter_events(new_dir, log.keys)) == list(iter_events(log.data_dir, log.keys))

    async def continue_on_pg() -> str | None:
        async with await LogStore.open(new_dir, log.keys) as store:
            await store.append_events([make_event(99)])
            await store.checkpoint()
            return await store.get_cursor("matrix:@bot:x")

    assert asyncio.run(continue_on_pg()) == "s9_1"
    assert verify_log(new_dir, log.keys).records == before.records + 1
    code, text = cli("migrate-store", *args, "--new-data-dir", tmp_path / "again")
    assert code == 2 and "already holds log tables" in text


@pytest.mark.synapse
@pytest.mark.slow
async def test_run_standby_on_another_host_takes_over_after_sigkill(
    synapse: SynapseServer, official: OfficialFactory, pg_server: PgServer, tmp_path: Path
) -> None:
    """`chatarchief run` on two hosts (own data dirs, own Matrix devices of one bot account, one PostgreSQL
    log). Host A captures a room; host B waits as a standby. A is SIGKILLed mid-stream; B takes the writer lock,
    resumes from the sync token A committed with its last batch, and captures on: every message sent (before,
    during and after the kill) is in the log exactly once; `verify` passes from both data dirs."""
    alice = await official("alice")
    hosts = await two_hosts(synapse, pg_server, tmp_path, alice.user_id)
    bot_id, keys, bot_a, bot_b = hosts.bot_id, hosts.keys, hosts.a, hosts.b
    sent: list[tuple[str, str]] = []
    try:
        first = bot_a.start()
        with LogView(hosts.data_a, keys) as view:
            await poll_until(lambda: bool(view.cursors()) or first.poll() is not None, timeout=60)
            assert first.poll() is None, bot_a.stderr_tail()
            standby = bot_b.start()
            await poll_until(lambda: b"standby: waiting" in bot_b.log_bytes() or standby.poll() is not None, 60)
            assert standby.poll() is None, bot_b.stderr_tail()
            room = await alice.create_room(encrypted=False, invite=[bot_id])
            await alice.wait_member(room, bot_id)

            async def stream(start: int, n: int) -> None:
                for i in range(start, start + n):
                    sent.append((room, await alice.send_text(room, f"failover bericht {i}")))
                    await asyncio.sleep(0.02)

            streaming = asyncio.create_task(stream(0, 60))
            await poll_until(lambda: view.count_stored(sent) >= 15, timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = view.count_stored(sent)
            await streaming
            await poll_until(lambda: b"standby: took over" in bot_b.log_bytes() or standby.poll() is not None, 60)
            assert standby.poll() is None, bot_b.stderr_tail()
            await stream(60, 10)
            await poll_until(lambda: view.count_stored(sent) == len(sent) or standby.poll() is not None, 90)
            assert standby.poll() is None, bot_b.stderr_tail()
            events = [e for _, e in view.events()]
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(30) == 0, bot_b.stderr_tail()
    finally:
        hosts.cleanup()
    stored = Counter((e.conversation, e.event_id) for e in events)
    lost = [k for k in sent if stored[k] == 0]
    duplicated = [k for k in sent if stored[k] > 1]
    print(
        f"run failover: {len(sent)} sent, {killed_at} stored when A was killed, lost {len(lost)}, duplicated"
        f" {len(duplicated)}"
    )
    assert (len(sent), lost, duplicated) == (70, [], [])
    assert 15 <= killed_at < 70  # killed mid-stream
    for data_dir in (hosts.data_a, hosts.data_b):
        verified = chatarchief("verify", "--data-dir", str(data_dir), "--key-file", str(hosts.key_file))
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ('backend = "postgresql"', "needs storage.dsn"),
        ('dsn = "host=db"', "are for storage.backend"),
        ('backend = "postgresql"\ndsn = "host=db"\nstandby = true\nbackend_x = 1', "backend_x"),
        ("standby = true", "storage.standby needs"),
    ],
)
def test_storage_backend_settings_are_checked(tmp_path: Path, storage: str, message: str) -> None:
    """A PostgreSQL backend without a DSN, a DSN for SQLite, a standby on SQLite: one clear line, exit 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{tmp_path / "k.key"}"\n{storage}\n')
    code, text = cli("verify", "--config", cfg)
    assert code == 2 and message in text and "Traceback" not in text, text


def test_media_reach_a_standby_through_the_database(pg_server: PgServer, tmp_path: Path) -> None:
    """A blob stored on host A is kept in the log's database with its BLOB record; host B (its own data dir,
    no media) gets the file when it opens the log as writer, and verify from B's data dir checks it keyless
    and decrypts it with the key. A blob altered in the table cannot pass: the BLOB record names its hash."""
    from tests.test_log_attacks import media_log

    log = create_log(tmp_path / "a", pg_server.new_log_target())
    assert log.pg is not None
    blob_id, _ = media_log(log)
    host_b = tmp_path / "b" / "data"
    host_b.mkdir(parents=True, mode=0o700)
    db.write_marker(host_b, log.pg)
    with pytest.raises(LogIntegrityError, match=blob_id):
        verify_log(host_b)  # before B ever wrote: the media are not on this host

    async def open_on_b() -> None:
        async with await LogStore.open(host_b, log.keys):
            pass

    asyncio.run(open_on_b())
    original = (log.data_dir / "blobs" / blob_id[:2] / blob_id).read_bytes()
    assert (host_b / "blobs" / blob_id[:2] / blob_id).read_bytes() == original
    assert verify_log(host_b, log.keys).kinds["blob"] == 1
    # An insider swaps the bytes in the table; a third host restores them and verify names the blob.
    conn = Attacker(log.data_dir)
    conn.execute("ALTER TABLE blobs DISABLE TRIGGER USER")
    conn.execute("UPDATE blobs SET data = ? WHERE blob_id = ?", (original[:-1] + bytes([original[-1] ^ 1]), blob_id))
    conn.close()
    host_c = tmp_path / "c" / "data"
    host_c.mkdir(parents=True, mode=0o700)
    db.write_marker(host_c, log.pg)

    async def open_on_c() -> None:
        async with await LogStore.open(host_c, log.keys):
            pass

    asyncio.run(open_on_c())
    with pytest.raises(LogIntegrityError, match=blob_id) as info:
        verify_log(host_c)
    assert info.value.check == Check.BLOB


def test_a_server_lost_mid_scan_is_a_storage_error(pg_log: LogDir, pg_server: PgServer) -> None:
    """The reader's session ending while a scan streams (server restart, network) fails as StorageError (one
    line, exit 1 at the CLI), not a driver traceback."""
    from bridge.errors import StorageError
    from bridge.log.verify import open_readonly

    conn = open_readonly(pg_log.data_dir)
    try:
        cur = conn.execute("SELECT seq FROM records ORDER BY seq")  # streamed: a server-side cursor
        assert [r[0] for r in cur.fetchmany(1)] == [0]
        with pg_server.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'chatarchief-reader'"
            )
        with pytest.raises(StorageError, match="could not read the log"):
            cur.fetchmany(1)
    finally:
        conn.close()
