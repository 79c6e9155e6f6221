"""`BagBuilder.sync_early`: finished payload files are fsynced on threads while the package is still being made;
an error there is never lost (a later fsync of the same file need not report it again), and publish waits."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from bridge.archive import bag
from bridge.archive.bag import BagBuilder


def _builder(tmp_path: Path) -> BagBuilder:
    (tmp_path / "work").mkdir()
    builder = BagBuilder(tmp_path / "out" / "pkg", tmp_path / "work")
    builder.write("a/events.jsonl", b"line\n")
    builder.write("b/events.jsonl", b"other\n")
    return builder


def test_an_early_fsync_error_fails_the_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bag._fsync_file
    failing = str(tmp_path / "work")

    def flaky(path: str) -> None:
        if path.endswith("a/events.jsonl") and path.startswith(failing):
            raise OSError(errno.EIO, "writeback failed")
        real(path)

    builder = _builder(tmp_path)
    monkeypatch.setattr(bag, "_fsync_file", flaky)
    builder.sync_early(["a/events.jsonl", "b/events.jsonl"])
    monkeypatch.setattr(bag, "_fsync_file", real)  # the later fsync of the same file reports nothing
    builder.finish([("Source-Organization", "x")])
    with pytest.raises(OSError, match="writeback failed"):
        builder.publish()
    assert not (tmp_path / "out" / "pkg").exists()
    builder.discard()


def test_early_synced_files_are_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = bag._fsync_file

    def counting(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(bag, "_fsync_file", counting)
    builder = _builder(tmp_path)
    builder.sync_early(["a/events.jsonl"])
    builder.finish([("Source-Organization", "x")])
    assert builder.publish()
    assert (tmp_path / "out" / "pkg" / "data" / "a" / "events.jsonl").read_bytes() == b"line\n"
    assert sum(p.endswith("a/events.jsonl") for p in synced) == 1  # early, not again with the whole tree
