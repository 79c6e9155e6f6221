"""Operators never stop capture: the writing commands beside a running `chatarchief run`, through the CLI only.

Attack (issue 9, hole 4): `import`, `withhold`, `rotate-key`, a second `run` and the month-end seal on the
data dir while `run` captures. On main before the writer lock this stalled the bot for good ("UNIQUE
constraint failed: records.seq", SIGTERM ignored, envelopes lost while `verify` said intact); with the lock
alone they failed with exit 2. Now they are handed to the bot over its control socket and succeed, while
capture goes on: every envelope delivered meanwhile is in the log, `verify` says intact, and SIGTERM stops
the bot within seconds. The source is the signal-cli stand-in (faster than Synapse).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.events import Kind
from bridge.log import keys as keyfile
from bridge.log.reader import iter_decisions, iter_events
from bridge.log.writer import seal_at
from tests.support.logview import LogView
from tests.support.signal_daemon import ACCOUNT, SignalDaemon
from tests.test_fault_disk import fill, small_disk
from tests.test_signal_run import numbered, until

REPO = Path(__file__).resolve().parents[1]
__all__ = ["small_disk"]  # the 16 MiB tmpfs fixture
IMPORTED = 600


def chatarchief(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def import_lines(n: int, room: str = "!import:example.org") -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "type": "m.room.message",
                "event_id": f"$imp{i}",
                "sender": "@minister:example.org",
                "origin_server_ts": 1_764_140_400_000 + i,
                "room_id": room,
                "content": {"msgtype": "m.text", "body": f"IMPORT bericht {i}"},
            }
        )
        + b"\n"
        for i in range(n)
    )


class Bot:
    """`chatarchief run --config` with a [signal] section against the stand-in daemon."""

    def __init__(self, tmp_path: Path, daemon: SignalDaemon, data: Path | None = None) -> None:
        self.tmp = tmp_path
        self.data = data or tmp_path / "data"
        secrets = tmp_path / "secrets"
        secrets.mkdir(mode=0o700)
        self.key = secrets / "chatarchief.key"
        self.config = tmp_path / "chatarchief.toml"
        self.config.write_text(
            f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{self.data}"
key_file = "{self.key}"

[signal]
endpoint = "{daemon.endpoints["tcp"]}"
account = "{ACCOUNT}"
receive_mode = "manual"

[archive]
destination = "{tmp_path / "archive"}"

[logging]
level = "INFO"
format = "json"
"""
        )
        self.stderr = tmp_path / "run.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.stderr.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        return self.proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return chatarchief(*args, "--data-dir", str(self.data), "--key-file", str(self.key))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def feed(daemon: SignalDaemon, stop: asyncio.Event, start: int = 0) -> int:
    """Deliver an envelope every 20 ms until `stop`; returns how many were delivered."""
    i = start
    while not stop.is_set():
        daemon.enqueue(numbered(i))
        i += 1
        await asyncio.sleep(0.02)
    return i - start


def signal_messages(data: Path, keys: keyfile.KeyMaterial) -> list[Any]:
    return [e for _, e in iter_events(data, keys) if e.source == "signal" and e.kind is not Kind.NOTICE]


@pytest.fixture
async def running(tmp_path: Path) -> Any:
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    bot = Bot(tmp_path, daemon)
    try:
        init = chatarchief("init", "--config", str(bot.config))
        assert init.returncode == 0, init.stderr
        proc = bot.start()
        await until(lambda: daemon.subscribed() or proc.poll() is not None)
        assert proc.poll() is None, bot.stderr.read_text()
        await until(lambda: (bot.data / "control.sock").exists())
        yield bot, daemon
    finally:
        bot.kill()
        await daemon.stop()


async def test_writing_commands_beside_a_running_bot_go_through_it(running: Any) -> None:
    """While `run` captures a steady stream: `import` (600 events), `withhold` of an imported event,
    `rotate-key` and the month-end seal (`seal_at`) all succeed through the bot; a second `run` is refused
    with exit 2 naming the bot's PID; `verify --key-file` says intact beside it. Capture never stops: every
    envelope delivered meanwhile is in the log exactly once, and SIGTERM stops the bot within seconds."""
    bot, daemon = running
    assert bot.proc is not None
    pid = bot.proc.pid
    keys = keyfile.load(bot.key)
    source = bot.tmp / "import.jsonl"
    source.write_bytes(import_lines(IMPORTED))
    assert oct((bot.data / "control.sock").stat().st_mode & 0o777) == "0o600"
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max core file size\s+0\s+0", limits), "run must disable core dumps"

    stop_feeding = asyncio.Event()
    feeding = asyncio.create_task(feed(daemon, stop_feeding))
    try:
        imported = await asyncio.to_thread(bot.cli, "import", str(source))
        assert imported.returncode == 0, imported.stderr
        assert f"appended {IMPORTED}, duplicates 0" in imported.stdout
        assert f"through the running bot, process {pid}" in imported.stdout

        withheld = await asyncio.to_thread(bot.cli, "withhold", "$imp7", "--reason", "privé", "--by", "IS")
        assert withheld.returncode == 0, withheld.stderr
        assert f"process {pid}" in withheld.stdout
        decision_seq = int(re.findall(r"decision record (\d+)", withheld.stdout)[0])

        rotated = await asyncio.to_thread(bot.cli, "rotate-key")
        assert rotated.returncode == 0, rotated.stderr
        assert "new data key 2" in rotated.stdout and f"process {pid}" in rotated.stdout

        second = await asyncio.to_thread(chatarchief, "run", "--config", str(bot.config))
        assert second.returncode == 2
        assert f"process {pid} already writes the log" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr

        again = await asyncio.to_thread(bot.cli, "import", str(source))
        assert again.returncode == 0 and f"appended 0, duplicates {IMPORTED}" in again.stdout, again.stderr

        verified = await asyncio.to_thread(bot.cli, "verify")
        assert verified.returncode == 0, verified.stderr

        size = 5  # the archive's month-end seal at a size with no checkpoint yet, signed by the bot
        note = await asyncio.to_thread(seal_at, bot.data, keys, size)
        assert note.split("\n")[1] == str(size)
    finally:
        stop_feeding.set()
        delivered = await feeding

    assert bot.proc.poll() is None, "the bot stopped capturing"
    await until(lambda: len(signal_messages(bot.data, keys)) >= delivered, timeout=30)
    started = time.monotonic()
    bot.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(bot.proc.wait, 15) == 0, bot.stderr.read_text()[-3000:]
    took = time.monotonic() - started
    assert took < 5, f"SIGTERM took {took:.1f}s"

    messages = signal_messages(bot.data, keys)
    assert len(messages) == delivered
    assert Counter(e.key for e in messages).most_common(1)[0][1] == 1
    imported_events = [e for _, e in iter_events(bot.data, keys) if e.conversation == "!import:example.org"]
    assert len(imported_events) == IMPORTED
    decisions = list(iter_decisions(bot.data, keys))
    assert [(seq, d.target.event_id) for seq, d in decisions] == [(decision_seq, "$imp7")]
    with LogView(bot.data, keys) as view:
        assert view.checkpoint_sizes()[-1] == view.size()
    final = chatarchief("verify", "--config", str(bot.config))
    assert final.returncode == 0, final.stderr
    logs = bot.stderr.read_text()
    assert "UNIQUE constraint" not in logs and "ALERT storage" not in logs
    assert "IMPORT bericht" not in logs and "ZEGEL" not in logs
    print(f"\nfigure: {delivered} envelopes captured beside the commands; SIGTERM took {took:.2f}s")


async def test_sigterm_right_after_start_and_socket_cleanup(running: Any) -> None:
    """SIGTERM stops the bot within seconds and removes its control socket; afterwards the commands write
    locally again (no bot: they take the lock themselves)."""
    bot, _ = running
    assert bot.proc is not None
    started = time.monotonic()
    bot.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(bot.proc.wait, 15) == 0, bot.stderr.read_text()[-3000:]
    assert time.monotonic() - started < 5
    assert not (bot.data / "control.sock").exists()
    rotated = await asyncio.to_thread(bot.cli, "rotate-key")
    assert rotated.returncode == 0 and "running bot" not in rotated.stdout, rotated.stderr


@pytest.mark.slow
async def test_sigterm_stops_a_bot_paused_by_failing_storage(small_disk: Path, tmp_path: Path) -> None:
    """The data dir on a tmpfs that fills up: the bot pauses capture with one ALERT and retries; SIGTERM
    still stops it within seconds (before: the retry loop ignored SIGTERM and needed SIGKILL), exit 0,
    and what is on disk verifies."""
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    bot = Bot(tmp_path, daemon, data=small_disk / "data")
    try:
        assert chatarchief("init", "--config", str(bot.config)).returncode == 0
        proc = bot.start()
        await until(lambda: daemon.subscribed() or proc.poll() is not None)
        assert proc.poll() is None, bot.stderr.read_text()
        await asyncio.to_thread(fill, small_disk / "filler")
        i = 0

        def paused() -> bool:
            return "ALERT storage failing" in bot.stderr.read_text()

        deadline = time.monotonic() + 30
        while not paused():
            assert time.monotonic() < deadline, "the bot never hit the full disk"
            params = numbered(i)
            params["envelope"]["dataMessage"]["message"] = f"ZEGEL {i} " + "x" * 4000
            daemon.enqueue(params)
            i += 1
            await asyncio.sleep(0.01)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        took = time.monotonic() - started
        assert code == 0, bot.stderr.read_text()[-3000:]
        assert took < 5, f"SIGTERM took {took:.1f}s"
    finally:
        bot.kill()
        await daemon.stop()
    logs = bot.stderr.read_text()
    assert "ALERT could not seal the log at stop" in logs or "capture stopped; log sealed" in logs
    (small_disk / "filler").unlink()
    verified = chatarchief("verify", "--config", str(bot.config), "--allow-unsealed")
    assert verified.returncode == 0, verified.stderr
    print(f"\nfigure: SIGTERM while storage failed took {took:.2f}s")
