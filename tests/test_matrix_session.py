"""The saved Matrix session (bridge/sources/matrix/session.py): the access token is sealed at rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.sources.matrix.session import (
    SESSION_FILE,
    SavedSession,
    SessionFileError,
    load_identity,
    load_session,
    save_session,
)

KEY = b"pickle-key-derived-from-the-key-file"
TOKEN = "syt_YXJjaGl2ZWJvdA_secretsecretsecret_0abcde"
SESSION = SavedSession("http://127.0.0.1:8008", "@archief:localhost", "DEVICEID", TOKEN)


def files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_round_trip_without_token_in_clear(tmp_path: Path) -> None:
    """A saved session loads back whole with the same key; no file holds the token in clear, the
    file is 0600, and identity (user, device) is readable without the key."""
    save_session(tmp_path, SESSION, KEY)
    assert load_session(tmp_path, KEY) == SESSION
    assert files_with(tmp_path, TOKEN) == []
    assert (tmp_path / SESSION_FILE).stat().st_mode & 0o777 == 0o600
    identity = load_identity(tmp_path)
    assert identity is not None and identity.device_id == "DEVICEID"
    assert TOKEN not in repr(SESSION)


def test_no_session_is_none(tmp_path: Path) -> None:
    """Before the first login there is no session (and no error)."""
    assert load_session(tmp_path, KEY) is None and load_identity(tmp_path) is None


def test_wrong_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Another key file cannot open the token: a clear error naming the file, not a crash."""
    save_session(tmp_path, SESSION, KEY)
    with pytest.raises(SessionFileError, match="does not open with this key file"):
        load_session(tmp_path, b"another-key")


def test_token_is_bound_to_user_and_device(tmp_path: Path) -> None:
    """Editing the clear device id (or user) makes the token fail to open (associated data)."""
    save_session(tmp_path, SESSION, KEY)
    path = tmp_path / SESSION_FILE
    doc = json.loads(path.read_text())
    doc["device_id"] = "OTHERDEVICE"
    path.write_text(json.dumps(doc))
    with pytest.raises(SessionFileError):
        load_session(tmp_path, KEY)


def test_clear_token_from_an_older_version_is_sealed_on_first_read(tmp_path: Path) -> None:
    """A session.json with the token in clear (older versions) is read once and rewritten sealed."""
    legacy = {"homeserver": SESSION.homeserver, "user_id": SESSION.user_id, "device_id": "DEVICEID"}
    (tmp_path / SESSION_FILE).write_text(json.dumps({**legacy, "access_token": TOKEN}))
    assert load_session(tmp_path, KEY) == SESSION
    assert files_with(tmp_path, TOKEN) == []
    assert load_session(tmp_path, KEY) == SESSION
