"""Helper processes: a fresh interpreter running one of our entry points, talking over its stdin and stdout.

Contract: `start(module, entry)` runs `module.entry()` in `python -I` (no PYTHONPATH, no user site: only this
checkout's `bridge`, put first on sys.path) with stdin, stdout and stderr as pipes; `StderrTail(proc)` reads
the helper's stderr on a thread (a full stderr pipe would block it) and keeps its last lines, for the error
that names why a helper failed. What crosses the pipes (keys included) is each caller's protocol.

Why not multiprocessing: a pool starts by importing the caller's main script (the whole CLI) in every
process, and its fork start method would copy the parent's memory, key material included.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

#: The folder holding this `bridge` package.
_ROOT = str(Path(__file__).resolve().parents[1])
#: Lines of a helper's stderr kept for its error message.
TAIL_LINES = 20


def start(module: str, entry: str) -> subprocess.Popen[bytes]:
    code = f"import sys; sys.path.insert(0, {_ROOT!r}); from {module} import {entry}; {entry}()"
    return subprocess.Popen(
        [sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


class StderrTail:
    """The last `TAIL_LINES` lines a helper wrote to stderr, read on a daemon thread until it closes it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)
            del self.lines[:-TAIL_LINES]

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def last(self) -> str:
        """The helper's last line on stderr (after it closed stderr, or 5 s), or "no message"."""
        self.join(timeout=5)
        found = b"".join(self.lines).decode("utf-8", "replace").strip().splitlines()[-1:]
        return found[0] if found else "no message"
