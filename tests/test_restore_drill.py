"""The restore drill of docs/operations.md, end to end: a real Synapse, real nio officials, the real command.

A backup is taken with `chatarchief backup` while `run` captures an encrypted room; the host is then lost
(bot SIGKILLed, data dir and key file deleted), the backup and the escrowed key file are put on a "new host"
exactly as docs/operations.md says, `verify` passes, and `run` resumes from the backup's sync token: what
was captured after the backup (and sent while no bot ran) comes back from the homeserver, decrypted, each
event once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bridge.clock import now_ms
from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from bridge.log import keys as keyfile
from bridge.log.verify import verify_log
from tests.support.botrun import BotRun, chatarchief, files_containing, write_config
from tests.support.figures import record
from tests.support.logview import LogView
from tests.support.officials import OfficialFactory, poll_until, unique_name

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


def restore(backup: Path, data_dir: Path) -> None:
    """docs/operations.md, "Restore", steps 2-3: an empty 0700 data dir, the backup's files (not its manifest)
    copied in, each checked against the manifest's SHA-256."""
    manifest = json.loads((backup / "BACKUP.json").read_text())
    data_dir.mkdir(mode=0o700)
    for rel, entry in manifest["files"].items():
        src, dst = backup / rel, data_dir / rel
        assert hashlib.sha256(src.read_bytes()).hexdigest() == entry["sha256"], rel
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy2(src, dst)


async def test_backup_while_running_then_restore_on_a_new_host_loses_and_duplicates_nothing(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """`chatarchief backup` taken while `run` captures a stream into an encrypted room is complete (its
    manifest lists every file with its SHA-256, no WAL, lock or socket) and verifies on its own; after the
    host is lost and the backup + escrowed key file are restored, `verify` passes, `run` resumes, and every
    message sent (before, during and after the backup, and while no bot ran) is in the restored log exactly
    once, decrypted, although the backup held only part of them; no message text is in the backup."""
    alice = await official("alice")
    name = unique_name("archivebot")
    password = f"pw-{name}"
    bot_id, _ = await synapse.register_user_async(name, password)
    config = write_config(tmp_path, synapse, bot_id, password, alice.user_id)
    assert chatarchief("init", "--config", str(config)).returncode == 0
    data_dir = tmp_path / "data"
    key_file = tmp_path / "secrets" / "chatarchief.key"
    escrow = tmp_path / "escrow"  # the organisation's key escrow (docs/keys.md), off the host
    escrow.mkdir(mode=0o700)
    shutil.copy2(key_file, escrow / key_file.name)
    signing = keyfile.signing_path(key_file)  # escrowed apart in practice (another custodian); both are needed
    shutil.copy2(signing, escrow / signing.name)
    managed = tmp_path / "config-management"  # the config's own secrets come back from where the config lives
    shutil.copytree(key_file.parent, managed, ignore=shutil.ignore_patterns("chatarchief.key*"))
    keys = keyfile.load(key_file)
    marker = f"ZEGEL{uuid.uuid4().hex}"
    sent: list[tuple[str, str]] = []
    bodies: dict[str, str] = {}
    bot = BotRun(config, tmp_path)
    try:
        first = bot.start()
        with LogView(data_dir, keys) as view:
            await poll_until(lambda: bool(view.cursors()) or first.poll() is not None, timeout=30)
            assert first.poll() is None, bot.stderr_tail()
            room = await alice.create_room(encrypted=True, invite=[bot_id])
            await alice.wait_member(room, bot_id)

            async def send(i: int) -> None:
                body = f"{marker} bericht {i}"
                event_id = await alice.send_text(room, body)
                sent.append((room, event_id))
                bodies[event_id] = body

            await send(0)
            await poll_until(lambda: view.count_stored(sent) == 1, timeout=30)

            async def stream(start: int, n: int) -> None:
                for i in range(start, start + n):
                    await send(i)
                    await asyncio.sleep(0.02)

            streaming = asyncio.create_task(stream(1, 40))
            await poll_until(lambda: view.count_stored(sent) >= 10, timeout=30)
            taken = await asyncio.to_thread(
                chatarchief, "backup", "--config", str(config), "--out", str(tmp_path / "backup")
            )
            assert taken.returncode == 0, taken.stderr
            assert "backup written" in taken.stdout
            await streaming
            await stream(41, 10)  # after the backup: only the homeserver will have these for the new host
            await poll_until(lambda: view.count_stored(sent) == len(sent), timeout=60)
            size_at_loss = view.size()

        # The host is lost: the bot dies, its disk and key file are gone.
        first.kill()
        first.wait(10)
        lost_at_ms = now_ms()
        shutil.rmtree(data_dir)
        shutil.rmtree(key_file.parent)
        await stream(51, 5)  # sent while no bot runs anywhere

        backup = tmp_path / "backup"
        manifest = json.loads((backup / "BACKUP.json").read_text())
        assert manifest["format"] == "chatarchief-backup/1"
        names = set(manifest["files"])
        assert "log.sqlite3" in names and any(n.startswith("matrix-store/") for n in names)
        assert not [n for n in names if n.endswith(("-wal", "-shm", ".lock", ".sock", ".tmp"))]
        assert {p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_file()} == names | {"BACKUP.json"}
        assert files_containing(backup, marker.encode()) == []
        with LogView(backup, keys) as in_backup:
            backed_up = in_backup.count_stored(sent)
            assert in_backup.size() == manifest["log_records"]
        assert 1 <= backed_up < 51, "the backup was not taken mid-stream"
        assert manifest["log_records"] < size_at_loss

        # The new host: key file from escrow (0600 in a 0700 folder), the backup restored, verify, run.
        shutil.copytree(managed, key_file.parent)
        key_file.parent.chmod(0o700)
        shutil.copy2(escrow / key_file.name, key_file)
        key_file.chmod(0o600)
        shutil.copy2(escrow / signing.name, signing)
        signing.chmod(0o600)
        restore(backup, data_dir)
        verified = chatarchief("verify", "--config", str(config))
        assert verified.returncode == 0, verified.stdout + verified.stderr

        second = bot.start()
        with LogView(data_dir, keys) as view:
            await poll_until(lambda: view.count_stored(sent) == len(sent) or second.poll() is not None, timeout=90)
            assert second.poll() is None, bot.stderr_tail()
            await stream(56, 5)  # and capture goes on
            await poll_until(lambda: view.count_stored(sent) == len(sent) or second.poll() is not None, timeout=60)
            events = [e for _, e in view.events()]
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()

    stored = Counter((e.conversation, e.event_id) for e in events)
    assert len(sent) == 61
    assert [k for k in sent if stored[k] != 1] == [], "lost or duplicated after the restore"
    # Nothing silent: the restored log itself records that capture stopped at the backup's last record and
    # resumed at the restart, a span covering everything the lost host captured after the backup.
    gaps = [e.content for e in events if e.kind is Kind.NOTICE and e.content.get("reason") == "bot_not_running"]
    assert any(g["gap_start_ms"] <= manifest["created_ms"] and g["gap_end_ms"] >= lost_at_ms for g in gaps), gaps
    by_id = {e.event_id: e for e in events}
    assert [i for _, i in sent if by_id[i].kind is not Kind.MESSAGE or by_id[i].content["body"] != bodies[i]] == []
    report = verify_log(data_dir, keys)
    assert report.unsealed == 0
    lost = sum(1 for k in sent if stored[k] == 0)
    duplicated = sum(1 for k in sent if stored[k] > 1)
    record("restore_drill", sent=len(sent), in_backup=backed_up, backup_records=manifest["log_records"],
           records_at_loss=size_at_loss, restored_records=report.records, lost=lost, duplicated=duplicated)  # fmt: skip
    assert chatarchief("verify", "--config", str(config)).returncode == 0
