"""Structured logs: JSON lines with extras, credentials redacted."""

from __future__ import annotations

import json
import logging

import pytest

from bridge import logs


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    """`logs.setup` reconfigures the root logger; put it back so later tests don't log into a closed stream."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in ("nio", "aiohttp", "aiosqlite", "peewee", "asyncio")}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_json_lines_carry_extras_and_redact_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """A log record becomes one JSON object; bearer/access tokens in any message are masked."""
    logs.setup("INFO", "json")
    log = logging.getLogger("bridge.test")
    log.info("sync ok", extra={"room_count": 3, "source": "matrix:@bot:x"})
    logging.getLogger("nio.test").warning("GET /sync?access_token=syt_c2VjcmV0_abcdef&since=s1 failed")
    logging.getLogger("aiohttp.test").warning("headers: Authorization: Bearer abc.def-123")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines[0]["msg"] == "sync ok" and lines[0]["room_count"] == 3 and lines[0]["level"] == "INFO"
    text = json.dumps(lines)
    assert "syt_c2VjcmV0" not in text and "abc.def-123" not in text
    assert "access_token=<redacted>" in lines[1]["msg"] and "Bearer <redacted>" in lines[2]["msg"]


def test_library_debug_logs_are_held_back(capsys: pytest.CaptureFixture[str]) -> None:
    """Even at DEBUG our level, nio's DEBUG (which prints event bodies) is not emitted."""
    logs.setup("DEBUG", "text")
    logging.getLogger("nio.events").debug("event body: secret text")
    logging.getLogger("bridge.x").debug("ours")
    err = capsys.readouterr().err
    assert "secret text" not in err and "ours" in err


def test_retention_change_raises_a_compliance_alert(caplog: pytest.LogCaptureFixture) -> None:
    """A captured m.room.retention change is logged as an ALERT with ids and lifetime, never content."""
    from bridge.capture import report_compliance_alerts
    from bridge.sources.matrix.normalise import normalise

    retention = normalise(
        {
            "type": "m.room.retention",
            "state_key": "",
            "event_id": "$r",
            "room_id": "!a:b",
            "sender": "@m:b",
            "origin_server_ts": 1,
            "content": {"max_lifetime": 86_400_000},
        },
        received_at=2,
    )
    text = normalise(
        {
            "type": "m.room.message",
            "event_id": "$t",
            "room_id": "!a:b",
            "sender": "@m:b",
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "geheim"},
        },
        received_at=2,
    )
    with caplog.at_level(logging.WARNING):
        report_compliance_alerts([text, retention], "matrix:@bot:b")
    alerts = [r for r in caplog.records if r.getMessage().startswith("ALERT compliance")]
    assert len(alerts) == 1
    assert alerts[0].__dict__["max_lifetime_ms"] == 86_400_000 and alerts[0].__dict__["event_id"] == "$r"
    assert "geheim" not in caplog.text
