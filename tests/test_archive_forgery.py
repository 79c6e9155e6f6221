"""Package forgeries by an insider who knows the documented format (issue 9, point 2).

Each test edits a fresh package the way docs/archive-package.md describes its
files, then rebuilds the BagIt manifests (and the MDTO sidecar checksums it
touched) so that fixity alone cannot catch it: `bagit` accepts every forged
bag. verify-package must still refuse each one with exit 1, because it
re-derives every file a person reads from the proven record lines.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bagit
import orjson
import pytest
from typer.testing import CliRunner

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.cli import app
from bridge.log import keys as keyfile
from tests.conftest import LogDir
from tests.support.archive_log import (
    OPTIONS,
    archive_log_two_months,
    dossier_dir,
    seal_for,
)

runner = CliRunner()
TAG_MANIFESTS = ("manifest-sha256.txt", "tagmanifest-sha256.txt")


@pytest.fixture(scope="module")
def january(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LogDir, Path]]:
    tmp = tmp_path_factory.mktemp("forgery")
    log = archive_log_two_months(tmp)
    yield log, snapshot(log.data_dir, log.keys, Month(2024, 1), tmp / "pkg" / "jan", OPTIONS, seal=seal_for(log)).path


@pytest.fixture
def pkg(january: tuple[LogDir, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "forged"
    shutil.copytree(january[1], dst)
    return dst


def verify(log: LogDir, path: Path) -> tuple[int, str]:
    pub = keyfile.public_path(log.key_file)
    result = runner.invoke(app, ["verify-package", str(path), "--public-key", str(pub)])
    return result.exit_code, " ".join(result.output.split())


def rebag(root: Path) -> None:
    """What an insider does after a forgery: rewrite both manifests and Payload-Oxum; bagit then accepts it."""
    files = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    (root / "manifest-sha256.txt").write_text("".join(f"{_sha256(p)}  {p.relative_to(root)}\n" for p in files))
    info = [ln for ln in (root / "bag-info.txt").read_text().splitlines() if not ln.startswith("Payload-Oxum")]
    info.append(f"Payload-Oxum: {sum(p.stat().st_size for p in files)}.{len(files)}")
    (root / "bag-info.txt").write_text("\n".join(info) + "\n")
    tags = sorted(p.name for p in root.iterdir() if p.is_file() and p.name != "tagmanifest-sha256.txt")
    (root / "tagmanifest-sha256.txt").write_text(
        "".join(f"{hashlib.sha256((root / t).read_bytes()).hexdigest()}  {t}\n" for t in tags)
    )
    logging.getLogger("bagit").setLevel(logging.ERROR)
    bagit.Bag(str(root)).validate()  # the forgery is a valid bag: only the re-derivation can catch it


def _sha256(p: Path) -> str:
    with p.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fix_sidecar(path: Path, old: bytes) -> None:
    """Update the `.bestand.MDTO.xml` of `path` (checksum and size) after its content changed from `old`."""
    sidecar = path.with_name(path.name + ".bestand.MDTO.xml")
    new = path.read_bytes()
    text = sidecar.read_bytes().replace(
        hashlib.sha256(old).hexdigest().encode(), hashlib.sha256(new).hexdigest().encode()
    )
    sidecar.write_bytes(text.replace(f">{len(old)}<".encode(), f">{len(new)}<".encode()))


def dossier(root: Path, room: str) -> Path:
    return dossier_dir(root, room)


def lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def line_of(p: Path, event_id: str) -> tuple[int, dict[str, Any]]:
    """The line of the event with upstream id `event_id` (and its index in the file)."""
    for i, raw in enumerate(lines(p)):
        d = orjson.loads(raw)
        if isinstance(d.get("event"), dict) and d["event"]["event_id"] == event_id:
            return i, d
    raise AssertionError(f"event {event_id} not in {p}")


def canonical(d: dict[str, object]) -> bytes:
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n"


def sealed_from(d: dict[str, object], withheld: dict[str, object] | None) -> bytes:
    """The line of a record shown without content: its commitment recomputed from salt and event."""
    import base64

    salt = base64.b64decode(str(d["salt"]))
    commit = hashlib.sha256(salt + orjson.dumps(d["event"], option=orjson.OPT_SORT_KEYS)).digest()
    out: dict[str, object] = {
        "ciphertext_sha256": d["ciphertext_sha256"],
        "commitment": base64.b64encode(commit).decode(),
        "header": d["header"],
        "seq": d["seq"],
    }
    if withheld is not None:
        out["withheld"] = withheld
    return canonical(out)


def replace_line(p: Path, event_id: str, new: bytes | None) -> None:
    i, _ = line_of(p, event_id)
    ls = lines(p)
    if new is None:
        del ls[i]
    else:
        ls[i] = new
    p.write_bytes(b"".join(ls))


def refused(log: LogDir, pkg: Path, *words: str) -> str:
    rebag(pkg)
    code, out = verify(log, pkg)
    assert code == 1, out
    for w in words:
        assert w in out, out
    return out


def test_the_untouched_package_verifies(january: tuple[LogDir, Path]) -> None:
    """Baseline for the forgeries: the fresh package verifies (exit 0) with the public key alone."""
    log, path = january
    code, out = verify(log, path)
    assert code == 0, out


def test_transcript_text_changed_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """A changed word in a transcript (sidecar checksum fixed too) no longer equals the rendering of the records."""
    t = dossier(pkg, "alpha") / "transcript.html"
    old = t.read_bytes()
    assert b"concept kamerbrief v2" in old
    t.write_bytes(old.replace(b"concept kamerbrief v2", b"concept kamerbrief v9"))
    fix_sidecar(t, old)
    refused(january[0], pkg, "transcript.html")


def test_script_added_to_a_transcript_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """A <script> slipped into a transcript is caught: the file differs from the one derived from the records."""
    t = dossier(pkg, "beta") / "transcript.html"
    old = t.read_bytes()
    t.write_bytes(old.replace(b"</body>", b"<script>location='https://evil.example'</script></body>"))
    fix_sidecar(t, old)
    refused(january[0], pkg, "transcript.html")


def test_dossier_renamed_in_its_mdto_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """The dossier's MDTO naam changed (still XSD-valid) is caught by re-deriving the XML."""
    d = dossier(pkg, "alpha")
    x = d.with_name(d.name + ".MDTO.xml")
    assert b"Crisisoverleg" in x.read_bytes()
    x.write_bytes(x.read_bytes().replace(b"Crisisoverleg", b"Borrelcommissie"))
    refused(january[0], pkg, ".MDTO.xml")


def test_fake_conversation_added_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """A dossier folder (transcript + MDTO) that no record derives is an unexpected file."""
    beta = dossier(pkg, "beta")
    fake = beta.with_name("gamma-" + beta.name)
    fake.mkdir()
    for name in ("transcript.html", "transcript.html.bestand.MDTO.xml"):
        (fake / name).write_bytes((beta / name).read_bytes().replace(b"beta", b"gamma"))
    xml = beta.with_name(beta.name + ".MDTO.xml")
    fake.with_name(fake.name + ".MDTO.xml").write_bytes(xml.read_bytes().replace(b"beta", b"gamma"))
    refused(january[0], pkg, "gamma")


def test_two_conversations_folders_swapped_are_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """Alpha's records under beta's folder name (and back): the folder name is derived from the conversation."""
    a, b = dossier(pkg, "alpha"), dossier(pkg, "beta")
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    ax, bx = a.with_name(a.name + ".MDTO.xml"), b.with_name(b.name + ".MDTO.xml")
    ax_bytes = ax.read_bytes()
    ax.write_bytes(bx.read_bytes())
    bx.write_bytes(ax_bytes)
    refused(january[0], pkg)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Chatarchief-Month: 2024-01", b"Chatarchief-Month: 2024-03"),
        (b"Chatarchief-Status: closed month", b"Chatarchief-Status: open month, interim"),
    ],
)
def test_month_or_status_in_bag_info_changed_is_caught(
    january: tuple[LogDir, Path], pkg: Path, old: bytes, new: bytes
) -> None:
    """bag-info.txt's month and status are derived (window, signed end time), so an edited one is refused."""
    info = pkg / "bag-info.txt"
    assert old in info.read_bytes()
    info.write_bytes(info.read_bytes().replace(old, new))
    refused(january[0], pkg, "bag-info.txt")


def test_month_and_status_changed_everywhere_are_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """Changing the status in bag-info and range.json alike: the signed end checkpoint is after the month's end."""
    info = pkg / "bag-info.txt"
    info.write_bytes(info.read_bytes().replace(b"closed month", b"open month, interim"))
    rng = pkg / "data" / "proof" / "range.json"
    rng.write_bytes(rng.read_bytes().replace(b"closed month", b"open month, interim"))
    refused(january[0], pkg, "status")


@pytest.mark.parametrize("backing", ["an event", "a decision about another conversation", "no record"])
def test_message_replaced_by_an_unbacked_tombstone_is_caught(
    january: tuple[LogDir, Path], pkg: Path, backing: str
) -> None:
    """A message hidden behind a `withheld` tombstone: refused unless a decision of the package backs exactly it.

    The tombstone names an event's seq, the real decision (which withholds a message of the other
    conversation), or a seq outside the log.
    """
    ev = dossier(pkg, "alpha") / "events.jsonl"
    _, d = line_of(ev, "$e3")
    decision = orjson.loads((pkg / "data/proof/other-records.jsonl").read_bytes().splitlines()[-1])
    assert "decision" in decision
    seq = {"an event": line_of(ev, "$e4")[1]["seq"], "no record": 10_000}.get(backing, decision["seq"])
    tomb = {"at_ms": 1705834800000, "by": "I. Specialist", "decision_seq": seq, "reason": "privé"}
    replace_line(ev, "$e3", sealed_from(d, tomb))
    refused(january[0], pkg, f"record {d['seq']}")


def test_bare_line_without_content_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """A line with header and commitment but neither content nor tombstone (leaf still right) is refused."""
    ev = dossier(pkg, "alpha") / "events.jsonl"
    _, d = line_of(ev, "$e3")
    replace_line(ev, "$e3", sealed_from(d, None))
    refused(january[0], pkg, f"record {d['seq']}", "bare line")


def test_message_moved_into_other_records_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """An event line moved out of its dossier into proof/other-records.jsonl (in log order) is refused."""
    ev = dossier(pkg, "beta") / "events.jsonl"
    i, d = line_of(ev, "$e8")
    moved = lines(ev)[i]
    replace_line(ev, "$e8", None)
    other = pkg / "data" / "proof" / "other-records.jsonl"
    rest = lines(other)
    at = sum(1 for raw in rest if orjson.loads(raw)["seq"] < d["seq"])
    other.write_bytes(b"".join([*rest[:at], moved, *rest[at:]]))
    refused(january[0], pkg, f"record {d['seq']} is an event")


def test_attachment_deleted_with_its_files_entry_is_caught(january: tuple[LogDir, Path], pkg: Path) -> None:
    """The image, its sidecar and the line's `files` entry removed: a stored attachment must be in the package."""
    alpha = dossier(pkg, "alpha")
    for p in (alpha / "media").iterdir():
        p.unlink()
    (alpha / "media").rmdir()
    ev = alpha / "events.jsonl"
    _, d = line_of(ev, "$e5")
    assert d.pop("files")
    replace_line(ev, "$e5", canonical(d))
    refused(january[0], pkg, f"record {d['seq']} stored attachment")


def test_bagit_txt_deleted_is_tampering_not_usage(january: tuple[LogDir, Path], pkg: Path) -> None:
    """A package whose bagit.txt was deleted but that still has data/ exits 1 (tampered), not 2."""
    (pkg / "bagit.txt").unlink()
    code, out = verify(january[0], pkg)
    assert code == 1, out
    assert "bagit.txt" in out
