"""A small tmpfs for full-disk tests, and a helper that fills it (shared by test_fault_disk and test_metrics_run)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """`path` as a tmpfs of `size_mib` MiB (0700) for the block's duration; the test is skipped where mounting
    is not allowed (needs root and CAP_SYS_ADMIN), which is named in the skip reason."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the file system is full (down to single bytes); returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    written += fh.write(chunk[:size])
                except OSError:
                    break
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
    return written
