"""Read-only access to a log's events and decisions (for the demo, search and export tools).

Opens the database read-only (WAL lets it run beside a live writer), unwraps
the keys with the key file and yields decrypted events (or decision records)
in log order. It authenticates every record it returns (AEAD + commitment) but
is not the verifier: run `verify_log` for the full chain, tree and checkpoint
checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bridge.errors import Check, LogIntegrityError
from bridge.events import Event, event_from_bytes
from bridge.log import audit, crypto, db, format
from bridge.log.clear import ClearRecordError, parse_key
from bridge.log.decision import Decision, DecisionError, parse_decision
from bridge.log.keys import KeyMaterial
from bridge.log.schema import check_key_matches, meta_dict, unwrap_keys
from bridge.log.verify import open_readonly


def iter_events(data_dir: Path, keys: KeyMaterial, start: int = 0) -> Iterator[tuple[int, Event]]:
    """Yield (seq, event) for every event record from `start`, decrypted and authenticated."""
    for seq, payload in _iter_payloads(data_dir, keys, format.RecordType.EVENT, start):
        yield seq, event_from_bytes(payload)


def iter_decisions(data_dir: Path, keys: KeyMaterial, start: int = 0) -> Iterator[tuple[int, Decision]]:
    """Yield (seq, decision) for every DECISION record from `start`; a payload that does not parse is tampering."""
    for seq, payload in _iter_payloads(data_dir, keys, format.RecordType.DECISION, start):
        try:
            yield seq, parse_decision(payload)
        except DecisionError as exc:
            raise LogIntegrityError(seq, f"decision record does not parse: {exc}", check=Check.PAYLOAD) from None


def load_keys(conn: db.ReadConnection, keys: KeyMaterial) -> tuple[bytes, dict[int, bytes]]:
    """(index key, data keys) from the key table, or, when that was emptied or altered, from the log's KEY
    records: the key file and the log alone recover every key (`verify` still reports the altered table)."""
    rows = [(int(k), str(p), bytes(w)) for k, p, w in conn.execute("SELECT key_id, purpose, wrapped FROM keys")]
    try:
        index_key, data_keys = unwrap_keys(rows, keys)
        if data_keys:
            return index_key, data_keys
    except crypto.AuthError:
        pass
    return recover_keys(conn, keys)


def recover_keys(conn: db.ReadConnection, keys: KeyMaterial) -> tuple[bytes, dict[int, bytes]]:
    """Every key unwrapped from the KEY records themselves (a full scan of the headers)."""
    found: list[tuple[int, str, bytes]] = []
    sql = "SELECT seq, header, commitment, body FROM records WHERE substr(header, 2, 1) = x'03' ORDER BY seq"
    for seq, header_b, commit, body in conn.execute(sql):
        try:
            header = format.unpack_header(bytes(header_b))
            _, payload = format.open_clear(header, bytes(commit), bytes(body))
            rec = parse_key(payload)
        except (format.FormatError, format.RecordAuthError, ClearRecordError) as exc:
            raise LogIntegrityError(int(seq), f"key record does not parse: {exc}", check=Check.CLEAR_RECORD) from None
        found.append((rec.key_id, rec.purpose, rec.wrapped))
    try:
        return unwrap_keys(found, keys)
    except crypto.AuthError as exc:
        raise LogIntegrityError(
            None, f"the key records do not unwrap with this key file: {exc}", check=Check.KEY_TABLE
        ) from None


def _iter_payloads(
    data_dir: Path, keys: KeyMaterial, rtype: format.RecordType, start: int
) -> Iterator[tuple[int, bytes]]:
    conn = open_readonly(data_dir)
    try:
        meta = meta_dict(conn.execute("SELECT k, v FROM meta"))
        check_key_matches(meta, keys, [(int(k), str(p), bytes(w)) for k, p, w in conn.execute(
            "SELECT key_id, purpose, wrapped FROM keys")])  # fmt: skip
        _, data_keys = load_keys(conn, keys)
        sealers = crypto.sealers(data_keys)
        cursor = conn.execute("SELECT seq, header, commitment, body FROM records WHERE seq >= ? ORDER BY seq", (start,))
        for seq, header_b, commit, body in cursor:
            header = format.unpack_header(bytes(header_b))
            if header.type != rtype:
                continue
            try:
                payload = format.open_record(keys.log_id, sealers, header, bytes(header_b), bytes(commit), bytes(body))
            except format.RecordAuthError as exc:
                raise LogIntegrityError(int(seq), str(exc), check=audit.auth_check(exc)) from None
            yield int(seq), payload
    finally:
        conn.close()
