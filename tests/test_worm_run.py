"""`chatarchief run` with an s3:// destination, as a child process: the monthly job uploads the month that
ended to moto's S3 server (a STAND-IN, tests/support/s3.py), and a bucket without object lock stops `run`.
The source is the signal-cli stand-in (tests/support/signal_daemon.py): `run` needs one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.archive.derive import package_name
from bridge.archive.range import Month, month_of, window
from bridge.clock import now_ms
from bridge.log import schema as schema_module
from bridge.log import store as store_module
from bridge.log.store import LogStore
from tests.conftest import LogDir, create_log, make_event
from tests.support.s3 import CREDENTIALS, StandIn, start_stand_in
from tests.support.signal_daemon import ACCOUNT, SignalDaemon

REPO = Path(__file__).resolve().parents[1]
TZ = "Europe/Amsterdam"


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    yield from start_stand_in()


def last_month_log(tmp_path: Path) -> tuple[LogDir, str]:
    """A log whose records were all appended in the middle of the month before this one: one month is due."""
    current = month_of(now_ms(), TZ)
    previous = Month(current.year - 1, 12) if current.month == 1 else Month(current.year, current.month - 1)
    win = window(previous, TZ)
    middle = (win.start_ms + win.end_ms) // 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema_module, "now_ms", lambda: middle)
        mp.setattr(store_module, "now_ms", lambda: middle)
        log = create_log(tmp_path)

        async def go() -> None:
            async with await LogStore.open(log.data_dir, log.keys) as store:
                await store.append_events([make_event(i) for i in range(12)])
                await store.checkpoint()

        asyncio.run(go())
    return log, package_name(log.keys.log_id, previous)


def config_for(tmp_path: Path, log: LogDir, stand_in: StandIn, bucket: str, daemon: SignalDaemon) -> Path:
    creds = tmp_path / "s3-credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {CREDENTIALS.access_key_id}\n"
        f"aws_secret_access_key = {CREDENTIALS.secret_access_key}\n"
    )
    os.chmod(creds, 0o600)
    cfg = tmp_path / "chatarchief.toml"
    cfg.write_text(
        f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{log.data_dir}"
key_file = "{log.key_file}"

[signal]
endpoint = "{daemon.endpoints["tcp"]}"
account = "{ACCOUNT}"

[archive]
destination = "s3://{bucket}/ministerie"
s3_endpoint = "{stand_in.endpoint}"
s3_credentials_file = "{creds}"
retention_days = 30

[logging]
level = "INFO"
format = "json"
"""
    )
    return cfg


def start_run(cfg: Path, out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


async def test_run_uploads_the_month_that_ended(stand_in: StandIn, tmp_path: Path) -> None:
    """At start `run` catches up: the month before this one is packaged, uploaded under lock, read back and
    verified, its receipt written and the outbox emptied; SIGTERM exits 0; no credential in the logs."""
    log, name = await asyncio.to_thread(last_month_log, tmp_path)
    bucket = await asyncio.to_thread(stand_in.make_bucket)
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    out = tmp_path / "run.out"
    proc = start_run(config_for(tmp_path, log, stand_in, bucket, daemon), out)
    try:
        receipt = log.data_dir / "uploads" / f"{name}.json"
        deadline = time.monotonic() + 90
        while not receipt.exists() and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert receipt.exists(), out.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await daemon.stop()
    assert f'"url": "s3://{bucket}/ministerie/{name}.tar"' in receipt.read_text()
    assert list((log.data_dir / "outbox").iterdir()) == []
    logs = out.read_text()
    assert "package uploaded and verified" in logs
    assert CREDENTIALS.secret_access_key not in logs


async def test_run_refuses_a_bucket_without_object_lock(stand_in: StandIn, tmp_path: Path) -> None:
    """`run` with a bucket that has no object lock does not start: exit 2, one line naming the problem."""
    log, _ = await asyncio.to_thread(last_month_log, tmp_path)
    bucket = await asyncio.to_thread(lambda: stand_in.make_bucket(object_lock=False))
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    out = tmp_path / "run.out"
    try:
        proc = start_run(config_for(tmp_path, log, stand_in, bucket, daemon), out)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        await daemon.stop()
    assert code == 2, out.read_text()[-3000:]
    text = out.read_text()
    assert "has no object lock" in text and "Traceback" not in text
