"""Named durable writes (STYLE: create-exclusive, atomic-replace; always fsync), the one copy every
module uses (key file, blobs, Matrix session and state, demo config; `fsync_dir` for the archive's bags).

Contract: when these return, the file's bytes and its directory entry are on
disk (file fsynced, then the directory fsynced), and a name once created is not
lost.

- `write_exclusive(path, data, mode)`: create a new file; raises
  FileExistsError if the name exists (never overwrites). It writes under the
  final name, so a crash before it returns can leave a short file there; its
  callers create files once (`init`), and a rerun refuses the leftover instead
  of overwriting it.
- `write_atomic(path, data, mode)`: replace `path` with `data` through a
  uniquely named temp file beside it (removed again if the write fails), so a
  crash leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_exclusive(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what the caller asked for
        _write_all(fd, data)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
