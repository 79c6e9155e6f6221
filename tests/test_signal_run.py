"""Signal capture end to end: the real log (LogSink + LogStore), and `chatarchief run` with a [signal] section.

The daemon is the stand-in (`tests.support.signal_daemon`): real signal-cli needs Signal's servers.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bridge.blobs import BlobStore
from bridge.capture import LogSink
from bridge.events import Kind
from bridge.log import keys as keyfile
from bridge.log.reader import iter_events
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from bridge.sources.signal import SignalSource, SignalSourceConfig
from tests.conftest import LogDir
from tests.support.logview import LogView
from tests.support.signal_daemon import ACCOUNT, SignalDaemon, fixture_names, load_fixture

REPO = Path(__file__).resolve().parents[1]
UNSTORED = {"receipt", "typing", "sync_read"}


def numbered(i: int) -> dict[str, Any]:
    params = copy.deepcopy(load_fixture("dm_received"))
    params["envelope"]["timestamp"] = params["envelope"]["dataMessage"]["timestamp"] = 1_720_000_000_000 + i
    params["envelope"]["dataMessage"]["message"] = f"ZEGEL bericht {i}"
    return params


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_capture_into_the_real_log(empty_log: LogDir, tmp_path: Path) -> None:
    """Every fixture plus 30 messages, with a dropped connection and 5 re-delivered envelopes in between,
    land in the real log exactly once (attachment bytes in the encrypted blob store, fetched over a side
    connection when the envelope's own connection dropped first); `verify` passes."""
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    (tmp_path / "daemon").mkdir()
    await daemon.start()
    daemon.attachments["Xq3vT0bLm9Jk2a1.pdf"] = b"%PDF-1.4 nota"
    daemon.attachments["Vw1Onc3ImAgE.jpg"] = b"\xff\xd8\xff jpeg"
    daemon.attachments["aB3dE5fG7hJ9kL1.jpg"] = b"\xff\xd8\xff whiteboard"  # attachment_caption
    daemon.attachments["St0ryF1le2b3c4d.jpg"] = b"\xff\xd8\xff story"  # story_group
    try:
        async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
            blobs = BlobStore(empty_log.data_dir / "blobs", store.media_keys())
            sink = LogSink(store, f"signal:{ACCOUNT}")
            cfg = SignalSourceConfig(endpoint=daemon.endpoints["tcp"], account=ACCOUNT, backoff_initial=0.05)
            source = SignalSource(cfg, sink, blobs)
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(stop))
            await asyncio.wait_for(source.connected.wait(), 10)
            daemon.drop_after(12)
            daemon.redeliver(5)
            for name in fixture_names():
                daemon.enqueue(load_fixture(name))
            for i in range(30):
                daemon.enqueue(numbered(i))
            expected = len(fixture_names()) - len(UNSTORED) + 30
            await until(lambda: sum(source.counts[k.value] for k in Kind if k is not Kind.NOTICE) >= expected)
            stop.set()
            await task
            await store.checkpoint()
            stored = [e for _, e in iter_events(empty_log.data_dir, empty_log.keys)]
    finally:
        await daemon.stop()
    keys = Counter(e.key for e in stored)
    assert all(n == 1 for n in keys.values())
    assert len([e for e in stored if e.kind is not Kind.NOTICE]) == expected
    assert len([e for e in stored if e.kind is Kind.NOTICE]) == 1
    media = [a for e in stored for a in e.attachments]
    assert media and all(a.status == "stored" for a in media)
    assert blobs.get(media[0].blob_id or "") in (b"%PDF-1.4 nota", b"\xff\xd8\xff jpeg")
    report = verify_log(empty_log.data_dir, empty_log.keys)
    assert report.unsealed == 0


def chatarchief(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


async def test_chatarchief_run_with_signal_section(tmp_path: Path) -> None:
    """`chatarchief run` with only a [signal] section (TCP, manual receive mode) subscribes, captures every
    stored envelope kind exactly once, exits 0 on SIGTERM with the log sealed and verified, and its logs
    hold no message text."""
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config = tmp_path / "chatarchief.toml"
    config.write_text(
        f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{tmp_path / "data"}"
key_file = "{secrets / "chatarchief.key"}"

[signal]
endpoint = "{daemon.endpoints["tcp"]}"
account = "{ACCOUNT}"
receive_mode = "manual"

[logging]
level = "INFO"
format = "json"
"""
    )
    stderr_path = tmp_path / "run.stderr"
    proc: subprocess.Popen[bytes] | None = None
    try:
        init = chatarchief("init", "--config", str(config))
        assert init.returncode == 0, init.stderr
        daemon.attachments["Xq3vT0bLm9Jk2a1.pdf"] = b"%PDF-1.4 nota"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        await until(lambda: daemon.subscribed() or proc.poll() is not None)
        assert proc.poll() is None, stderr_path.read_text()
        names = [n for n in fixture_names() if n not in UNSTORED]
        for name in fixture_names():
            daemon.enqueue(load_fixture(name))
        for i in range(10):
            daemon.enqueue(numbered(i))
        keys = keyfile.load(secrets / "chatarchief.key")
        with LogView(tmp_path / "data", keys) as view:
            await until(lambda: len(view.events()) >= len(names) + 10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, stderr_path.read_text()
        with LogView(tmp_path / "data", keys) as view:
            events = [e for _, e in view.events()]
            assert view.checkpoint_sizes()[-1] == view.size()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await daemon.stop()
    assert Counter(e.key for e in events).most_common(1)[0][1] == 1
    assert len([e for e in events if e.source == "signal" and e.kind is not Kind.NOTICE]) == len(names) + 10
    verify = chatarchief("verify", "--config", str(config))
    assert verify.returncode == 0, verify.stderr
    logs = stderr_path.read_text()
    assert "ZEGEL" not in logs and "Goedemorgen" not in logs
    assert "ALERT compliance: view-once message captured" in logs
