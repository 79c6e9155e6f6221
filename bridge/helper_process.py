"""Helper processes: a fresh interpreter running one of our entry points, talking over its stdin and stdout.

Contract: `start(module, entry)` runs `module.entry()` in `python -I` (no PYTHONPATH, no user site: only this
checkout's `bridge`, put first on sys.path) with stdin, stdout and stderr as pipes; `StderrTail(proc)` reads
the helper's stderr on a thread (a full stderr pipe would block it) and keeps its last lines, for the error
that names why a helper failed. What crosses the pipes (keys included) is each caller's protocol.

`Started(module, entry, n)`: `n` helpers started ahead of their jobs, so they import while the caller works on,
then wait on their stdin using no CPU. Its `procs` (and, unless `tails=False`, their `tails`, one `StderrTail`
each) are in start order; a user sends jobs to them, starts more of the same (`start()`) or hands them out one
at a time (`take()`). `close()` ends every process it started, taken or not (killed if still running: one
never given a job, or one whose user stopped early) and closes their pipes; it may be called more than once.

Why not multiprocessing: a pool starts by importing the caller's main script (the whole CLI) in every
process, and its fork start method would copy the parent's memory, key material included.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
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


class Started:
    """`n` helpers running `module.entry()`, started at once (see the module docstring). `prepare(proc)` runs on
    each just after it starts (a pipe's size, say); `tails`: keep a `StderrTail` of each (False where the user
    reads stderr itself, as `Popen.communicate` does)."""

    def __init__(
        self,
        module: str,
        entry: str,
        n: int,
        prepare: Callable[[subprocess.Popen[bytes]], None] | None = None,
        tails: bool = True,
    ) -> None:
        self._module = module
        self._entry = entry
        self._prepare = prepare
        self._tails = tails
        self._taken = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tails: list[StderrTail] = []
        try:
            for _ in range(n):
                self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> subprocess.Popen[bytes]:
        """One more helper, appended to `procs` (and its tail to `tails`)."""
        proc = start(self._module, self._entry)
        self.procs.append(proc)
        if self._prepare is not None:
            self._prepare(proc)
        if self._tails:
            self.tails.append(StderrTail(proc))
        return proc

    def take(self) -> subprocess.Popen[bytes] | None:
        """The next helper not taken yet, or None when all were."""
        if self._taken == len(self.procs):
            return None
        self._taken += 1
        return self.procs[self._taken - 1]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            # a tail's thread reads stderr to its end (the process's exit) and owns it
            for stream in (proc.stdin, proc.stdout) if self._tails else (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
