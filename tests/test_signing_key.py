"""The signing key apart from the key-encryption key (issue 13, item 1): init, refusal to sign without it,
and the migration of older combined key files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bridge.errors import KeyFileError
from bridge.log import keys as keyfile
from tests.conftest import LogDir
from tests.test_cli import SAMPLE, cli


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "secrets"
    keys.mkdir(mode=0o700)
    return tmp_path / "data", keys / "ca.key"


def size(data: Path) -> int:
    conn = sqlite3.connect(data / "log.sqlite3")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        conn.close()


def test_init_splits_the_keys(paths: tuple[Path, Path]) -> None:
    """init writes the KEK (key file, version 2, no signing key inside), the signing key in its own 0600 file
    and KEY.pub; the log works as before (import signs, verify passes)."""
    data, key = paths
    code, out, err = cli("init", "--data-dir", data, "--key-file", key)
    assert code == 0, err
    signing = keyfile.signing_path(key)
    doc = json.loads(key.read_text())
    assert doc["chatarchief_key_file"] == 2 and "signing_key" not in doc
    assert signing.stat().st_mode & 0o777 == 0o600 and str(signing) in out
    assert signing.read_text().startswith("PRIVATE+KEY+chatarchief.invalid/log/")
    assert cli("import", "--data-dir", data, "--key-file", key, SAMPLE)[0] == 0
    assert cli("verify", "--data-dir", data, "--key-file", key)[0] == 0


def test_without_the_signing_key_reads_but_never_signs(paths: tuple[Path, Path], tmp_path: Path) -> None:
    """Holding only the key file (the reader's power): verify with decryption works; import is refused with
    exit 2 naming the signing key, and appends nothing."""
    data, key = paths
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o700)
    assert cli("init", "--data-dir", data, "--key-file", key, "--signing-key", other / "sign.key")[0] == 0
    before = size(data)
    code, out, _ = cli("verify", "--data-dir", data, "--key-file", key)
    assert code == 0 and "decrypted and checked" in out
    code, _, err = cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    assert code == 2 and "signing key" in err
    assert size(data) == before
    assert cli("verify", "--data-dir", data)[0] == 0


def test_signing_key_of_another_log_is_refused(paths: tuple[Path, Path], tmp_path: Path) -> None:
    """A signing key file that belongs to another log: exit 2, nothing signed."""
    data, key = paths
    assert cli("init", "--data-dir", data, "--key-file", key)[0] == 0
    (tmp_path / "b").mkdir(mode=0o700)
    assert cli("init", "--data-dir", tmp_path / "dataB", "--key-file", tmp_path / "b" / "b.key")[0] == 0
    keyfile.signing_path(key).unlink()
    keyfile.signing_path(key).write_bytes(keyfile.signing_path(tmp_path / "b" / "b.key").read_bytes())
    keyfile.signing_path(key).chmod(0o600)
    code, _, err = cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    assert code == 2 and "another log" in err


def test_readable_signing_key_is_refused(paths: tuple[Path, Path]) -> None:
    """A signing key file group or others may read is refused like the key file (exit 2)."""
    data, key = paths
    assert cli("init", "--data-dir", data, "--key-file", key)[0] == 0
    keyfile.signing_path(key).chmod(0o640)
    code, _, err = cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    assert code == 2 and "chmod 600" in err


def test_migrate_a_combined_key_file(filled_log: LogDir) -> None:
    """An older key file (KEK and signing key in one) is split by `migrate-signing-key`: afterwards the key
    file holds no signing key, the signing file does, the log still signs and verifies; a rerun is a no-op."""
    key = filled_log.key_file
    assert "signing_key" in json.loads(key.read_text())
    code, out, err = cli("migrate-signing-key", "--key-file", key)
    assert code == 0, err
    assert "moved" in out
    assert "signing_key" not in json.loads(key.read_text())
    assert key.stat().st_mode & 0o777 == 0o600
    assert keyfile.load(key).signer is not None
    assert keyfile.load(key).verifier == filled_log.keys.public_key
    assert cli("import", "--data-dir", filled_log.data_dir, "--key-file", key, SAMPLE)[0] == 0
    assert cli("verify", "--data-dir", filled_log.data_dir, "--key-file", key)[0] == 0
    code, out, _ = cli("migrate-signing-key", "--key-file", key)
    assert code == 0 and "nothing to do" in out


def test_interrupted_migration_finishes_on_rerun(filled_log: LogDir) -> None:
    """A crash after the signing file was written but before the key file was replaced: the key file still
    holds the key, the rerun checks the leftover file is the same key and finishes."""
    key = filled_log.key_file
    keyfile.write_exclusive(keyfile.signing_path(key), keyfile._signing_text(filled_log.keys), 0o600)
    _, moved = keyfile.migrate_signing_key(key)
    assert moved and "signing_key" not in json.loads(key.read_text())
    assert keyfile.load(key).signer is not None


def test_leftover_of_another_key_stops_the_migration(filled_log: LogDir, tmp_path: Path) -> None:
    """A file at the signing path holding another log's key: refused, the key file left as it was."""
    key = filled_log.key_file
    other = keyfile.generate(b"\x01" * 16)
    keyfile.write_exclusive(keyfile.signing_path(key), keyfile._signing_text(other), 0o600)
    before = key.read_bytes()
    with pytest.raises(KeyFileError, match="another log"):
        keyfile.migrate_signing_key(key)
    assert key.read_bytes() == before
