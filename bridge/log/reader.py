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

from bridge.errors import LogIntegrityError
from bridge.events import Event, event_from_bytes
from bridge.log import crypto, format
from bridge.log.decision import Decision, DecisionError, parse_decision
from bridge.log.keys import KeyMaterial
from bridge.log.schema import check_key_matches, unwrap_keys
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
            raise LogIntegrityError(seq, f"decision record does not parse: {exc}") from None


def _iter_payloads(
    data_dir: Path, keys: KeyMaterial, rtype: format.RecordType, start: int
) -> Iterator[tuple[int, bytes]]:
    conn = open_readonly(data_dir)
    try:
        meta = {str(k): bytes(v) for k, v in conn.execute("SELECT k, v FROM meta")}
        check_key_matches(meta, keys)
        rows = [(int(k), str(p), bytes(w)) for k, p, w in conn.execute("SELECT key_id, purpose, wrapped FROM keys")]
        try:
            _, data_keys = unwrap_keys(rows, keys)
        except crypto.AuthError as exc:
            raise LogIntegrityError(None, f"key table altered: {exc}") from None
        cursor = conn.execute("SELECT seq, header, commitment, body FROM records WHERE seq >= ? ORDER BY seq", (start,))
        for seq, header_b, commit, body in cursor:
            header = format.unpack_header(bytes(header_b))
            if header.type != rtype:
                continue
            try:
                payload = format.open_record(
                    keys.log_id, data_keys, header, bytes(header_b), bytes(commit), bytes(body)
                )
            except format.RecordAuthError as exc:
                raise LogIntegrityError(int(seq), str(exc)) from None
            yield int(seq), payload
    finally:
        conn.close()
