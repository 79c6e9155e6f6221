"""The data dir's single-writer lock (`<data_dir>/writer.lock`, flock).

Contract: at most one process writes a log. `WriterLock.acquire(data_dir)` takes
an exclusive, non-blocking `flock` on the lock file and writes its PID into it;
the lock is held until `release()` or until the process dies (the kernel drops
it, so a SIGKILLed writer never leaves a stale lock). When another process holds
it, `acquire` raises `WriterBusy` naming that PID. Readers (`verify`, the reader,
package writing) take no lock: SQLite's WAL lets them read beside the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bridge.errors import UsageError

LOCK_NAME = "writer.lock"


class WriterBusy(UsageError):
    """Another process writes this log; `pid` is the holder's (None if it could not be read)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"the log in {data_dir} is being written by {who} (lock {data_dir / LOCK_NAME});"
            " stop it first, or hand the work to it"
        )
        self.data_dir = data_dir
        self.pid = pid


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


def holder_pid(data_dir: Path) -> int | None:
    """The PID written by the current (or last) holder, if readable."""
    try:
        text = lock_path(data_dir).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class WriterLock:
    """An acquired writer lock; release it with `release()` (or use as a context manager)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> WriterLock:
        path = lock_path(data_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WriterBusy(data_dir, holder_pid(data_dir)) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the PID only informs whoever finds the lock taken; a full disk must not leak the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass
        return cls(data_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
