"""`chatarchief backup` (bridge.backup, bridge.log.backup): consistent copies beside a writer, what is and is
not copied, and the refusals. The end-to-end drill with a real Synapse is tests/test_restore_drill.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest

from bridge.backup import MANIFEST, backup
from bridge.blobs import BlobStore
from bridge.errors import UsageError
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, make_event
from tests.support.botrun import chatarchief


async def test_backups_taken_while_a_writer_appends_each_verify_with_the_key(empty_log: LogDir, tmp_path: Path) -> None:
    """Five backups taken while the store appends batches in the same process: each copy is one commit's log
    (verify with the key passes, unsealed tail authenticated), record counts grow, and none holds a WAL file.
    A plain byte copy of log.sqlite3 (without its WAL) would miss or tear the newest commits."""
    stop = asyncio.Event()
    sizes: list[int] = []
    policy = CheckpointPolicy(every_records=25, every_seconds=3600)
    async with await LogStore.open(empty_log.data_dir, empty_log.keys, policy) as store:

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                await store.append_events([make_event(i + k, body="x" * 400) for k in range(10)])
                i += 10
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        try:
            for n in range(5):
                await asyncio.sleep(0.05)
                report = await asyncio.to_thread(backup, empty_log.data_dir, tmp_path / f"b{n}")
                sizes.append(report.records)
        finally:
            stop.set()
            await task
    for n, size in enumerate(sizes):
        out = tmp_path / f"b{n}"
        assert not [p for p in out.iterdir() if p.name.endswith(("-wal", "-shm"))]
        checked = verify_log(out, empty_log.keys)
        assert checked.records == size
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


async def test_backup_copies_blobs_and_stores_but_no_lock_socket_temp_or_plaintext_workdir(
    filled_log: LogDir, tmp_path: Path
) -> None:
    """Blobs, a SQLite file in a subfolder (as the Matrix crypto store) and other files are copied, each
    listed in BACKUP.json with its SHA-256 and size; the writer lock, a socket, temp files, WAL/SHM files
    and the snapshot work dir `tmp/` are not."""
    dd = filled_log.data_dir
    async with await LogStore.open(dd, filled_log.keys) as store:
        blob_id, _ = await BlobStore(dd / "blobs", store.media_keys()).put(b"\x89PNG beeld", "image/png")
    (dd / "matrix-store").mkdir(mode=0o700)
    nio_db = sqlite3.connect(dd / "matrix-store" / "bot.db")
    nio_db.execute("PRAGMA journal_mode=WAL")
    nio_db.execute("CREATE TABLE olm (k TEXT)")
    nio_db.execute("INSERT INTO olm VALUES ('sessie')")
    nio_db.commit()  # still open: its newest page is in bot.db-wal
    (dd / "matrix-store" / "session.json").write_bytes(b"{}")
    (dd / "tmp").mkdir(mode=0o700)
    (dd / "tmp" / "bag").write_text("KLARE TEKST")
    (dd / ".blob.123.abcd.tmp").write_bytes(b"half")
    (dd / "writer.lock").write_text("123")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dd / "control.sock"))
    try:
        report = backup(dd, tmp_path / "b")
    finally:
        sock.close()
        nio_db.close()
    out = tmp_path / "b"
    manifest = json.loads((out / MANIFEST).read_text())
    names = set(manifest["files"])
    assert "log.sqlite3" in names and "matrix-store/bot.db" in names and "matrix-store/session.json" in names
    assert any(n.startswith("blobs/") for n in names)
    assert not [n for n in names if n.startswith("tmp/") or n.endswith((".tmp", "-wal", "-shm", ".lock", ".sock"))]
    assert report.files == len(names) and report.records == manifest["log_records"] == verify_log(out).records
    copied = sqlite3.connect(out / "matrix-store" / "bot.db")
    assert copied.execute("SELECT k FROM olm").fetchall() == [("sessie",)]
    copied.close()
    restored = tmp_path / "restored"
    shutil.copytree(out, restored, ignore=shutil.ignore_patterns(MANIFEST))
    async with await LogStore.open(restored, filled_log.keys) as store:
        assert BlobStore(restored / "blobs", store.media_keys()).get(blob_id) == b"\x89PNG beeld"
    assert os.stat(out).st_mode & 0o077 == 0


def test_backup_refuses_an_existing_target_one_inside_the_data_dir_and_a_dir_without_log(
    filled_log: LogDir, tmp_path: Path
) -> None:
    """Never overwrites, never writes into the data dir it copies, and names a data dir that holds no log."""
    (tmp_path / "exists").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        backup(filled_log.data_dir, tmp_path / "exists")
    with pytest.raises(UsageError, match="inside the data dir"):
        backup(filled_log.data_dir, filled_log.data_dir / "backup")
    with pytest.raises(UsageError, match="holds no log"):
        backup(tmp_path / "exists", tmp_path / "b")


def test_backup_command_prints_a_summary_and_exits_2_on_usage_errors(filled_log: LogDir, tmp_path: Path) -> None:
    """`chatarchief backup --data-dir D --out O` exits 0 naming the record count and the key-escrow reminder;
    an existing --out is one line, exit 2, no traceback."""
    done = chatarchief("backup", "--data-dir", str(filled_log.data_dir), "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert "backup written" in done.stdout and "records" in done.stdout and "key file is not in it" in done.stdout
    again = chatarchief("backup", "--data-dir", str(filled_log.data_dir), "--out", str(tmp_path / "b"))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    verify = chatarchief("verify", "--data-dir", str(tmp_path / "b"), "--key-file", str(filled_log.key_file))
    assert verify.returncode == 0, verify.stderr


def test_a_backup_altered_together_with_its_manifest_is_caught_by_verify(filled_log: LogDir, tmp_path: Path) -> None:
    """The manifest is no seal: an insider who alters a record in a backup and rewrites its SHA-256 in
    BACKUP.json passes the copy check of the restore, but `verify` (restore step 4) exits 1 naming it."""
    out = tmp_path / "b"
    backup(filled_log.data_dir, out)
    conn = sqlite3.connect(out / "log.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_no_update")
    body = bytes(conn.execute("SELECT body FROM records WHERE seq = 17").fetchone()[0])
    conn.execute("UPDATE records SET body = ? WHERE seq = 17", (body[:5] + bytes([body[5] ^ 1]) + body[6:],))
    conn.close()
    manifest = json.loads((out / MANIFEST).read_text())
    data = (out / "log.sqlite3").read_bytes()
    manifest["files"]["log.sqlite3"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (out / MANIFEST).write_text(json.dumps(manifest))
    verify = chatarchief("verify", "--data-dir", str(out), "--key-file", str(filled_log.key_file))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "17" in verify.stderr


async def test_restoring_an_older_backup_is_a_fork_that_a_kept_checkpoint_reveals(
    filled_log: LogDir, tmp_path: Path
) -> None:
    """Rolling the archive back to an older backup (to drop what came after) and capturing on: the restored
    log verifies on its own, but against a checkpoint the lost host signed after the backup (kept by an
    auditor or a witness) `verify --checkpoint` exits 1 — the fork docs/operations.md warns about."""
    out = tmp_path / "b"
    backup(filled_log.data_dir, out)
    async with await LogStore.open(filled_log.data_dir, filled_log.keys) as store:
        await store.append_events([make_event(i, body="na de backup") for i in range(100, 110)])
        later = await store.checkpoint()
    pinned = tmp_path / "auditor.note"
    pinned.write_text(later)
    restored = tmp_path / "restored"
    shutil.copytree(out, restored, ignore=shutil.ignore_patterns(MANIFEST))
    async with await LogStore.open(restored, filled_log.keys) as store:
        await store.append_events([make_event(i, body="anders") for i in range(200, 215)])
        await store.checkpoint()
    alone = chatarchief("verify", "--data-dir", str(restored), "--key-file", str(filled_log.key_file))
    assert alone.returncode == 0, alone.stderr
    against = chatarchief(
        "verify", "--data-dir", str(restored), "--key-file", str(filled_log.key_file), "--checkpoint", str(pinned)
    )
    assert against.returncode == 1, against.stdout + against.stderr
