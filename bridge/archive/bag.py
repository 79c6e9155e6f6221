"""Writing a BagIt bag (RFC 8493) atomically and deterministically (I/O).

`BagBuilder` writes into a fresh temporary directory beside the final path,
hashing every file as it is written (no second read), then adds the tag files
(`bagit.txt`, `bag-info.txt`, `manifest-sha256.txt`, `tagmanifest-sha256.txt`,
manifests sorted by path). `publish` fsyncs every file and directory and
renames the bag into place. If a bag already sits at the final path it is
compared byte for byte: the same bag is success (idempotent), a different one
is refused, never overwritten. A crash before the rename leaves only the
hidden temp directory (`.<name>.tmp-*`), never a half bag under the final name.

We write the bag ourselves rather than with `bagit.make_bag` because that
moves files after the fact, hashes them again, stamps today's date and changes
the process's working directory (unsafe inside the running bot);
`bagit.Bag(...).validate()` checks the result in the tests and in
`verify-package`.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from bridge.durable import fsync_dir
from bridge.errors import UsageError

BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


class HashingFile:
    """A binary file being written, with its SHA-256 and size kept as it grows."""

    def __init__(self, path: Path, mode: str = "xb") -> None:
        self._fh: BinaryIO = path.open(mode)  # type: ignore[assignment]
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def manifest_path(rel: str) -> str:
    """A path as RFC 8493 manifests write it (CR, LF and % percent-encoded)."""
    return rel.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


class BagBuilder:
    """Builds a bag in a temp dir beside `final`; `publish()` moves it into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.root = final.parent / f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        self.root.mkdir(mode=0o755)
        #: payload path (relative to data/) -> (sha256 hex, size)
        self.payload: dict[str, tuple[str, int]] = {}

    def data_path(self, rel: str) -> Path:
        path = self.root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def open(self, rel: str) -> HashingFile:
        """A new payload file `data/<rel>`; call `done(rel, file)` after closing it."""
        return HashingFile(self.data_path(rel))

    def done(self, rel: str, fh: HashingFile) -> None:
        self.payload[rel] = (fh.hexdigest(), fh.size)

    def add(self, rel: str, digest: str, size: int) -> None:
        """Record a payload file written another way (its hash computed while writing)."""
        self.payload[rel] = (digest, size)

    def write(self, rel: str, data: bytes) -> tuple[str, int]:
        with self.open(rel) as fh:
            fh.write(data)
        self.done(rel, fh)
        return self.payload[rel]

    def finish(self, info: Iterable[tuple[str, str]]) -> None:
        """Write the tag files; `info` are bag-info.txt lines (Payload-Oxum is added)."""
        total = sum(size for _, size in self.payload.values())
        lines = [*info, ("Payload-Oxum", f"{total}.{len(self.payload)}")]
        tags: dict[str, bytes] = {
            "bagit.txt": BAGIT_TXT,
            "bag-info.txt": "".join(f"{k}: {v}\n" for k, v in lines).encode("utf-8"),
            "manifest-sha256.txt": "".join(
                f"{digest}  {manifest_path('data/' + rel)}\n" for rel, (digest, _) in sorted(self.payload.items())
            ).encode("utf-8"),
        }
        for name, data in tags.items():
            (self.root / name).write_bytes(data)
        tagmanifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(tags.items()))
        (self.root / "tagmanifest-sha256.txt").write_bytes(tagmanifest.encode("utf-8"))

    def publish(self) -> bool:
        """Move the bag to its final path; True if written, False if an identical bag was already there."""
        _fsync_tree(self.root)
        if self.final.exists():
            same = _same_tree(self.root, self.final)
            self.discard()
            if not same:
                raise UsageError(f"{self.final} already holds a different package; refusing to overwrite it")
            return False
        os.rename(self.root, self.final)
        fsync_dir(self.final.parent)
        return True

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())

    names = files(a)
    if names != files(b):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)
