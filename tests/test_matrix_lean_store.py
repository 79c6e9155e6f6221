"""`LeanStore`: nio's crypto store without the write-per-sync of rooms it already holds (bench/capture.py).

What must not change: a room that becomes encrypted is on disk after the sync's transaction (a restarted device
knows it, so a server that later drops `m.room.encryption` cannot downgrade it), and a rolled-back sync leaves
nothing a fresh store would believe. What changes: saving rooms the store already holds runs no SQL write.
Real nio store on disk, real SQLite; the statements are read from SQLite's trace callback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nio.crypto import Olm

from bridge.sources.matrix.client import LeanStore

USER, DEVICE = "@archiver:example.org", "LEANTEST"


def _open(path: Path) -> tuple[LeanStore, list[str]]:
    store = LeanStore(USER, DEVICE, str(path), "pickle-key")
    Olm(USER, DEVICE, store)  # creates and saves the account the rooms hang off (as the client does)
    statements: list[str] = []
    store.database.connection().set_trace_callback(statements.append)
    return store, statements


def _writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "REPLACE"))]


def test_new_rooms_are_saved_and_held_ones_write_nothing(tmp_path: Path) -> None:
    store, statements = _open(tmp_path)
    assert store.load_encrypted_rooms() == set()
    with store.database.atomic():
        store.save_encrypted_rooms({"!a:example.org"})
    assert _writes(statements), "a room that became encrypted must be written"
    statements.clear()
    for _ in range(3):  # every later sync of that room
        with store.database.atomic():
            store.save_encrypted_rooms({"!a:example.org"})
    assert _writes(statements) == []
    with store.database.atomic():
        store.save_encrypted_rooms({"!a:example.org", "!b:example.org"})
    assert len(_writes(statements)) == 1
    reopened, _ = _open(tmp_path)
    assert reopened.load_encrypted_rooms() == {"!a:example.org", "!b:example.org"}


def test_a_rolled_back_sync_leaves_no_room_behind_for_a_fresh_store(tmp_path: Path) -> None:
    store, _ = _open(tmp_path)
    store.load_encrypted_rooms()

    class SyncFailed(Exception):
        pass

    with pytest.raises(SyncFailed), store.database.atomic():
        store.save_encrypted_rooms({"!gone:example.org"})
        raise SyncFailed
    fresh, statements = _open(tmp_path)  # what the source uses after a failed sync: a new client and store
    assert fresh.load_encrypted_rooms() == set()
    with fresh.database.atomic():
        fresh.save_encrypted_rooms({"!gone:example.org"})
    assert _writes(statements), "the room is written again by the replayed sync"


def test_forgotten_room_is_written_again_when_seen_again(tmp_path: Path) -> None:
    store, statements = _open(tmp_path)
    store.load_encrypted_rooms()
    store.save_encrypted_rooms({"!a:example.org"})
    store.delete_encrypted_room("!a:example.org")
    statements.clear()
    store.save_encrypted_rooms({"!a:example.org"})
    assert _writes(statements)
    assert _open(tmp_path)[0].load_encrypted_rooms() == {"!a:example.org"}


def test_unloaded_store_saves_everything(tmp_path: Path) -> None:
    """Without `load_encrypted_rooms` first (nio always calls it) the store knows nothing and skips nothing."""
    store, statements = _open(tmp_path)
    store.save_encrypted_rooms({"!a:example.org"})
    store.save_encrypted_rooms({"!a:example.org"})
    assert len(_writes(statements)) == 2
