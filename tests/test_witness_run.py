"""`chatarchief run` with a [witness] section against a real `chatarchief witness serve`: capture goes on while
the witness is down, the newest checkpoint is cosigned once it is up, and `verify --witness-key` passes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bridge.dev.synapse import free_port
from bridge.log import keys as keyfile
from tests.support.logview import LogView
from tests.support.signal_daemon import ACCOUNT, SignalDaemon
from tests.test_metrics_run import scrape, value
from tests.test_signal_run import REPO, chatarchief, numbered, until


def cosigned_sizes(data_dir: Path) -> list[int]:
    db = data_dir / "cosignatures.sqlite3"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in conn.execute("SELECT size FROM cosignatures ORDER BY size")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def test_run_asks_the_witness_and_survives_its_absence(tmp_path: Path) -> None:
    """The bot starts with its witness down: messages are still captured and sealed (capture never waits on
    the network; the log warns). The witness comes up: the bot catches it up to the newest checkpoint; at
    SIGTERM the final checkpoint is cosigned too, and `verify --witness-key K --quorum 1` exits 0."""
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    await daemon.start()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    port = free_port()
    metrics_base = f"http://127.0.0.1:{free_port()}"
    wdir = tmp_path / "witness"
    init_w = chatarchief("witness", "init", "--name", "witness.test.example/run", "--key-file", str(wdir / "w.key"))
    assert init_w.returncode == 0, init_w.stderr
    witness_vkey = (wdir / "w.key.pub").read_text().strip()
    config = tmp_path / "chatarchief.toml"
    config.write_text(
        f"""
[storage]
data_dir = "{tmp_path / "data"}"
key_file = "{secrets / "chatarchief.key"}"
checkpoint_every_seconds = 0.5

[signal]
endpoint = "{daemon.endpoints["tcp"]}"
account = "{ACCOUNT}"

[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[witness]
urls = ["http://127.0.0.1:{port}"]
public_keys = ["{witness_vkey}"]
quorum = 1
poll_seconds = 0.2
retry_max_seconds = 1.0
timeout_seconds = 2.0

[metrics]
enabled = true
listen = "{metrics_base.removeprefix("http://")}"
"""
    )
    init = chatarchief("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    log_vkey = (secrets / "chatarchief.key.pub").read_text().strip()
    wconfig = wdir / "witness.toml"
    wconfig.write_text(
        f'key_file = "{wdir / "w.key"}"\nstate = "{wdir / "state.sqlite3"}"\nlisten = "127.0.0.1:{port}"\n'
        f'[[logs]]\norigin = "{log_vkey.split("+")[0]}"\nvkeys = ["{log_vkey}"]\n'
    )
    keys = keyfile.load(secrets / "chatarchief.key")
    bot_log = tmp_path / "run.stderr"
    bot: subprocess.Popen[bytes] | None = None
    witness: subprocess.Popen[bytes] | None = None
    try:
        with bot_log.open("wb") as out:
            bot = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        await until(lambda: daemon.subscribed() or bot.poll() is not None)
        for i in range(5):
            daemon.enqueue(numbered(i))
        with LogView(tmp_path / "data", keys) as view:
            await until(lambda: len(view.events()) >= 5)
        await until(lambda: b"ALERT witness did not cosign" in bot_log.read_bytes())
        assert cosigned_sizes(tmp_path / "data") == []
        async with aiohttp.ClientSession() as session:
            _, down = await scrape(session, metrics_base)
        name = witness_vkey.split("+")[0]
        assert value(down, "chatarchief_witness_cosigned_size", witness=name) == 0
        assert ("chatarchief_witness_last_cosignature_timestamp_seconds", frozenset({("witness", name)})) not in down
        assert value(down, "chatarchief_witness_quorum_met") == 0
        sealed = value(down, "chatarchief_log_records") - value(down, "chatarchief_unsealed_records")
        assert value(down, "chatarchief_witness_unwitnessed_records") == sealed > 0
        witness = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "witness", "serve", "--config", str(wconfig)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )  # fmt: skip
        with LogView(tmp_path / "data", keys) as view:
            await until(lambda: view.checkpoint_sizes()[-1] in cosigned_sizes(tmp_path / "data"), timeout=30)
        async with aiohttp.ClientSession() as session:
            _, up = await scrape(session, metrics_base)
        cosigned_at = value(up, "chatarchief_witness_last_cosignature_timestamp_seconds", witness=name)
        assert abs(time.time() - cosigned_at) < 120
        assert value(up, "chatarchief_witness_cosigned_size", witness=name) == max(cosigned_sizes(tmp_path / "data"))
        for i in range(5, 9):
            daemon.enqueue(numbered(i))
        with LogView(tmp_path / "data", keys) as view:
            await until(lambda: len(view.events()) >= 9)
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=30) == 0, bot_log.read_text()
    finally:
        for proc in (bot, witness):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        await daemon.stop()
    with LogView(tmp_path / "data", keys) as view:
        assert cosigned_sizes(tmp_path / "data")[-1] == view.checkpoint_sizes()[-1] == view.size()
    logs = bot_log.read_text()
    assert logs.index("ALERT newest checkpoint lacks its witness quorum") < logs.index("newest checkpoint witnessed")
    assert "ZEGEL" not in logs
    verify = chatarchief("verify", "--config", str(config), "--witness-key", witness_vkey, "--quorum", "1")
    assert verify.returncode == 0, verify.stderr
    assert "cosigned by witness.test.example/run" in verify.stdout
