"""Logs of schema 1 (an earlier development version, before issue 9) are refused by every reader with
"re-create and re-import" (exit 2), not reported as damage; a version entry that lies is tampering (exit 1)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bridge.log import keys as keyfile
from bridge.log.schema import SCHEMA_VERSION
from tests.conftest import LogDir
from tests.test_cli import cli

#: Every check here holds for the serial walk and for helper processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("verify_workers")

#: The layout schema 1 wrote (git show 5b1de90^:bridge/log/schema.py): no tree edges, no key record seqs.
V1 = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE keys (
    key_id INTEGER PRIMARY KEY, purpose TEXT NOT NULL, created_ms INTEGER NOT NULL, wrapped BLOB NOT NULL);
CREATE TABLE records (
    seq INTEGER PRIMARY KEY, dedup BLOB NOT NULL UNIQUE, header BLOB NOT NULL,
    commitment BLOB NOT NULL, body BLOB NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, note TEXT NOT NULL);
CREATE TABLE cursors (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL, mac BLOB NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def v1_log(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = keys / "ca.key"
    material = keyfile.generate(os.urandom(16))
    keyfile.write_new(key, material)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    conn = sqlite3.connect(data / "log.sqlite3")
    conn.executescript(V1)
    meta = {"schema_version": b"1", "log_id": material.log_id, "vkey": material.vkey().encode(),
            "current_data_key": b"1"}  # fmt: skip
    conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
    conn.commit()
    conn.close()
    return data, key


def test_a_schema_1_log_is_refused_with_re_create_and_re_import(tmp_path: Path) -> None:
    data, key = v1_log(tmp_path)
    for args in (("verify", "--data-dir", data), ("verify", "--data-dir", data, "--key-file", key)):
        code, out, err = cli(*args)
        assert code == 2 and "re-create" in err and "re-import" in err, (out, err)
    code, _, err = cli("rotate-key", "--data-dir", data, "--key-file", key)
    assert code != 0 and "re-created and re-imported" in err


def test_a_lying_schema_version_is_tampering(filled_log: LogDir) -> None:
    """The current layout with its version entry set to 1: exit 1 naming the meta table, not 're-create'."""
    conn = sqlite3.connect(filled_log.db)
    conn.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (b"1",))
    conn.commit()
    conn.close()
    code, out, err = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "meta table" in out + err and "re-create" not in out + err
    assert SCHEMA_VERSION == 3
