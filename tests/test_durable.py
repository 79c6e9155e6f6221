"""Named durable writes: create-exclusive never overwrites; atomic replace leaves no temp files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.durable import write_atomic, write_exclusive


def test_write_exclusive_creates_with_mode_and_refuses_existing(tmp_path: Path) -> None:
    """A new file gets exactly the requested mode; an existing name is refused and left untouched."""
    path = tmp_path / "secret"
    write_exclusive(path, b"one", 0o600)
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_exclusive(path, b"two", 0o600)
    assert path.read_bytes() == b"one"


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    """Replacing a file gives the new bytes with the requested mode and no temp file beside it."""
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
