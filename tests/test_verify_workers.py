"""`verify --workers N`: helper processes check aligned ranges of records (bridge/log/verify_workers.py) and the
verdict is the serial walk's: the same report, the same first error with the same text naming the same record;
a helper that dies is a clear error, not a hang; the keys reach helpers only through their pipe (issue 15)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ChatarchiefError, StorageError
from bridge.log import merkle, verify_workers
from bridge.log.format import leaf_of
from bridge.log.keys import KeyMaterial
from bridge.log.verify import verify_log
from tests.conftest import LogDir
from tests.support.pg import Attacker
from tests.test_cli import cli


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of four records and no size threshold, so a test log of 52 records takes the helpers."""
    monkeypatch.setattr(verify_workers, "CHUNK", 4)
    monkeypatch.setattr(verify_workers, "PARALLEL_MIN", 0)


@given(
    k=st.integers(0, 4),
    n=st.integers(0, 70),
    cut=st.integers(0, 70),
)
def test_join_gives_the_frontier_of_appending_leaf_by_leaf(k: int, n: int, cut: int) -> None:
    """Frontiers of aligned ranges of 2^k leaves, joined in order (and at any size inside a range), are the
    frontier `merkle.Frontier` builds one leaf at a time: the main process's tree is the serial walk's."""
    chunk = 1 << k
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    hashes: list[bytes] = []
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        sub = merkle.Frontier()
        for m, leaf in enumerate(leaves[a:b], 1):
            sub.append(leaf)
            if a + m == min(cut, n):
                serial = merkle.Frontier()
                for x in leaves[: a + m]:
                    serial.append(x)
                assert verify_workers.join(hashes, a, sub.hashes, m) == list(serial.hashes)
        hashes = verify_workers.join(hashes, a, sub.hashes, b - a)
    whole = merkle.Frontier()
    for leaf in leaves:
        whole.append(leaf)
    assert hashes == list(whole.hashes)
    assert merkle.Frontier.from_hashes(n, hashes).root() == whole.root()


@pytest.mark.usefixtures("small_ranges")
def test_helpers_give_the_serial_report_and_are_used(filled_log: LogDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """With and without the key, 2 workers give the same report as 1 (records, kinds, root, checkpoints), and
    they really ran in helper processes (two of them, over 13 ranges)."""
    started: list[verify_workers.Helper] = []
    original = verify_workers.Helper.__init__

    def spy(self: verify_workers.Helper, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        started.append(self)

    monkeypatch.setattr(verify_workers.Helper, "__init__", spy)
    for keys in (None, filled_log.keys):
        serial = verify_log(filled_log.data_dir, keys, workers=1)
        assert not started
        parallel = verify_log(filled_log.data_dir, keys, workers=2)
        assert len(started) == 2
        started.clear()
        assert parallel.to_json() == serial.to_json()
        assert (parallel.newest_checkpoint, parallel.sealed_size) == (serial.newest_checkpoint, serial.sealed_size)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _set(column: str, seq: int, value: Callable[[Attacker], object]) -> Callable[[Attacker], None]:
    def do(conn: Attacker) -> None:
        conn.execute(f"UPDATE records SET {column} = ? WHERE seq = ?", (value(conn), seq))

    return do


def _stored(conn: Attacker, column: str, seq: int) -> bytes:
    return bytes(conn.execute(f"SELECT {column} FROM records WHERE seq = ?", (seq,)).fetchone()[0])


def _rewrite_leaf(seq: int) -> Callable[[Attacker], None]:
    """Alter a body and store the leaf of the altered bytes: only the next record's chain link (or the
    checkpoint) tells."""

    def do(conn: Attacker) -> None:
        header, commit = _stored(conn, "header", seq), _stored(conn, "commitment", seq)
        body = _flip(_stored(conn, "body", seq), 5)
        conn.execute("UPDATE records SET body = ?, leaf = ? WHERE seq = ?", (body, leaf_of(header, commit, body), seq))

    return do


#: Tampers at range boundaries (records 7, 8 with ranges of four), inside ranges, on the key records and on
#: the last record.
TAMPERS: dict[str, Callable[[Attacker], None]] = {
    "body of 9": _set("body", 9, lambda c: _flip(_stored(c, "body", 9), 7)),
    "header of 8 (first of a range)": _set("header", 8, lambda c: _flip(_stored(c, "header", 8), 30)),
    "leaf of 7 (last of a range)": _set("leaf", 7, lambda c: _flip(_stored(c, "leaf", 7), 0)),
    "leaf rewritten at 15 (chain across ranges)": _rewrite_leaf(15),
    "leaf rewritten at the last record": _rewrite_leaf(51),
    "dedup of 21": _set("dedup", 21, lambda c: _flip(_stored(c, "dedup", 21), 2)),
    "key record 1": _set("body", 1, lambda c: _flip(_stored(c, "body", 1), 20)),
    "dedup of 30 as text": _set("dedup", 30, lambda c: "text"),
    "two records, 13 and 33": lambda c: [
        _set("body", s, lambda c, s=s: _flip(_stored(c, "body", s), 3))(c) for s in (33, 13)
    ],
}


@pytest.mark.usefixtures("small_ranges")
@pytest.mark.parametrize("with_key", [False, True], ids=["keyless", "keyed"])
def test_every_tamper_gives_the_same_first_error_for_any_number_of_workers(
    filled_log: LogDir, tmp_path: Path, with_key: bool
) -> None:
    """For each tamper, verify with 2 workers fails with exactly the error of 1 worker: same class, same text
    (naming the same record), same check, same evidence; a tamper only the key reveals passes both keyless."""
    keys = filled_log.keys if with_key else None
    for name, tamper in TAMPERS.items():
        copy = tmp_path / "copies" / name.replace(" ", "-")
        shutil.copytree(filled_log.data_dir, copy)
        conn = Attacker(copy)
        tamper(conn)
        conn.close()
        outcomes = [_outcome(copy, keys, workers) for workers in (1, 2)]
        assert outcomes[0] == outcomes[1], name
        assert outcomes[0][0] is not None or (name in KEYLESS_BLIND and not with_key), name


#: What only the keyed check sees (the dedup index is outside the leaf).
KEYLESS_BLIND = {"dedup of 21"}


def _outcome(data_dir: Path, keys: KeyMaterial | None, workers: int) -> tuple[object, ...]:
    """The error verify raises (class, text, record, check, evidence), or None and the report."""
    try:
        report = verify_log(data_dir, keys, workers=workers)
    except ChatarchiefError as err:
        return (type(err), str(err), *(getattr(err, a, None) for a in ("seq", "check", "expected", "found")))
    return (None, report.to_json())


@pytest.mark.usefixtures("small_ranges")
def test_a_helper_that_dies_is_a_clear_error_not_a_hang(filled_log: LogDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper killed mid-verify makes verify fail at once with a StorageError naming its exit status (the
    CLI's exit 2: not evidence of tampering), and no helper is left running."""
    started: list[verify_workers.Helper] = []
    original = verify_workers.Helper.result

    def dying(self: verify_workers.Helper) -> verify_workers.RangeResult | None:
        started.append(self)
        self._proc.kill()
        return original(self)

    monkeypatch.setattr(verify_workers.Helper, "result", dying)
    with pytest.raises(StorageError, match=r"verify helper process died \(exit status -9\)"):
        verify_log(filled_log.data_dir, filled_log.keys, workers=2)
    assert started and all(h._proc.poll() is not None for h in started)


def test_a_helper_gets_the_keys_through_its_pipe_only(filled_log: LogDir, tmp_path: Path) -> None:
    """The keys are not on a helper's command line nor in its environment (they go over its stdin), and a
    keyed parallel verify leaves no new file anywhere under the test's directory (no plaintext at rest)."""
    from bridge.log import audit
    from bridge.log.reader import load_keys
    from bridge.log.verify import open_readonly

    conn = open_readonly(filled_log.data_dir)
    index_key, data_keys = load_keys(conn, filled_log.keys)
    conn.close()
    secrets = audit.Secrets(filled_log.keys.log_id, index_key, data_keys)
    before = {p for p in tmp_path.rglob("*") if not p.name.endswith(("-shm", "-wal"))}
    helper = verify_workers.Helper(filled_log.data_dir, secrets)
    try:
        helper.submit(0, 8, ())
        result = helper.result()
        cmdline = Path(f"/proc/{helper._proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{helper._proc.pid}/environ").read_bytes()
    finally:
        helper.stop()
    assert result is not None and result.complete and result.kinds == {"message": 6} and result.slow == [0, 1]
    for key in (index_key, *data_keys.values()):
        for form in (key, key.hex().encode(), key.hex().upper().encode()):
            assert form not in cmdline and form not in environ
    assert {p for p in tmp_path.rglob("*") if not p.name.endswith(("-shm", "-wal"))} == before


@pytest.mark.usefixtures("small_ranges")
def test_cli_verify_takes_workers(filled_log: LogDir) -> None:
    """`verify --workers 2` prints what `--workers 1` prints; `--workers 0` is a usage error (exit 2)."""
    args = ("verify", "--data-dir", filled_log.data_dir, "--key-file", filled_log.key_file, "--json")
    one = cli(*args, "--workers", "1")
    two = cli(*args, "--workers", "2")
    assert one[0] == two[0] == 0 and one[1] == two[1], (one, two)
    assert cli(*args, "--workers", "0")[0] == 2


@pytest.mark.usefixtures("small_ranges")
def test_damaged_pages_give_the_same_verdict_for_any_number_of_workers(filled_log: LogDir, tmp_path: Path) -> None:
    """A flipped byte anywhere in the database file (record pages, the dedup index, free space) gives the same
    outcome with 2 workers as with 1: the same error text, or the same report when the byte is harmless. The
    helpers' ranges and the integrity check that runs beside them add no verdict of their own."""
    import random

    size = filled_log.db.stat().st_size
    rng = random.Random(15)
    for trial in range(6):
        copy = tmp_path / f"damaged-{trial}"
        shutil.copytree(filled_log.data_dir, copy)
        db_file = copy / filled_log.db.name
        data = bytearray(db_file.read_bytes())
        at = rng.randrange(100, size)  # past SQLite's file header
        data[at] ^= 1 << rng.randrange(8)
        db_file.write_bytes(bytes(data))
        outcomes = [_outcome(copy, None, workers) for workers in (1, 2)]
        assert outcomes[0] == outcomes[1], (at, outcomes)
