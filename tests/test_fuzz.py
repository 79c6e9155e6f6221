"""Fuzzing with hypothesis: the Matrix normaliser, the signal-cli envelope parser, the config loader, `import`.

Every generated input must come out as a value: an Event (an `unknown` one that
keeps the raw bytes when it does not parse), a Settings object or one
ConfigError; never an exception, and never the normalisers' own safety net
("normaliser bug"), which would mean a bug was papered over. Every Event must
survive the log's canonical encoding. Inputs are generated in lists, so one
hypothesis example feeds many inputs; `INPUTS` counts each one actually run and
the totals are recorded (issue 6 asks for at least 100,000 across the four).

Strategies start from real shapes (Matrix events of every kind, the signal-cli
fixtures in tests/fixtures/signal) and mutate them (values replaced by any JSON,
keys dropped, wrong types, huge or surrogate strings, NaN, 2**64), besides
plain junk bytes. atheris (coverage-guided) installs from PyPI here but is not
wired in: hypothesis runs in-process under pytest and CI's budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import config
from bridge.errors import ConfigError
from bridge.events import Event, Kind, canonical_bytes, event_from_bytes
from bridge.importer import encode_batch, import_file
from bridge.log import keys as keyfile
from bridge.log.store import LogStore, initialise
from bridge.sources.matrix.normalise import normalise
from bridge.sources.signal.envelopes import normalise_envelope, unstored_kind
from tests.support.figures import record

pytestmark = pytest.mark.slow

INPUTS: Counter[str] = Counter()
BURST = int(os.environ.get("CHATARCHIEF_FUZZ_BURST", "20"))
FIXTURES = Path(__file__).parent / "fixtures" / "signal"
FUZZ = settings(max_examples=int(os.environ.get("CHATARCHIEF_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=list(HealthCheck), database=None, derandomize=True)  # fmt: skip

# -- JSON, hostile -------------------------------------------------------------------------------

weird_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["", "\x00", "$", "!:", "@:x", "../../etc/passwd", "<script>alert(1)</script>", "é" * 300]),
)
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), weird_text,
)  # fmt: skip
json_value = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(weird_text, inner, max_size=4), max_leaves=8
)


@st.composite
def mutated(draw: st.DrawFn, base: Any, depth: int = 0) -> Any:
    """`base` with some values replaced by any JSON, keys dropped or added."""
    if isinstance(base, dict):
        out = {}
        for key, value in base.items():
            roll = draw(st.integers(0, 9))
            if roll == 0:
                continue  # dropped
            out[key] = draw(json_value) if roll == 1 else draw(mutated(value, depth + 1))
        if draw(st.integers(0, 7)) == 0:
            out[draw(weird_text)] = draw(json_value)
        return out
    if isinstance(base, list):
        return [draw(mutated(v, depth + 1)) for v in base]
    return draw(json_value) if draw(st.integers(0, 5)) == 0 else base


# -- Matrix -----------------------------------------------------------------------------------

MATRIX_TYPES = ["m.room.message", "m.reaction", "m.room.redaction", "m.room.encrypted", "m.room.member",
                "m.room.name", "m.room.topic", "m.room.retention", "m.sticker", "m.room.create", "m.bridge",
                "m.room.power_levels", "org.example.custom"]  # fmt: skip
CONTENTS: list[dict[str, Any]] = [
    {"msgtype": "m.text", "body": "hallo", "format": "org.matrix.custom.html", "formatted_body": "<b>hallo</b>"},
    {"msgtype": "m.text", "body": "* nieuw", "m.new_content": {"msgtype": "m.text", "body": "nieuw"},
     "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}},
    {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$orig", "key": "👍"}},
    {"msgtype": "m.file", "body": "nota.pdf", "url": "mxc://localhost/abc", "info": {"size": 10, "mimetype": "x/y"}},
    {"msgtype": "m.image", "body": "f.png", "file": {"url": "mxc://localhost/abc", "key": {"k": "x"}, "iv": "y",
     "hashes": {"sha256": "z"}, "v": "v2"}},
    {"membership": "join", "displayname": "Minister"},
    {"name": "Crisisoverleg"},
    {"max_lifetime": 86400000},
    {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "session_id": "s", "sender_key": "k"},
    {"redacts": "$orig", "reason": "typo"},
]  # fmt: skip


@st.composite
def matrix_event(draw: st.DrawFn) -> Any:
    base = {
        "type": draw(st.sampled_from(MATRIX_TYPES)),
        "event_id": "$ev" + draw(st.text(max_size=6)),
        "sender": "@minister:localhost",
        "origin_server_ts": 1_700_000_000_000,
        "room_id": "!room:localhost",
        "content": draw(st.sampled_from(CONTENTS)),
        "unsigned": {"age": 5, "redacted_because": {"type": "m.room.redaction"}},
        "state_key": "",
        "redacts": "$orig",
    }
    return draw(st.one_of(mutated(base), json_value, st.binary(max_size=64), json_bytes(base)))


@st.composite
def json_bytes(draw: st.DrawFn, base: Any) -> bytes:
    """The JSON text of `base`, truncated or with a byte changed."""
    data = json.dumps(base).encode()
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data)))]
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


TOKENS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"1e999", b"-0", b"\\u0000", b"\\ud800", b'"type"',
          b'"content"', b'"m.relates_to"', b'"event_id"', b'"envelope"', b'"dataMessage"', b"\xff",
          b"\x00"]  # fmt: skip


def burst(data: bytes, seed: int, k: int) -> Iterator[bytes]:
    """`k` cheap byte-level mutations of `data` (flip, insert, delete, duplicate, truncate, splice a JSON token):
    the volume part of the fuzzing, seeded by hypothesis so a failure replays."""
    rng = random.Random(seed)
    for _ in range(k):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(b) + 1)
            op = rng.randrange(6)
            if op == 0 and b:
                b[min(at, len(b) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[at:at] = bytes([rng.randrange(256)])
            elif op == 2:
                del b[at : at + rng.randint(1, 8)]
            elif op == 3:
                b[at:at] = b[at : at + rng.randint(1, 16)]
            elif op == 4:
                del b[at:]
            else:
                b[at:at] = rng.choice(TOKENS)
        yield bytes(b)


def check(event: Event, what: str, given: object = None) -> None:
    """The log can store it, unchanged, and a bug was not merely caught by the safety net."""
    assert event.problem is None or "normaliser bug" not in event.problem, (what, event.problem, event.raw)
    data = canonical_bytes(event)
    assert canonical_bytes(event_from_bytes(data)) == data
    if event.kind is Kind.UNKNOWN and not event.raw:
        assert _empty_object(given), "an unknown event must keep its raw input"


def _empty_object(given: object) -> bool:
    """The input was `{}` (as a mapping or as JSON text): an empty raw is then the whole input."""
    if isinstance(given, (bytes, str)):
        try:
            given = json.loads(given)
        except ValueError:
            return False
    return given == {}


@FUZZ
@given(st.lists(matrix_event(), min_size=1, max_size=40), st.integers(0, 2**32))
def test_matrix_normaliser_never_raises_and_keeps_every_input(inputs: list[Any], seed: int) -> None:
    """Any Matrix event (mutated real shapes, any JSON, junk bytes, byte-level mutations of each) becomes
    exactly one storable Event; whatever does not parse is `unknown` and keeps its raw input."""
    for raw in inputs:
        raw_in = raw if isinstance(raw, (dict, bytes)) else json.dumps(raw, allow_nan=True)
        encoded = raw_in if isinstance(raw_in, bytes) else json.dumps(raw_in, allow_nan=True).encode()
        for variant in (raw_in, *burst(encoded, seed, BURST)):
            INPUTS["matrix"] += 1
            check(normalise(variant, room_id="!room:localhost", received_at=1), "matrix", variant)


# -- Signal -----------------------------------------------------------------------------------


def signal_fixtures() -> list[Any]:
    return [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]


@FUZZ
@given(
    st.lists(
        st.one_of(st.sampled_from(signal_fixtures()).flatmap(mutated), json_value, st.binary(max_size=64)),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**32),
)
def test_signal_envelope_parser_never_raises_and_keeps_every_input(inputs: list[Any], seed: int) -> None:
    """Any receive notification (and byte-level mutations of it) becomes storable Events, or is one of the
    kinds deliberately not stored (receipts, typing): nothing else yields no Event."""
    for params in inputs:
        arg = params if isinstance(params, (dict, bytes)) else json.dumps(params, allow_nan=True).encode()
        encoded = arg if isinstance(arg, bytes) else json.dumps(arg, allow_nan=True).encode()
        for variant in (arg, *burst(encoded, seed, BURST)):
            INPUTS["signal"] += 1
            events = normalise_envelope(variant, account="+31600000001", received_at=1)
            for event in events:
                check(event, "signal", variant)
            if not events:
                assert unstored_kind(variant) is not None, variant


# -- config -----------------------------------------------------------------------------------

SECTIONS = {
    "storage": ["data_dir", "key_file", "checkpoint_every_records", "checkpoint_every_seconds"],
    "matrix": ["homeserver", "user_id", "password_file", "access_token_file", "allowed_inviters", "rooms",
               "max_media_bytes", "sync_timeout_ms", "device_name"],
    "signal": ["endpoint", "account", "receive_mode", "max_media_bytes", "max_message_bytes"],
    "archive": ["destination", "schedule"],
    "organisation": ["name", "archive_creator_id"],
    "logging": ["level", "format"],
}  # fmt: skip
toml_value = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=30).map(json.dumps),
    st.lists(st.text(max_size=10).map(json.dumps), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.sampled_from(['"http://127.0.0.1:8008"', '"@bot:localhost"', '"/tmp/x"', '"tcp://127.0.0.1:7583"', "1.5",
                     '"REPLACE_ME"', "{}", "nan", "inf"]),
)  # fmt: skip


@st.composite
def toml_document(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        keys = [*SECTIONS.get(section, ["x"]), "unknown_key"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True)):
            lines.append(f"{key} = {draw(toml_value)}")
    return "\n".join(lines).encode()


@FUZZ
@given(st.lists(toml_document(), min_size=1, max_size=10), st.integers(0, 2**32))
def test_config_loader_gives_settings_or_one_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                          documents: list[bytes], seed: int) -> None:  # fmt: skip
    """Any config file (and byte-level mutations of it) yields Settings or a ConfigError (a UsageError:
    exit 2 with one clear message); never another exception."""
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    for doc in documents:
        for variant in (doc, *burst(doc, seed, BURST // 3)):
            INPUTS["config"] += 1
            path.write_bytes(variant)
            try:
                config.load(path)
            except ConfigError as exc:
                assert str(exc).strip()


# -- import -----------------------------------------------------------------------------------


@st.composite
def import_line(draw: st.DrawFn) -> bytes:
    event = draw(matrix_event())
    if isinstance(event, bytes):
        return event.replace(b"\n", b" ")
    return json.dumps(event, allow_nan=True).encode()


@FUZZ
@given(st.lists(import_line(), min_size=1, max_size=60), st.integers(0, 2**32))
def test_import_encoding_keeps_every_line(drawn: list[bytes], seed: int) -> None:
    """`import`'s pure step turns every line (drawn, and byte-level mutations of each) into exactly one
    log entry (unknown when it does not parse)."""
    lines = [v.replace(b"\n", b" ") for line in drawn for v in (line, *burst(line, seed, BURST // 2))]
    INPUTS["import_encode"] += len(lines)
    entries, unknown = encode_batch(lines, 1)
    assert len(entries) == len(lines) and 0 <= unknown <= len(lines)
    for line, (_, _, _, _, payload) in zip(lines, entries, strict=True):
        check(event_from_bytes(payload), "import", {} if line.strip() == b"{}" else line)


@pytest.fixture(scope="module")
def import_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, keyfile.KeyMaterial]]:
    keys = keyfile.generate(os.urandom(16))
    data_dir = tmp_path_factory.mktemp("fuzz-import") / "data"
    initialise(data_dir, keys)
    yield data_dir, keys


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(lines=st.lists(import_line() | st.sampled_from([b"", b"   ", b"\xff\xfe", b"{" * 5000]), max_size=80))
def test_import_into_a_real_store_keeps_every_line(
    import_log: tuple[Path, keyfile.KeyMaterial], lines: list[bytes]
) -> None:
    """`import_file` on a real log: every non-blank line is appended or counted as a duplicate (by its
    idempotency key), blank lines are counted, and nothing raises."""
    data_dir, keys = import_log
    path = data_dir.parent / "input.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    async def go() -> tuple[int, int, int, int]:
        async with await LogStore.open(data_dir, keys) as store:
            before = store.size
            counts = await import_file(store, path)
            return counts.lines, counts.appended, counts.duplicates, store.size - before

    n, appended, duplicates, grown = asyncio.run(go())
    INPUTS["import_store"] += n
    assert n == sum(1 for ln in lines if ln.strip()) and appended + duplicates == n and grown == appended


def test_zz_fuzz_totals_are_recorded() -> None:
    """Runs last in this module: the number of inputs each fuzz target ran, for docs/reliability.md."""
    total = sum(INPUTS.values())
    record("fuzz", total=total, **INPUTS)
    if len(INPUTS) == 5:  # the whole module ran (not a -k selection)
        assert total >= 100_000, INPUTS
