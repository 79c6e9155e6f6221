"""The bot's spool key: derived from the key file, printed for the module's config, and the one that opens it."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import orjson
from typer.testing import CliRunner

from bridge import config
from bridge.app import matrix_source_config, spool_private_key
from bridge.cli import app
from bridge.dev.synapse import SYNAPSE_MODULE_DIR
from bridge.log import keys as keyfile
from bridge.sources.matrix.spool import Position, read
from tests.conftest import LogDir, create_log

sys.path.insert(0, str(SYNAPSE_MODULE_DIR))
from chatarchief_synapse.rules import parse
from chatarchief_synapse.spool import SpoolWriter

runner = CliRunner()


def printed_key(log: LogDir) -> str:
    result = runner.invoke(app, ["spool-key", "--data-dir", str(log.data_dir), "--key-file", str(log.key_file)])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_spool_key_prints_the_public_key_that_the_bot_opens_frames_with(empty_log: LogDir, tmp_path: Path) -> None:
    """`spool-key` prints a stable public key (not the KEK) that the module accepts and whose frames the bot
    opens with the key it derives."""
    printed = printed_key(empty_log)
    assert printed == printed_key(empty_log)  # stable: derived, not generated per call
    public = base64.b64decode(printed, validate=True)
    assert len(public) == 32
    assert empty_log.keys.kek.hex() not in printed and base64.b64encode(empty_log.keys.kek).decode() not in printed

    policy = parse({"archiver": "@a:x", "officials": ["@o:x"], "spool": {"path": "/s", "public_key": printed}})
    assert policy.spool is not None and policy.spool.public_key == public
    writer = SpoolWriter(tmp_path / "spool", public)
    writer.append(orjson.dumps({"event_id": "$1", "room_id": "!r:x", "type": "m.room.message", "content": {}}))
    writer.close()
    (frame,), _ = read(tmp_path / "spool", Position(), spool_private_key(empty_log.keys))
    assert frame.problem is None and frame.event is not None and frame.event["event_id"] == "$1"


def test_another_key_file_gives_another_spool_key(empty_log: LogDir, tmp_path: Path) -> None:
    """Two logs, two spool keys."""
    other = create_log(tmp_path / "other")
    assert printed_key(other) != printed_key(empty_log)


def test_matrix_spool_dir_is_an_optional_key_and_wires_the_derived_key(tmp_path: Path) -> None:
    """`matrix.spool_dir` is optional; set, the source config carries it and the derived key."""
    base = (
        '[storage]\nkey_file = "/k/key"\n[matrix]\nhomeserver = "https://m.example"\nuser_id = "@a:m.example"\n'
        'password_file = "/p"\n'
    )
    (tmp_path / "a.toml").write_text(base)
    (tmp_path / "b.toml").write_text(base + 'spool_dir = "/var/spool/ca"\n')
    plain, spooled = config.load(tmp_path / "a.toml"), config.load(tmp_path / "b.toml")
    keys = keyfile.generate(os.urandom(16))
    assert plain.matrix is not None and plain.matrix.spool_dir is None
    assert matrix_source_config(plain, tmp_path, keys).spool_key is None
    cfg = matrix_source_config(spooled, tmp_path, keys)
    assert cfg.spool_dir == Path("/var/spool/ca") and cfg.spool_key is not None
    assert cfg.spool_key.public_key().public_bytes_raw() == spool_private_key(keys).public_key().public_bytes_raw()
