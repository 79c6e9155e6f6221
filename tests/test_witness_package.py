"""Packages carry witnessed checkpoints (proof/witnessed.json); `verify-package --witness-key --quorum` demands them."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.log import schema as schema_module
from bridge.log.schema import initialise
from bridge.witness.note import Verifier
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, create_archive_log, january_february, ms, seal_for
from tests.test_archive_verify import copy, rebag, verify
from tests.test_witness_server import make_witness, running, sync, witnessing


async def cosign_newest(log: LogDir, config_tmp: Path) -> Verifier:
    config, key = make_witness(config_tmp, [log])
    async with running(config) as url:
        w = witnessing(log, url, key.verifier)
        assert (await sync(w)).startswith("cosigned")
        w.store.close()
    return key.verifier


def jan(log: LogDir, out: Path) -> Path:
    return snapshot(log.data_dir, log.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(log)).path


@pytest.fixture
def witnessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LogDir, Verifier, Path]:
    log = create_archive_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    key = asyncio.run(cosign_newest(log, tmp_path / "w"))
    return log, key, jan(log, tmp_path / "pkg" / "jan")


def test_package_carries_a_witnessed_checkpoint(witnessed: tuple[LogDir, Verifier, Path]) -> None:
    """The January package holds the newest cosigned checkpoint with a consistency proof from its end;
    `verify-package --witness-key K --quorum 1` passes and names the witness; LEESMIJ says how to pin keys."""
    log, key, pkg = witnessed
    doc = json.loads((pkg / "data" / "proof" / "witnessed.json").read_text())
    assert len(doc["witnessed"]) == 1 and key.name in doc["witnessed"][0]["checkpoint"]
    code, out = verify(log, pkg, "--witness-key", key.vkey, "--quorum", "1")
    assert code == 0, out
    assert f"cosigned by {key.name}" in out
    assert "--witness-key" in (pkg / "LEESMIJ.txt").read_text()
    assert verify(log, pkg)[0] == 0  # without pinned witnesses the file is still checked, and passes


def test_package_without_cosignatures_fails_the_quorum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package of a log no witness cosigned has no witnessed.json: plain verify passes, --quorum 1 exits 1
    naming the end checkpoint; its LEESMIJ is today's (older packages keep verifying)."""
    log = create_archive_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    pkg = jan(log, tmp_path / "pkg" / "jan")
    assert not (pkg / "data" / "proof" / "witnessed.json").exists()
    assert "witness" not in (pkg / "LEESMIJ.txt").read_text()
    assert verify(log, pkg)[0] == 0
    from bridge.witness.note import CosignerKey

    code, out = verify(log, pkg, "--witness-key", CosignerKey.generate("w.example/x").verifier.vkey)
    assert code == 1 and "end checkpoint (tree size" in out and "no witnessed checkpoint" in out


def test_rewritten_month_cannot_borrow_the_witnessed_proof(
    witnessed: tuple[LogDir, Verifier, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key holder rebuilds the log (same keys, same chats, other bytes: every checkpoint re-signed) and
    snapshots January. The honest cosignatures do not fit its checkpoints, so none is carried; copying the
    honest proof/witnessed.json into the forged package (re-bagged) fails: it does not extend the forged end."""
    log, key, honest = witnessed
    forged_dir = tmp_path / "forged"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema_module, "now_ms", lambda: ms(2024, 1, 1, 1))
        initialise(forged_dir, log.keys)
    forged = LogDir(forged_dir, log.key_file, log.keys)
    january_february(forged, monkeypatch)
    monkeypatch.undo()
    shutil.copy(log.data_dir / "cosignatures.sqlite3", forged_dir / "cosignatures.sqlite3")
    pkg = jan(forged, tmp_path / "pkg" / "forged-jan")
    assert not (pkg / "data" / "proof" / "witnessed.json").exists()
    assert verify(log, pkg, "--witness-key", key.vkey)[0] == 1
    shutil.copy(honest / "data" / "proof" / "witnessed.json", pkg / "data" / "proof" / "witnessed.json")
    (pkg / "LEESMIJ.txt").write_bytes((honest / "LEESMIJ.txt").read_bytes())
    rebag(pkg)
    code, out = verify(log, pkg, "--witness-key", key.vkey)
    assert code == 1 and "does not extend the package's end" in out


def test_forged_cosignature_in_package_is_caught(witnessed: tuple[LogDir, Verifier, Path], tmp_path: Path) -> None:
    """A cosignature line altered in proof/witnessed.json (re-bagged) is a forgery by a pinned key: exit 1."""
    log, key, honest = witnessed
    pkg = copy(honest, tmp_path)
    path = pkg / "data" / "proof" / "witnessed.json"
    doc = json.loads(path.read_text())
    note = doc["witnessed"][0]["checkpoint"]
    line = next(ln for ln in note.splitlines() if ln.startswith(f"— {key.name} "))
    raw = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
    raw[-1] ^= 1
    doc["witnessed"][0]["checkpoint"] = note.replace(
        line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(raw).decode()
    )
    path.write_text(json.dumps(doc, indent=2) + "\n")
    rebag(pkg)
    code, out = verify(log, pkg, "--witness-key", key.vkey)
    assert code == 1 and "does not verify" in out
