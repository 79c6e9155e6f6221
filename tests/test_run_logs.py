"""What `chatarchief run` tells an operator (issue 14): a start-up line that says what runs where, no library
chatter at INFO, numbers as numbers, JSON only, and the real reason a homeserver cannot be reached.

The real command as a subprocess against a closed loopback port (nothing listens: connection refused).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from nio import AsyncClient, AsyncClientConfig

from bridge.sources.matrix.client import MatrixUnavailableError, checked, why_unreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: connecting is refused


def _config(tmp_path: Path, homeserver: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "pw").write_text("pw")
    (secrets / "pw").chmod(0o600)
    config = tmp_path / "c.toml"
    config.write_text(
        '[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{secrets / "k.key"}"\n'
        f'[matrix]\nhomeserver = "{homeserver}"\nuser_id = "@bot:localhost"\npassword_file = "{secrets / "pw"}"\n'
    )
    return config


def test_run_logs_a_start_line_json_only_and_the_real_reason(tmp_path: Path) -> None:
    config = _config(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    cmd = [sys.executable, "-m", "bridge.cli"]
    assert subprocess.run([*cmd, "init", "--config", str(config)], capture_output=True, check=False).returncode == 0
    proc = subprocess.Popen([*cmd, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)  # start-up, then a few refused logins with backoff
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert stdout == b""
    lines = [json.loads(line) for line in stderr.decode().splitlines()]  # every line is JSON: no plain text
    start = next(r for r in lines if r["msg"] == "capture running")
    assert start["version"][0].isdigit() and start["sources"] == ["matrix"]
    assert start["data_dir"] == str(tmp_path / "data") and len(start["log_id"]) == 32 and start["pid"] == proc.pid
    assert start["writer_lock"].endswith("writer.lock")
    assert not [r for r in lines if r["level"] == "INFO" and not r["logger"].startswith("bridge.")]
    assert not [r for r in lines if "Timed out" in r["msg"]]  # nio's words for a refused connection
    reasons = [r["reason"] for r in lines if "reason" in r]
    assert reasons and all("connection refused" in r for r in reasons)
    stopped = next(r for r in lines if r["msg"].startswith("capture stopped"))
    assert isinstance(stopped["sealed_size"], int) and isinstance(stopped["log_size"], int)


@pytest.mark.parametrize(
    ("homeserver", "reason"),
    [("http://127.0.0.1:{port}", "connection refused"), ("http://no-such-host.invalid:8008", "not resolved")],
)
async def test_unreachable_homeserver_is_named_by_its_cause(homeserver: str, reason: str) -> None:
    client = AsyncClient(
        homeserver.format(port=_closed_port()), "@bot:localhost", config=AsyncClientConfig(max_timeouts=1)
    )
    try:
        with pytest.raises(MatrixUnavailableError, match=reason):
            await checked(client.login("pw"), "login")
    finally:
        await client.close()


async def test_timeouts_are_named_too() -> None:
    with socket.socket() as server:  # accepts the connection, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(TimeoutError) as info:
                await session.get(f"http://127.0.0.1:{port}/")
    assert why_unreachable(info.value) == "timed out"


def test_log_records_follow_a_swapped_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """`logs.setup` under one stderr (a CLI runner's), then that stream is gone: later records go to the current
    stderr instead of failing with "--- Logging error ---" and a traceback (seen across CliRunner tests)."""
    import io
    import logging

    from bridge import logs

    old = sys.stderr
    first = io.StringIO()
    sys.stderr = first
    try:
        logs.setup("INFO", "json")
    finally:
        sys.stderr = old
    first.close()
    logging.getLogger("bridge.test").info("after the swap", extra={"n": 1})
    err = capsys.readouterr().err
    assert "after the swap" in err and "Logging error" not in err and "Traceback" not in err
    logging.getLogger().handlers.clear()
