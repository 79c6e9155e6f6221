"""One logging convention: a constant message, structured fields in `extra=`, never %-args or f-strings.

ruff's G rules (flake8-logging-format) catch f-strings, `%` and `.format` in the message; this test catches
what they allow: positional %-style arguments (`log.info("joined %s", room)`), which put the fields into the
text where the JSON formatter (`bridge.logs`) cannot find them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def offending_calls(path: Path) -> list[int]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"log", "logger", "logging"}
            and (len(node.args) > 1 or (node.args and not isinstance(node.args[0], ast.Constant)))
        ):
            found.append(node.lineno)
    return found


def test_log_calls_carry_fields_in_extra_not_in_the_message() -> None:
    """Every log call in bridge/ has a constant message and no positional arguments."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "bridge").rglob("*.py"))
        for line in offending_calls(path)
    ]
    assert offenders == []


def test_the_check_sees_a_positional_argument(tmp_path: Path) -> None:
    """The check itself flags `log.info("x %s", y)` and lets `log.info("x", extra={...})` pass."""
    sample = tmp_path / "sample.py"
    sample.write_text('log.info("joined %s", room)\nlog.info("joined", extra={"room": room})\n')
    assert offending_calls(sample) == [1]
