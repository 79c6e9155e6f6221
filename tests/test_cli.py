"""The command-line contract: init, import, verify, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.log.checkpoint import parse_vkey

SAMPLE = Path(__file__).resolve().parent.parent / "bridge" / "samples" / "sample-conversation.jsonl"
runner = CliRunner()


def cli(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "secrets"
    keys.mkdir(mode=0o700)
    return tmp_path / "data", keys / "ca.key"


@pytest.fixture
def initialised(paths: tuple[Path, Path]) -> tuple[Path, Path]:
    data, key = paths
    code, _, stderr = cli("init", "--data-dir", data, "--key-file", key)
    assert code == 0, stderr
    return data, key


def test_init_writes_key_0600_and_public_key(paths: tuple[Path, Path]) -> None:
    """init creates the log, a 0600 key file and KEY.pub holding a signed-note verifier key."""
    data, key = paths
    code, stdout, _ = cli("init", "--data-dir", data, "--key-file", key)
    assert code == 0
    assert (data / "log.sqlite3").exists()
    assert key.stat().st_mode & 0o777 == 0o600
    pub = Path(str(key) + ".pub").read_text().strip()
    name, _ = parse_vkey(pub)
    assert name.startswith("chatarchief.invalid/log/")
    assert pub in stdout


def test_init_refuses_to_overwrite(initialised: tuple[Path, Path]) -> None:
    """A second init on the same paths exits 2 and leaves the key file untouched."""
    data, key = initialised
    before = key.read_bytes()
    code, _, stderr = cli("init", "--data-dir", data, "--key-file", key)
    assert code == 2 and "refusing to overwrite" in stderr
    assert key.read_bytes() == before


def test_init_refuses_key_inside_data_dir(tmp_path: Path) -> None:
    """Keys beside the data defeat the point: a key path inside the data dir is refused."""
    code, _, stderr = cli("init", "--data-dir", tmp_path / "d", "--key-file", tmp_path / "d" / "k")
    assert code == 2 and "inside the data dir" in stderr
    assert not (tmp_path / "d" / "k").exists()


def test_import_counts_and_keeps_bad_lines(initialised: tuple[Path, Path]) -> None:
    """Importing the sample prints appended/duplicates/unknown; a cut-off line is kept as unknown."""
    data, key = initialised
    code, stdout, stderr = cli("import", "--data-dir", data, "--key-file", key, "--format", "matrix-jsonl", SAMPLE)
    assert code == 0, stderr
    lines = len([line for line in SAMPLE.read_text().splitlines() if line.strip()])
    assert f"imported {lines} lines: appended {lines}, duplicates 0, unknown 2" in stdout
    code, stdout, _ = cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    assert f"appended 0, duplicates {lines}, unknown 2" in stdout


def test_verify_intact_then_tampered(initialised: tuple[Path, Path]) -> None:
    """verify exits 0 on an intact log and 1 naming the record after one byte changes."""
    data, key = initialised
    cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    code, stdout, _ = cli("verify", "--data-dir", data, "--key-file", key)
    assert code == 0 and "intact" in stdout and "decrypted and checked 18 records" in stdout
    conn = sqlite3.connect(data / "log.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    body = bytes(conn.execute("SELECT body FROM records WHERE seq = 6").fetchone()[0])
    conn.execute("UPDATE records SET body = ? WHERE seq = 6", (body[:-1] + bytes([body[-1] ^ 1]),))
    conn.close()
    code, _, stderr = cli("verify", "--data-dir", data)
    assert code == 1 and "record 6" in stderr


def test_verify_json_reports_the_check_and_its_evidence(initialised: tuple[Path, Path]) -> None:
    """verify --json prints the report on success; on a changed leaf it exits 1 with the failed check, the
    record and both hashes as one JSON object on stdout, and stderr keeps its one line."""
    data, key = initialised
    cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    code, stdout, _ = cli("verify", "--data-dir", data, "--key-file", key, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["intact"] is True and report["records"] == report["sealed_size"] > 0
    assert report["decrypted"] == report["records"] and len(report["root"]) == 64
    conn = sqlite3.connect(data / "log.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    stored = bytes(conn.execute("SELECT leaf FROM records WHERE seq = 4").fetchone()[0])
    conn.execute("UPDATE records SET leaf = ? WHERE seq = 4", (bytes(32),))
    conn.close()
    code, stdout, stderr = cli("verify", "--data-dir", data, "--json")
    failure = json.loads(stdout)
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "record 4" in stderr
    assert failure == {
        "intact": False,
        "check": "leaf",
        "seq": 4,
        "reason": "stored bytes do not match the record's leaf hash",
        "expected": bytes(32).hex(),
        "found": stored.hex(),
    }


def test_verify_with_wrong_key_is_exit_2_without_traceback(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """Another log's key file gives one clear line and exit 2."""
    data, _ = initialised
    other = tmp_path / "other-secrets"
    other.mkdir(mode=0o700)
    cli("init", "--data-dir", tmp_path / "other-data", "--key-file", other / "k")
    code, _, stderr = cli("verify", "--data-dir", data, "--key-file", other / "k")
    assert code == 2 and "belongs to log" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_key_file_0644_is_refused(initialised: tuple[Path, Path]) -> None:
    """A group/world-readable key file is refused by every command with the chmod fix."""
    data, key = initialised
    key.chmod(0o644)
    for command in ("verify", "import"):
        args = [command, "--data-dir", data, "--key-file", key] + ([SAMPLE] if command == "import" else [])
        code, _, stderr = cli(*args)
        assert code == 2 and "chmod 600" in stderr


def test_missing_key_file_is_exit_2(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """A key file path that does not exist is a usage error pointing at init."""
    data, _ = initialised
    code, _, stderr = cli("import", "--data-dir", data, "--key-file", tmp_path / "nope", SAMPLE)
    assert code == 2 and "chatarchief init" in stderr


def test_verify_pinned_checkpoint_and_public_key(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """--public-key pins the signer; --checkpoint pins a checkpoint the log must still extend."""
    data, key = initialised
    cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    note = (
        sqlite3.connect(data / "log.sqlite3")
        .execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
        .fetchone()[0]
    )
    pinned = tmp_path / "pinned.checkpoint"
    pinned.write_text(note)
    code, _, stderr = cli("verify", "--data-dir", data, "--public-key", f"{key}.pub", "--checkpoint", pinned)
    assert code == 0, stderr
    conn = sqlite3.connect(data / "log.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DROP TRIGGER checkpoints_no_delete")
    conn.execute("DELETE FROM records WHERE seq >= 10")
    conn.execute("DELETE FROM checkpoints")
    conn.close()
    code, _, stderr = cli("verify", "--data-dir", data, "--checkpoint", pinned)
    assert code == 1 and "truncated" in stderr


def test_config_file_supplies_paths_and_flags_override(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """storage.data_dir/key_file come from --config; a flag overrides the file."""
    data, key = initialised
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "wrong"}"\nkey_file = "{key}"\n')
    code, _, stderr = cli("verify", "--config", cfg)
    assert code == 2 and "no log" in stderr
    code, stdout, stderr = cli("verify", "--config", cfg, "--data-dir", data)
    assert code == 0, stderr
    assert "decrypted" in stdout


def test_bad_config_is_one_line_per_problem_exit_2(tmp_path: Path) -> None:
    """An unknown key and a wrong type each give one line naming the key; exit 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\ndata_dri = "x"\ncheckpoint_every_records = "many"\n')
    code, _, stderr = cli("verify", "--config", cfg)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("unknown key 'storage.data_dri'" in line for line in lines)
    assert any("storage.checkpoint_every_records" in line for line in lines)


def test_console_script_no_traceback_on_missing_config(tmp_path: Path) -> None:
    """The installed entry point prints one line and exits 2 for a missing config file."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "verify", "--config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_rotate_key_keeps_old_records_readable(initialised: tuple[Path, Path]) -> None:
    """After rotation new records use the new key id and verify still decrypts all records."""
    data, key = initialised
    cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    code, stdout, _ = cli("rotate-key", "--data-dir", data, "--key-file", key)
    assert code == 0 and "new data key 2" in stdout
    extra = SAMPLE.parent / "sample-conversation.jsonl"
    text = extra.read_text().replace("$t1", "$t1-again")
    other = data.parent / "more.jsonl"
    other.write_text(text)
    cli("import", "--data-dir", data, "--key-file", key, other)
    code, stdout, _ = cli("verify", "--data-dir", data, "--key-file", key)
    # 2 key records + 1 rotation key record + 16 events + `$t1-again` + a reply to it: the reply's id is known,
    # its relation changed, so it is kept as a conflicting version
    assert code == 0 and "decrypted and checked 21 records" in stdout
    # key_id sits at bytes 18..21 of the header (after version, type, seq, appended_ms); events only
    sql = "SELECT substr(header, 19, 4) FROM records WHERE substr(header, 2, 1) = x'01'"
    key_ids = {int.from_bytes(row[0], "big") for row in sqlite3.connect(data / "log.sqlite3").execute(sql)}
    assert key_ids == {1, 2}


def test_files_created_by_commands_are_private(tmp_path: Path) -> None:
    """Through the console entry point, the log, its WAL and the key file are not readable by group/others."""
    data, key = tmp_path / "data", tmp_path / "secret" / "k"
    for args in (
        ["init", "--data-dir", data, "--key-file", key],
        ["import", "--data-dir", data, "--key-file", key, SAMPLE],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "bridge.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    created = [p for p in data.rglob("*")] + [key]
    assert created and all(p.stat().st_mode & 0o077 == 0 for p in created), [
        (p.name, oct(p.stat().st_mode)) for p in created
    ]


def test_key_directory_writable_by_others_is_refused(initialised: tuple[Path, Path]) -> None:
    """Whoever can write the key's directory can swap the key file: every command loading it refuses, exit 2."""
    data, key = initialised
    key.parent.chmod(0o777)
    try:
        for args in (("verify", "--key-file", key), ("rotate-key", "--key-file", key)):
            code, _, stderr = cli(*args, "--data-dir", data)
            assert code == 2 and "key directory" in stderr and "chmod go-w" in stderr, stderr
    finally:
        key.parent.chmod(0o700)


def test_data_dir_writable_by_others_is_refused_for_writes(initialised: tuple[Path, Path]) -> None:
    """A data dir group or others may write is refused (exit 2, one line) by every command that writes it."""
    data, key = initialised
    data.chmod(0o775)
    code, _, stderr = cli("import", "--data-dir", data, "--key-file", key, SAMPLE)
    assert code == 2 and "group or others may write" in stderr, stderr
    code, _, stderr = cli("withhold", "$t1", "--reason", "r", "--by", "b", "--data-dir", data, "--key-file", key)
    assert code == 2 and "group or others may write" in stderr, stderr
