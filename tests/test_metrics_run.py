"""`/metrics` and `/healthz` of a real `chatarchief run` (Signal stand-in daemon, data dir on a small tmpfs).

The bot is the real command as a subprocess; the figures are scraped over HTTP as Prometheus would and
parsed with prometheus-client's own parser. The storage fault is the one tests/test_fault_disk.py uses: the
tmpfs holding the data dir is filled up while the bot runs. Needs root to mount the tmpfs (CI runs as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.dev.synapse import free_port
from bridge.log import keys as keyfile
from tests.support.botrun import BotRun, chatarchief
from tests.support.disk import fill, mounted_tmpfs
from tests.support.logview import LogView
from tests.support.officials import poll_until
from tests.support.signal_daemon import ACCOUNT, SignalDaemon, load_fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for this test only."""
    with mounted_tmpfs(tmp_path / "disk", 24) as mnt:
        yield mnt


def message(i: int, pad: int = 0) -> dict[str, Any]:
    params = copy.deepcopy(load_fixture("dm_received"))
    params["envelope"]["timestamp"] = params["envelope"]["dataMessage"]["timestamp"] = 1_720_000_000_000 + i
    params["envelope"]["dataMessage"]["message"] = f"ZEGEL bericht {i} " + "x" * pad
    return params


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(session: aiohttp.ClientSession, base: str) -> tuple[str, dict[Any, float]]:
    async with session.get(f"{base}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return text, samples(text)


async def health(session: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{base}/healthz") as r:
        return r.status, json.loads(await r.text())


async def test_run_serves_metrics_that_move_and_health_that_flips_on_failing_storage(
    small_disk: Path, tmp_path: Path
) -> None:
    """With [metrics] enabled, `run` answers /healthz 200 and /metrics; ten Signal messages move
    events_captured{source="signal",kind="message"} by exactly ten, the lag histogram by ten, set the
    source's last-commit time and the log's record count; no phone number or message text appears in the
    figures. When the data dir's disk fills, /healthz answers 503 naming the unwritable data dir and, once a
    batch cannot be stored, the paused Signal writer; storage_failing is 1 and alerts{kind="storage_failing"}
    counts. When space returns /healthz is 200 again, every message is stored, and SIGTERM exits 0."""
    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    daemon = SignalDaemon(daemon_dir, keepalive=0.2)
    await daemon.start()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    data_dir = small_disk / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "chatarchief.toml"
    config.write_text(f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{data_dir}"
key_file = "{secrets / "chatarchief.key"}"

[signal]
endpoint = "{daemon.endpoints["tcp"]}"
account = "{ACCOUNT}"

[metrics]
enabled = true
listen = "127.0.0.1:{port}"
""")
    bot = BotRun(config, tmp_path)
    try:
        init = chatarchief("init", "--config", str(config))
        assert init.returncode == 0, init.stderr
        keys = keyfile.load(secrets / "chatarchief.key")
        proc = bot.start()
        await poll_until(lambda: daemon.subscribed() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, bot.stderr_tail()
        async with aiohttp.ClientSession() as session:
            status, body = await health(session, base)
            assert (status, body) == (200, {"status": "ok"})
            _, before = await scrape(session, base)
            assert value(before, "chatarchief_build_info", version="0.1.0") == 1
            assert value(before, "chatarchief_heartbeats_recorded") >= 1

            for i in range(10):
                daemon.enqueue(message(i))
            with LogView(data_dir, keys) as view:
                await poll_until(lambda: sum(e.source == "signal" for _, e in view.events()) >= 10, timeout=30)
                size = view.size()
            text, after = await scrape(session, base)
            kind = {"source": "signal", "kind": "message"}
            assert (
                value(after, "chatarchief_events_captured_total", **kind)
                - value(before, "chatarchief_events_captured_total", **kind)
                == 10
            )
            lag = "chatarchief_capture_lag_seconds_count"
            assert value(after, lag, source="signal") - value(before, lag, source="signal") == 10
            assert value(after, "chatarchief_source_last_commit_timestamp_seconds", source="signal") > 0
            assert value(after, "chatarchief_log_records") >= size
            assert value(after, "chatarchief_storage_failing") == 0
            assert value(after, "chatarchief_healthy") == 1
            assert ACCOUNT not in text and ACCOUNT.lstrip("+") not in text and "ZEGEL" not in text

            filler = small_disk / "filler"
            await asyncio.to_thread(fill, filler)
            status, body = await health(session, base)
            assert status == 503, body
            assert body["status"] == "failing"
            assert any(r.startswith("data dir not writable: ENOSPC") for r in body["reasons"]), body

            for i in range(10, 60):  # enough to outgrow what SQLite's WAL has room for
                daemon.enqueue(message(i, pad=30_000))

            async def writer_paused() -> bool:
                _, body = await health(session, base)
                return any(r.startswith("storage failing for signal") for r in body.get("reasons", []))

            deadline = asyncio.get_running_loop().time() + 60
            while not await writer_paused():
                assert asyncio.get_running_loop().time() < deadline, "the Signal writer never paused"
                assert proc.poll() is None, bot.stderr_tail()
                await asyncio.sleep(0.2)
            _, failing = await scrape(session, base)
            assert value(failing, "chatarchief_storage_failing") == 1
            assert value(failing, "chatarchief_healthy") == 0
            assert value(failing, "chatarchief_storage_failures_total", writer="signal") >= 1
            assert value(failing, "chatarchief_alerts_total", kind="storage_failing") >= 1

            filler.unlink()
            deadline = asyncio.get_running_loop().time() + 90
            while (await health(session, base))[0] != 200:
                assert asyncio.get_running_loop().time() < deadline, "health never came back"
                await asyncio.sleep(0.2)
            with LogView(data_dir, keys) as view:
                await poll_until(lambda: sum(e.source == "signal" for _, e in view.events()) >= 60, timeout=90)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()
        await daemon.stop()
    verify = chatarchief("verify", "--config", str(config))
    assert verify.returncode == 0, verify.stderr


async def test_health_fails_while_the_signal_daemon_is_unreachable_and_recovers_when_it_comes(
    tmp_path: Path,
) -> None:
    """`run` whose signal-cli daemon is not there yet answers /healthz 503 naming the silent Signal source
    (silent_after_seconds = 2) while the process itself runs; once the daemon listens and the source
    subscribes and commits, /healthz is 200."""
    (tmp_path / "daemon").mkdir()
    daemon = SignalDaemon(tmp_path / "daemon", keepalive=0.2)
    daemon_port = free_port()
    daemon.tcp_port = daemon_port
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "chatarchief.toml"
    config.write_text(f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{tmp_path / "data"}"
key_file = "{secrets / "chatarchief.key"}"

[signal]
endpoint = "tcp://127.0.0.1:{daemon_port}"
account = "{ACCOUNT}"

[metrics]
enabled = true
listen = "127.0.0.1:{port}"
silent_after_seconds = 2
""")
    bot = BotRun(config, tmp_path)
    try:
        assert chatarchief("init", "--config", str(config)).returncode == 0
        proc = bot.start()
        async with aiohttp.ClientSession() as session:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                assert asyncio.get_running_loop().time() < deadline, "never reported the silent source"
                assert proc.poll() is None, bot.stderr_tail()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    status, body = await health(session, base)
                    if status == 503 and any(r.startswith("source signal silent for") for r in body["reasons"]):
                        break
                await asyncio.sleep(0.2)
            await daemon.start()
            deadline = asyncio.get_running_loop().time() + 60
            i = 0
            while (await health(session, base))[0] != 200:  # each message is a commit: silence ends
                assert asyncio.get_running_loop().time() < deadline, "health never came back with the daemon"
                daemon.enqueue(message(i := i + 1))
                await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()
        await daemon.stop()
