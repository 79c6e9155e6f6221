"""Structured logging: one JSON object per line (or plain text), secrets redacted.

Contract: our own log calls carry ids and counts in `extra`, never message
content. As a second line of defence a filter masks anything that looks like
a credential (bearer tokens, `access_token=` parameters, Synapse `syt_` tokens)
in every record, including those of libraries such as nio and aiohttp.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_SECRETS = re.compile(r"(access_token=|Bearer\s+|\"access_token\":\s*\")[^\s&\"']+|syt_[A-Za-z0-9_]+", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "<redacted>", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, str | int | float | bool | None | list) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = f"{record.exc_info[0].__name__}: {redact(str(record.exc_info[1]))}"
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_"))
        line = f"{self.formatTime(record)} {record.levelname:7s} {record.name}: {record.getMessage()}"
        return f"{line} {extra}".rstrip()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, not the one at set-up (a test runner or
    an embedding caller may swap it; a stream closed since would turn every later record into a logging error)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = _Stderr(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nio logs event bodies at DEBUG; keep libraries at WARNING whatever our level (apscheduler narrates its
    # job store at INFO; our scheduler logs what it schedules itself).
    for noisy in ("nio", "aiohttp", "aiosqlite", "peewee", "asyncio", "apscheduler", "tzlocal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # nio says "Timed out, sleeping for 0s" for any connection error, refused ones included; our sources log
    # the real reason ("homeserver unreachable (connection refused)") with the retry.
    logging.getLogger("nio.client.async_client").addFilter(_DropNioTimeouts())


class _DropNioTimeouts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timed out, sleeping for")
