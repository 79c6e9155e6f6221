"""verify-package: a package checked with only its public key (bridge.archive.verify_package, CLI).

Tampering is done twice where it matters: naively (the bag's manifests then
catch it) and by an attacker who also rewrites the BagIt manifests, so the
log-level checks (leaves, checkpoints, chain) must catch it on their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.cli import app
from bridge.log import checkpoint
from bridge.log import keys as keyfile
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, create_archive_log, dossier_dir, january_february, seal_for

runner = CliRunner()


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LogDir, Path, Path]:
    log = create_archive_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    jan = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "pkg" / "jan", OPTIONS, seal=seal_for(log)).path
    feb = snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "pkg" / "feb", OPTIONS, seal=seal_for(log)).path
    return log, jan, feb


def verify(log: LogDir, path: Path, *extra: str) -> tuple[int, str]:
    pub = keyfile.public_path(log.key_file)
    result = runner.invoke(app, ["verify-package", str(path), "--public-key", str(pub), *extra])
    return result.exit_code, result.output


def rebag(root: Path) -> None:
    """What a careful attacker does after editing: recompute the manifests and Payload-Oxum."""
    files = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in files]
    (root / "manifest-sha256.txt").write_text("".join(lines))
    info = [ln for ln in (root / "bag-info.txt").read_text().splitlines() if not ln.startswith("Payload-Oxum")]
    info.append(f"Payload-Oxum: {sum(p.stat().st_size for p in files)}.{len(files)}")
    (root / "bag-info.txt").write_text("\n".join(info) + "\n")
    tags = ["bag-info.txt", "bagit.txt", "manifest-sha256.txt"]
    (root / "tagmanifest-sha256.txt").write_text(
        "".join(f"{hashlib.sha256((root / t).read_bytes()).hexdigest()}  {t}\n" for t in tags)
    )


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / f"copy-{os.urandom(3).hex()}"
    shutil.copytree(src, dst)
    return dst


def alpha_events(pkg: Path) -> Path:
    return dossier_dir(pkg, "alpha") / "events.jsonl"


def test_fresh_packages_verify_and_chain(packages: tuple[LogDir, Path, Path]) -> None:
    """A fresh package verifies with the .pub only (exit 0); February extends January (--previous)."""
    log, jan, feb = packages
    code, out = verify(log, jan)
    assert code == 0, out
    assert "intact" in out and "records 0..12" in out
    code, out = verify(log, feb, "--previous", str(jan))
    assert code == 0, out


def _remove_line(p: Path) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2] + lines[3:]))


def _edit_line(p: Path) -> None:
    p.write_bytes(p.read_bytes().replace(b"concept kamerbrief v2", b"concept kamerbrief v3"))


def _swap_lines(p: Path) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    p.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_remove_line, "is missing from the package"),
        (_edit_line, "line 4: event altered"),
        (_swap_lines, "line 3: record 3 is out of log order"),
    ],
)
def test_event_lines_removed_edited_or_reordered_are_caught(
    packages: tuple[LogDir, Path, Path], tmp_path: Path, tamper: Callable[[Path], None], message: str
) -> None:
    """Exit 1 naming the dossier line, both with the bag left stale and with the bag rewritten to match."""
    log, jan, _ = packages
    naive = copy(jan, tmp_path)
    tamper(alpha_events(naive))
    code, out = verify(log, naive)
    assert code == 1 and "bag fixity" in out
    careful = copy(jan, tmp_path)
    tamper(alpha_events(careful))
    rebag(careful)
    code, out = verify(log, careful)
    assert code == 1, out
    assert message in out.replace("\n", " ")
    assert dossier_dir(jan, "alpha").name in out or "missing" in out  # a removed line is missed by position


def test_changed_media_file_is_caught(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """A replaced image fails fixity, and with rewritten manifests its signed SHA-256 still does not match."""
    log, jan, _ = packages
    pkg = copy(jan, tmp_path)
    media = next((pkg / "data").rglob("media/8-*.png"))
    media.write_bytes(b"\x89PNG other picture")
    rebag(pkg)
    code, out = verify(log, pkg)
    assert code == 1 and "media file" in out and "altered" in out


def test_verify_package_json_names_the_check(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """verify-package --json prints the report when intact; a replaced image (manifests rewritten) exits 1 with
    check package_media, the record and both SHA-256 digests as a JSON object on stdout."""
    log, jan, _ = packages
    pub = keyfile.public_path(log.key_file)
    ok = runner.invoke(app, ["verify-package", str(jan), "--public-key", str(pub), "--json"])
    report = json.loads(ok.stdout)
    assert ok.exit_code == 0 and report["intact"] is True and report["month"] == "2024-01"
    pkg = copy(jan, tmp_path)
    media = next((pkg / "data").rglob("media/8-*.png"))
    media.write_bytes(b"\x89PNG other picture")
    rebag(pkg)
    bad = runner.invoke(app, ["verify-package", str(pkg), "--public-key", str(pub), "--json"])
    failure = json.loads(bad.stdout)
    assert bad.exit_code == 1 and "altered" in bad.stderr
    assert failure["intact"] is False and failure["check"] == "package_media" and failure["seq"] == 8
    assert failure["found"] == hashlib.sha256(b"\x89PNG other picture").hexdigest()
    assert failure["expected"] != failure["found"] and len(failure["expected"]) == 64


def test_edited_leaves_are_caught(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """leaves.txt edited (with the manifests rewritten): the signed end root no longer matches."""
    log, jan, _ = packages
    pkg = copy(jan, tmp_path)
    leaves = pkg / "data" / "proof" / "leaves.txt"
    lines = leaves.read_text().splitlines()
    lines[4] = hashlib.sha256(b"forged").hexdigest()
    leaves.write_text("\n".join(lines) + "\n")
    rebag(pkg)
    code, out = verify(log, pkg)
    assert code == 1 and "end checkpoint's root" in out


def test_forged_checkpoint_is_caught(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """A package re-signed with another key (same name) fails against the real public key."""
    log, jan, _ = packages
    pkg = copy(jan, tmp_path)
    end = pkg / "data" / "proof" / "checkpoint-end.txt"
    cp, _ = checkpoint.parse_checkpoint_note(end.read_text())
    other = keyfile.generate(log.keys.log_id)
    end.write_text(checkpoint.sign_checkpoint(cp, log.keys.key_name, other.signing_key))
    rebag(pkg)
    code, out = verify(log, pkg)
    assert code == 1 and "end checkpoint" in out and "does not verify" in out


def test_previous_package_mismatch_is_caught(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """February checked against itself (or a package that does not end where it starts) as --previous: exit 1."""
    log, jan, feb = packages
    code, out = verify(log, feb, "--previous", str(feb))
    assert code == 1 and "previous package ends at record 23" in out
    code, out = verify(log, jan, "--previous", str(feb))
    assert code == 1


def test_usage_errors_exit_2(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """Not a package, or an unreadable public key: exit 2."""
    log, jan, _ = packages
    assert verify(log, tmp_path)[0] == 2
    bad = tmp_path / "bad.pub"
    bad.write_text("nonsense\n")
    result = runner.invoke(app, ["verify-package", str(jan), "--public-key", str(bad)])
    assert result.exit_code == 2


def test_snapshot_command_writes_a_package(packages: tuple[LogDir, Path, Path], tmp_path: Path) -> None:
    """`chatarchief snapshot` writes the month; an identical rerun succeeds; other config over it is refused."""
    log, jan, _ = packages
    org = tmp_path / "org.toml"
    org.write_text('[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n')
    args = ["snapshot", "--config", str(org), "--data-dir", str(log.data_dir), "--key-file", str(log.key_file)]
    args += ["--month", "2024-01"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cli-jan")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cli-jan")])
    assert result.exit_code == 0 and "identical" in result.output
    result = runner.invoke(app, [*args, "--out", str(jan)])  # written with another organisation name
    assert result.exit_code == 2 and "different package" in result.output
    result = runner.invoke(app, [*args[:-1], "2099-01", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "has not ended" in result.output
