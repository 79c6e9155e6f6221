"""A package bag as one deterministic tar file, and its safe unpacking (I/O).

RFC 8493 §4.4 lets a bag travel serialised as one file whose single top-level
directory has the bag's name; we use plain POSIX (pax) tar, uncompressed (media
is compressed already, and an archivist's tools all read tar). One object per
package makes the upload atomic (a half package never appears in the bucket,
where object lock would keep it forever) and "same package" a byte comparison.

Deterministic: the same bag gives the same bytes (entries sorted by path, mtime
0, owner root:root with no names, modes 0755/0644), so a re-upload of a month
compares equal. `unpack` refuses anything but plain files and directories under
the one top-level directory (no links, devices, absolute or `..` paths): the
bytes come back from a server we do not control.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import Check, LogIntegrityError


def _bad(reason: str) -> LogIntegrityError:
    return LogIntegrityError(None, reason, check=Check.UPLOAD)


CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Serialised:
    path: Path
    sha256: str
    size: int


class _HashingWriter:
    """A file being written, hashed on the way (no second read of a many-GiB tar)."""

    def __init__(self, path: Path) -> None:
        self._fh = path.open("xb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def _entries(bag: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(bag):
        dirs.sort()
        here = Path(root)
        found += [here / d for d in dirs]
        found += [here / f for f in sorted(files)]
    return sorted(found, key=lambda p: p.relative_to(bag).as_posix())


def serialise(bag: Path, out: Path) -> Serialised:
    """Write `bag` as `out` (a new file): a deterministic pax tar with top-level directory `bag.name`."""
    writer = _HashingWriter(out)
    try:
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            tar.addfile(_info(bag.name, tarfile.DIRTYPE, 0))
            for path in _entries(bag):
                name = f"{bag.name}/{path.relative_to(bag).as_posix()}"
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    raise _bad(f"{path} is not a plain file or folder; not packed")
                if path.is_dir():
                    tar.addfile(_info(name, tarfile.DIRTYPE, 0))
                    continue
                with path.open("rb") as fh:
                    tar.addfile(_info(name, tarfile.REGTYPE, os.fstat(fh.fileno()).st_size), fh)
    except BaseException:
        writer.close()
        out.unlink(missing_ok=True)
        raise
    writer.close()
    return Serialised(out, writer.sha.hexdigest(), writer.size)


def _info(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def unpack(tar_path: Path, into: Path, name: str) -> Path:
    """Unpack `tar_path` into the empty folder `into`; returns `into/name`, the bag.

    Refused (LogIntegrityError, check "upload"): a member outside `name/`, a link, a
    device, or a tar that does not parse.
    """
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                top = member.name.split("/", 1)[0]
                if top != name or not (member.isfile() or member.isdir()) or ".." in member.name.split("/"):
                    raise _bad(f"{tar_path.name}: member {member.name[:120]!r} is not a file of the bag {name}")
                tar.extract(member, into, filter="data")
    except tarfile.TarError as exc:
        raise _bad(f"{tar_path.name} is not a readable tar: {exc}") from None
    bag = into / name
    if not bag.is_dir():
        raise _bad(f"{tar_path.name} holds no folder {name}")
    return bag
