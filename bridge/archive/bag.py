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

import contextlib
import errno
import filecmp
import hashlib
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self

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


class HashOnly:
    """An `OutFile` that keeps only the SHA-256 and size of what is written (a sink that compares)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        return None

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None


class OutFile(Protocol):
    """A payload file being produced: written to, closed, then its SHA-256 and size are known."""

    size: int

    def write(self, data: bytes) -> int: ...
    def close(self) -> None: ...
    def hexdigest(self) -> str: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None: ...


class PackageSink(Protocol):
    """Where the renderers put payload files: `BagBuilder` writes them, verify-package compares them.

    `writes`: whether files are written (a renderer in a worker process then writes them itself under
    `data_path("")` and hands back their digests); `record(rel, digest, size)` takes such a file.
    """

    payload: dict[str, tuple[str, int]]
    writes: bool

    def data_path(self, rel: str) -> Path: ...
    def record(self, rel: str, digest: str, size: int) -> None: ...
    def open(self, rel: str) -> OutFile: ...
    def done(self, rel: str, fh: OutFile) -> None: ...
    def write(self, rel: str, data: bytes) -> tuple[str, int]: ...


def tag_files(
    payload: dict[str, tuple[str, int]], info: Iterable[tuple[str, str]], extra: dict[str, bytes]
) -> dict[str, bytes]:
    """Every tag file of a bag (bagit.txt, bag-info.txt with Payload-Oxum, manifests, `extra` tag files)."""
    total = sum(size for _, size in payload.values())
    lines = [*info, ("Payload-Oxum", f"{total}.{len(payload)}")]
    tags: dict[str, bytes] = {
        "bagit.txt": BAGIT_TXT,
        "bag-info.txt": "".join(f"{k}: {v}\n" for k, v in lines).encode("utf-8"),
        "manifest-sha256.txt": "".join(
            f"{digest}  {manifest_path('data/' + rel)}\n" for rel, (digest, _) in sorted(payload.items())
        ).encode("utf-8"),
        **extra,
    }
    tagmanifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(tags.items()))
    tags["tagmanifest-sha256.txt"] = tagmanifest.encode("utf-8")
    return tags


def manifest_path(rel: str) -> str:
    """A path as RFC 8493 manifests write it (CR, LF and % percent-encoded)."""
    return rel.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


class BagBuilder:
    """Builds a bag in a temp dir beside `final`; `publish()` moves it into place."""

    writes = True

    def __init__(self, final: Path, workdir: Path | None = None) -> None:
        """Build in `workdir` (a private directory; default: beside `final`), publish to `final`."""
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        base = workdir if workdir is not None else final.parent
        self.root = base / f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        self.root.mkdir(mode=0o700)
        #: payload path (relative to data/) -> (sha256 hex, size)
        self.payload: dict[str, tuple[str, int]] = {}
        self._early: ThreadPoolExecutor | None = None
        self._syncing: list[Future[None]] = []
        self._synced_paths: set[str] = set()  # fsynced early: not again in publish (written once, never changed)

    def data_path(self, rel: str) -> Path:
        path = self.root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def open(self, rel: str) -> HashingFile:
        """A new payload file `data/<rel>`; call `done(rel, file)` after closing it."""
        return HashingFile(self.data_path(rel))

    def done(self, rel: str, fh: OutFile) -> None:
        self.payload[rel] = (fh.hexdigest(), fh.size)

    def add(self, rel: str, digest: str, size: int) -> None:
        """Record a payload file written another way (its hash computed while writing)."""
        self.payload[rel] = (digest, size)

    def record(self, rel: str, digest: str, size: int) -> None:
        """A payload file a renderer in a worker process wrote under `data_path("")`."""
        self.add(rel, digest, size)

    def write(self, rel: str, data: bytes) -> tuple[str, int]:
        with self.open(rel) as fh:
            fh.write(data)
        self.done(rel, fh)
        return self.payload[rel]

    def sync_early(self, rels: Iterable[str]) -> None:
        """Start putting finished payload files (`data/<rel>`, written and closed) on disk now, on threads, so
        their writeback overlaps the work still to do instead of all of it waiting in `publish`. `publish`
        waits for them and raises the first error (an fsync error is seen only by the file it was reported to:
        a later fsync of the same file may not repeat it); `discard` waits too."""
        if self._early is None:
            self._early = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="bag-fsync")
        for rel in rels:
            path = str(self.root / "data" / rel)
            self._synced_paths.add(path)
            self._syncing.append(self._early.submit(_fsync_file, path))

    def _synced(self) -> None:
        """Wait for the early fsyncs; the first error raises."""
        try:
            for future in self._syncing:
                future.result()
        finally:
            if self._early is not None:
                self._early.shutdown(wait=True, cancel_futures=True)
                self._early = None
            self._syncing = []

    def finish(self, info: Iterable[tuple[str, str]], extra: dict[str, bytes] | None = None) -> None:
        """Write the tag files; `info` are bag-info.txt lines (Payload-Oxum is added), `extra` more tag files."""
        for name, data in tag_files(self.payload, info, extra or {}).items():
            path = self.root / name  # a tag file may sit in a tag directory (documentatie/)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)

    def publish(self) -> bool:
        """Move the bag to its final path; True if written, False if an identical bag was already there.

        A rename when the work dir is on the final path's file system; else a copy into a
        temp dir beside the final path, fsynced, then renamed: either way the final name
        appears at once, complete, or not at all.
        """
        self._synced()
        _fsync_tree(self.root, skip=self._synced_paths)
        if self.final.exists():
            same = _same_tree(self.root, self.final)
            self.discard()
            if not same:
                raise UsageError(f"{self.final} already holds a different package; refusing to overwrite it")
            return False
        self.root.chmod(0o755)
        try:
            os.rename(self.root, self.final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            beside = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                shutil.copytree(self.root, beside)
                _fsync_tree(beside)
                os.rename(beside, self.final)
            except BaseException:
                shutil.rmtree(beside, ignore_errors=True)
                raise
            self.discard()
        fsync_dir(self.final.parent)
        return True

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # the bag is being thrown away: its files' fsync errors do not matter
            self._synced()
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale(workdir: Path) -> list[Path]:
    """Remove temp bags in `workdir` left by a process that is gone (a crash); returns what was removed."""
    removed: list[Path] = []
    for p in workdir.glob(".*.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Files fsynced at once when a bag is published: the disk gets the flushes together (one at a time, a package of
#: a few hundred files spent 0.2-0.6 s waiting; in 8 threads 0.05-0.12 s, on this machine).
FSYNC_THREADS = 8


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path, skip: set[str] | None = None) -> None:
    """Every file (each once, several at a time; not those in `skip`, already on disk), then every directory, is
    on disk; the first error raises."""
    dirs: list[str] = []
    files: list[str] = []
    for dirpath, _, names in os.walk(root):
        dirs.append(dirpath)
        files.extend(os.path.join(dirpath, name) for name in names)
    if skip:
        files = [f for f in files if f not in skip]
    with ThreadPoolExecutor(FSYNC_THREADS) as pool:
        for _ in pool.map(_fsync_file, files):
            pass
    for dirpath in dirs:
        fsync_dir(Path(dirpath))


def _same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())

    names = files(a)
    if names != files(b):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)
