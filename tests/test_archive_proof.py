"""Record lines and proofs of a package (bridge.archive.proof), pure."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.archive import proof
from bridge.events import canonical_bytes, canonical_json
from bridge.log import format, merkle
from tests.support.archive_log import event


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=300), st.data())
def test_streamed_consistency_proof_equals_rfc_9162(n: int, data: st.DataObject) -> None:
    """ConsistencyBuilder (start frontier + streamed range leaves) gives exactly merkle.consistency_proof."""
    m = data.draw(st.integers(min_value=0, max_value=n))
    leaves = _leaves(n)
    builder = proof.ConsistencyBuilder(merkle.extend(merkle.Frontier(), leaves[:m]), n)
    for leaf in leaves[m:]:
        builder.add(leaf)
    got = builder.proof()
    assert got == merkle.consistency_proof(leaves, m)
    if m:
        assert merkle.verify_consistency(m, n, merkle.root(leaves[:m]), merkle.root(leaves), got)


def _header(seq: int, rtype: format.RecordType = format.RecordType.EVENT) -> bytes:
    return format.RecordHeader(1, rtype, seq, 1, 1, bytes(16), bytes(12), bytes(32)).pack()


def test_content_line_is_canonical_json_and_recomputes_the_leaf() -> None:
    """The fast line encoder writes canonical JSON; parse_line recomputes the record's leaf from it."""
    ev = event(1, body="Hallo \u202e <b>")
    payload, salt, header, ct = canonical_bytes(ev), os.urandom(16), _header(7), os.urandom(40)
    ct_hash = hashlib.sha256(ct).digest()
    line = proof.content_line("event", 7, header, salt, payload, ct_hash, {"ab": "media/7-x.png"})
    d = {
        "ciphertext_sha256": ct_hash.hex(),
        "event": ev.to_json(),
        "files": {"ab": "media/7-x.png"},
        "header": proof.b64(header),
        "salt": proof.b64(salt),
        "seq": 7,
    }
    assert line == canonical_json(d) + b"\n"
    rec = proof.parse_line(line)
    assert rec.leaf == format.leaf_of(header, format.commitment(salt + payload), ct)
    assert rec.content == ev.to_json()


@settings(max_examples=300)
@given(
    st.sampled_from(["event", "decision"]),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.binary(max_size=40),
    st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1)), max_size=4),
)
def test_content_line_equals_canonical_json_of_its_dict(
    key: str, seq: int, salt: bytes, files: dict[str, str], content: dict[str, object]
) -> None:
    """For any seq, salt, files and content, the byte-template line is canonical JSON of the record's dict."""
    header, ct_hash = _header(seq % 2**64), hashlib.sha256(salt).digest()
    line = proof.content_line(key, seq, header, salt, canonical_json(content), ct_hash, files or None)
    d: dict[str, object] = {
        "ciphertext_sha256": ct_hash.hex(),
        key: content,
        "header": proof.b64(header),
        "salt": proof.b64(salt),
        "seq": seq,
    }
    if files:
        d["files"] = files
    assert line == canonical_json(d) + b"\n"


def test_sealed_line_keeps_the_leaf_without_content() -> None:
    """A withheld record's line has header, commitment and ciphertext hash: the same leaf, no plaintext."""
    header, commit, ct = _header(3), os.urandom(32), os.urandom(10)
    tomb = {"reason": "privé", "by": "X", "at_ms": 5, "decision_seq": 9}
    rec = proof.parse_line(proof.sealed_line(3, header, commit, hashlib.sha256(ct).digest(), tomb))
    assert rec.leaf == format.leaf_of(header, commit, ct)
    assert rec.content is None and rec.withheld == tomb


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(seq=8), "header says record 7"),
        (lambda d: d.update(extra=1), "unexpected fields"),
        (lambda d: d.update(salt="!!"), "salt is not base64"),
        (lambda d: d.update(header=proof.b64(_header(7, format.RecordType.DECISION))), "type DECISION"),
    ],
)
def test_parse_line_refuses_malformed_lines(edit: object, message: str) -> None:
    """Lines that do not describe one record of the right type raise LineError naming the problem."""
    import orjson

    header, salt = _header(7), os.urandom(16)
    line = proof.content_line("event", 7, header, salt, canonical_bytes(event(1)), bytes(32), None)
    d = orjson.loads(line)
    edit(d)  # type: ignore[operator]
    with pytest.raises(proof.LineError, match=message):
        proof.parse_line(orjson.dumps(d))
