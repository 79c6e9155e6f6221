"""`import` with its pure stage in worker processes (bridge.import_pool, bridge.import_worker) against the
in-process import.

Pinned: the same events in the same order, the same counts and progress, malformed and blank lines,
duplicates within a file and across imports, conflicting versions; a killed worker gives a clear error
(nothing but whole batches committed; a re-run completes it); the index key crosses only the pipe; an
import handed to a running bot stays in process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import import_pool, import_worker, importer
from bridge.errors import UsageError
from bridge.events import MATRIX, canonical_bytes
from bridge.import_pool import ImportWorkerError, WorkerPool
from bridge.import_worker import preseal
from bridge.importer import ImportCounts, import_file
from bridge.log import crypto, format
from bridge.log import keys as keyfile
from bridge.log.dedup import TagFilter
from bridge.log.keys import KeyMaterial
from bridge.log.reader import iter_events
from bridge.log.schema import conversation_tag, dedup_tag
from bridge.log.store import AppendResult, LogStore, initialise
from bridge.log.verify import verify_log
from bridge.sources.matrix.fast import encode_line


def _event(i: int, body: str | None = None, room: int | None = None) -> bytes:
    return json.dumps({
        "type": "m.room.message", "room_id": f"!room{i % 3 if room is None else room}:example.org",
        "event_id": f"$ev{i}", "sender": f"@user{i % 2}:example.org", "origin_server_ts": 1_764_000_000_000 + i,
        "content": {"msgtype": "m.text", "body": body if body is not None else f"bericht {i} é"},
    }).encode()  # fmt: skip


def _mixed_file(path: Path, n: int = 120) -> Path:
    """Plain messages (fast path), a membership event (full normaliser), malformed lines, blank lines, a CRLF
    line and duplicates within one batch and across batches."""
    lines: list[bytes] = []
    for i in range(n):
        lines.append(_event(i))
        if i % 17 == 0:
            lines += [b"{not json", b"", b"   ", b'{"type": "m.room.message", "event_id": 5}']
        if i % 11 == 0:
            lines.append(_event(i))  # a duplicate in the same batch or the next
    lines.append(json.dumps({
        "type": "m.room.member", "room_id": "!room1:example.org", "event_id": "$join", "state_key": "@a:example.org",
        "sender": "@a:example.org", "origin_server_ts": 1, "content": {"membership": "join"},
    }).encode())  # fmt: skip
    lines.append(_event(3))  # a duplicate far from its first copy
    path.write_bytes(b"\n".join(lines) + b"\r\n" + _event(999) + b"\n")
    return path


def _log(tmp: Path, name: str) -> tuple[Path, KeyMaterial]:
    keys = keyfile.generate(os.urandom(16))
    data_dir = tmp / name
    initialise(data_dir, keys)
    return data_dir, keys


async def _import(data_dir: Path, keys: KeyMaterial, path: Path, workers: int) -> tuple[ImportCounts, list[int]]:
    progress: list[int] = []
    async with await LogStore.open(data_dir, keys) as store:
        counts = await import_file(store, path, progress=progress.append, workers=workers)
        assert await store.latest_checkpoint() is not None
    return counts, progress


def _events(data_dir: Path, keys: KeyMaterial) -> list[dict[str, Any]]:
    """The stored events without the time of arrival (it is the clock's at each batch)."""
    out = []
    for _, event in iter_events(data_dir, keys):
        doc = json.loads(canonical_bytes(event))
        del doc["received_at"]
        out.append(doc)
    return out


@pytest.mark.parametrize("workers", [1, 2])
async def test_worker_import_stores_what_the_in_process_import_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Same counts, progress, events (order, content, malformed lines kept as unknown, duplicates counted),
    record versions and a signed checkpoint over everything, with batches of 7 lines (many batches, some
    duplicates across them), one and two workers."""
    monkeypatch.setattr(importer, "BATCH", 7)
    path = _mixed_file(tmp_path / "in.jsonl")
    here, there = _log(tmp_path, "here"), _log(tmp_path, "there")
    counts_here, progress_here = await _import(*here, path, workers=0)
    counts_there, progress_there = await _import(*there, path, workers=workers)
    assert counts_there == counts_here
    assert (counts_here.unknown, counts_here.duplicates, counts_here.blank) == (16, 26, 16)
    assert progress_there == progress_here and progress_here[-1] == path.stat().st_size
    assert _events(*there) == _events(*here)
    for data_dir, keys in (here, there):
        verify_log(data_dir, keys)


async def test_worker_import_deduplicates_against_the_log_and_keeps_conflicting_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second import of the same file is all duplicates; an event id already held with other content is
    stored as a conflicting version, exactly as the in-process import does it."""
    monkeypatch.setattr(importer, "BATCH", 16)
    first = tmp_path / "first.jsonl"
    first.write_bytes(b"\n".join(_event(i) for i in range(40)) + b"\n")
    changed = tmp_path / "changed.jsonl"
    changed.write_bytes(b"\n".join(_event(i, body="anders" if i % 5 == 0 else None) for i in range(40)) + b"\n")
    results = []
    for name, workers in (("here", 0), ("there", 1)):
        log = _log(tmp_path, name)
        await _import(*log, first, workers=0)
        again, _ = await _import(*log, first, workers=workers)
        versions, _ = await _import(*log, changed, workers=workers)
        twice, _ = await _import(*log, changed, workers=workers)
        results.append(((again.appended, again.duplicates), (versions.appended, versions.duplicates), twice.appended))
        events = _events(*log)
        assert [e["event_id"] for e in events[40:]] == [
            f"$ev{i}#version-{e['event_id'][-16:]}" for i, e in zip(range(0, 40, 5), events[40:], strict=True)
        ]
        assert all(e["content"]["version_of"] == f"$ev{i}" for i, e in zip(range(0, 40, 5), events[40:], strict=True))
        verify_log(*log)
    assert results[0] == results[1] == ((0, 40), (8, 32), 0)


def _children() -> list[int]:
    """PIDs of this process's children (from /proc)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(("head", "asks"), [(0, 1), (1, 1000), (3, 1000)])
async def test_batches_the_writer_presealed_itself_store_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head: int, asks: int
) -> None:
    """The writer's share of the pure stage (the first `head` batches while the worker starts, and every
    batch it asks for as lines while it waits; here each request asks for up to `asks` batches, so with
    1000 the worker sends nearly everything as lines) stores what the in-process import stores: same
    counts, progress, events and versions, and the log verifies."""
    monkeypatch.setattr(importer, "BATCH", 7)
    monkeypatch.setattr(import_pool, "HEAD_BATCHES", head)
    monkeypatch.setattr(import_pool, "_REQUEST", b"\x01" * asks)
    here_local: list[int] = []
    preseal_here = WorkerPool._preseal_here

    async def counting(self: WorkerPool, lines: list[bytes]) -> tuple[int, format.Presealed]:
        here_local.append(len(lines))
        return await preseal_here(self, lines)

    monkeypatch.setattr(WorkerPool, "_preseal_here", counting)
    splits: list[int] = []
    joined = import_pool._joined

    def counting_splits(first: format.Presealed, then: format.Presealed) -> format.Presealed:
        splits.append(len(then.event_ids))
        return joined(first, then)

    monkeypatch.setattr(import_pool, "_joined", counting_splits)
    path = _mixed_file(tmp_path / "in.jsonl")
    here, there = _log(tmp_path, "here"), _log(tmp_path, "there")
    counts_here, progress_here = await _import(*here, path, workers=0)
    assert not here_local  # the in-process import does not go through the pool
    counts_there, progress_there = await _import(*there, path, workers=1)
    assert counts_there == counts_here and progress_there == progress_here
    assert _events(*there) == _events(*here)
    verify_log(*there)
    assert len(here_local) >= head + (asks > 1)  # the head, and (asking for many at once) more than that
    if head == 0:
        # the writer waits for the first batch while the worker starts and asks for its last lines (one per
        # request here: 7 // SHARE_PARTS, at least 1; at most MAX_ASKED requests outstanding): "split" frames,
        # their last lines presealed here and joined to the worker's columns
        assert splits and all(1 <= n <= import_pool.MAX_ASKED for n in splits)


async def test_a_killed_worker_fails_clearly_and_a_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker killed after the first batch: ImportWorkerError naming the signal (no hang), only whole
    batches in the log (which verifies), and a re-run appends the rest, counting the rest as duplicates."""
    monkeypatch.setattr(importer, "BATCH", 64)
    path = tmp_path / "big.jsonl"
    n = 6000  # ~1.1 MB of frames: more than the pipe holds, so the worker is alive when killed
    path.write_bytes(b"\n".join(_event(i, body="x" * 120) for i in range(n)) + b"\n")
    data_dir, keys = _log(tmp_path, "log")
    before = set(_children())
    killed: list[int] = []

    def kill_worker(_: int) -> None:
        if not killed:
            (pid,) = set(_children()) - before
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    async with await LogStore.open(data_dir, keys) as store:
        start = store.size  # the key records
        with pytest.raises(ImportWorkerError, match=r"killed by signal 9.*run the\s+import again"):
            await asyncio.wait_for(import_file(store, path, progress=kill_worker, workers=1), timeout=60)
        partial = store.size
        await store.checkpoint()
    assert killed and 0 < partial - start < n and (partial - start) % 64 == 0
    assert set(_children()) == before  # reaped
    verify_log(data_dir, keys)
    counts, _ = await _import(data_dir, keys, path, workers=1)
    assert (counts.appended, counts.duplicates) == (n - (partial - start), partial - start)
    assert [e["event_id"] for e in _events(data_dir, keys)] == [f"$ev{i}" for i in range(n)]


async def test_the_index_key_crosses_only_the_pipe(tmp_path: Path) -> None:
    """The worker's command line and environment hold no form of the key; the tags it computes with it are
    the log's own (`schema.dedup_tag`, `schema.conversation_tag`)."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(_event(i, body="y" * 200) for i in range(6000)) + b"\n")
    key = os.urandom(32)
    forms = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)]
    async with WorkerPool.start(path, key, MATRIX, 4096, 1) as pool:
        (pid,) = pool.pids
        cmdline = b""
        for _ in range(200):  # right after exec the kernel may show an empty command line for a moment
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline:
                break
            await asyncio.sleep(0.01)
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"import_worker" in cmdline  # alive and ours (its output fills the pipe, so it waits)
        for name, value in import_pool.WORKER_MALLOC_ENV.items():  # the allocator settings, unless the operator's
            assert f"{name}={os.environ.get(name, value)}".encode() in environ.split(b"\0")
        for form in forms:
            assert form not in cmdline and form not in environ
        batches = [b async for b in pool.batches()]
    first = batches[0].presealed
    assert first.tags[5] == dedup_tag(key, MATRIX, "!room2:example.org", "$ev5")
    assert first.conversation_tags[5] == conversation_tag(key, MATRIX, "!room2:example.org")
    assert sum(len(b.presealed.tags) for b in batches) == 6000 and pool.tally is not None and pool.tally.lines == 6000


async def test_an_unreadable_file_is_a_usage_error_either_way(tmp_path: Path) -> None:
    """A path the worker cannot read gives the in-process import's UsageError, not a dead-worker error."""
    data_dir, keys = _log(tmp_path, "log")
    messages = []
    for workers in (0, 1):
        async with await LogStore.open(data_dir, keys) as store:
            with pytest.raises(UsageError, match="cannot read") as caught:
                await import_file(store, tmp_path, workers=workers)  # a directory
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


class _Proxy:
    """An Appender that is not this process's store (as the running bot's proxy is)."""

    def __init__(self, store: LogStore) -> None:
        self.store, self.calls = store, 0

    @property
    def keys(self) -> KeyMaterial:
        return self.store.keys

    async def append_records(self, entries: Any) -> AppendResult:
        self.calls += 1
        return await self.store.append_records(entries)

    async def checkpoint(self) -> str:
        return await self.store.checkpoint()


async def test_an_import_through_the_bot_stays_in_process(tmp_path: Path) -> None:
    """The control socket takes plain entries only: asked for workers, the import still hands every batch to
    the proxy's `append_records` and starts no process."""
    path = _mixed_file(tmp_path / "in.jsonl")
    data_dir, keys = _log(tmp_path, "log")
    before = set(_children())
    async with await LogStore.open(data_dir, keys) as store:
        proxy = _Proxy(store)
        counts = await import_file(proxy, path, workers=1)
    assert proxy.calls == 1 and counts.appended > 0 and set(_children()) == before


def test_small_files_and_single_cpus_stay_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`workers=None` picks no worker below `WORKER_MIN_BYTES` or without a spare CPU."""
    small = tmp_path / "small.jsonl"
    small.write_bytes(_event(1))
    store = object.__new__(LogStore)
    assert importer._plan(store, small, None)[1] == 0
    monkeypatch.setattr(importer, "WORKER_MIN_BYTES", 1)
    monkeypatch.setattr(importer.os, "sched_getaffinity", lambda _: {0, 1, 2})
    assert importer._plan(store, small, None)[1] == 2
    monkeypatch.setattr(importer.os, "sched_getaffinity", lambda _: {0})
    assert importer._plan(store, small, None)[1] == 0


@given(
    lines=st.lists(
        st.one_of(
            st.integers(0, 50).map(_event),
            st.binary(max_size=60),
            st.text(max_size=40).map(lambda t: _event(7, body=t)),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_preseal_is_encode_line_then_prepare_plaintext(lines: list[bytes]) -> None:
    """Each presealed entry opens to `encode_line`'s payload under its commitment, with the log's tags."""
    key, received = bytes(range(32)), 1_764_000_000_000
    unknown, convs, ids, tags, ctags, versions, commits, plaintexts = preseal(
        encode_line, lines, received, key, MATRIX, {}
    )
    assert unknown == sum(encode_line(line.rstrip(b"\r\n"), received)[3] for line in lines)
    for n, line in enumerate(lines):
        conversation, event_id, payload, _ = encode_line(line.rstrip(b"\r\n"), received)
        assert (convs[n], ids[n]) == (conversation, event_id)
        assert tags[n] == dedup_tag(key, MATRIX, conversation, event_id)
        assert ctags[n] == conversation_tag(key, MATRIX, conversation)
        plain = format.expand(plaintexts[n]) if versions[n] == format.VERSION_COMPRESSED else plaintexts[n]
        assert versions[n] == format.VERSION_COMPRESSED
        assert format.split_plaintext(plain)[1] == payload
        assert commits[n] == hashlib.sha256(plain).digest() and len(plain) == crypto.SALT_BYTES + len(payload)


@given(
    st.lists(st.sampled_from([b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"\xa0", b"x", b"{}", b" a "]), max_size=40),
    st.integers(min_value=1, max_value=5),
    st.booleans(),
)
def test_cut_keeps_the_non_blank_lines_in_batches_and_counts_the_rest(
    tmp_path_factory: pytest.TempPathFactory, words: list[bytes], size: int, final_newline: bool
) -> None:
    """`cut`: every line that is not only ASCII whitespace (`bytes.strip`'s), in order, in batches of `size`;
    blank lines counted; the bytes read at each cut and at the end; a last line without a newline kept (the
    reference is the rule as it was written before `bytes.isspace` replaced the strip)."""
    data = b"\n".join(words) + (b"\n" if final_newline and words else b"")
    path = tmp_path_factory.mktemp("cut") / "in.jsonl"
    path.write_bytes(data)
    tally = import_worker.Tally()
    batches, reads = [], []
    for batch in import_worker.cut(path, size, tally):
        batches.append(batch)
        reads.append(tally.read)
    parts = data.split(b"\n")  # a binary file's lines: only \n ends one
    lines = [x + b"\n" for x in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    kept = [x for x in lines if x.strip()]
    assert [x for b in batches for x in b] == kept
    assert all(len(b) == size for b in batches[:-1]) and all(0 < len(b) <= size for b in batches)
    assert (tally.lines, tally.blank, tally.read) == (len(kept), len(lines) - len(kept), len(data))
    ends = [sum(map(len, lines[: i + 1])) for i, x in enumerate(lines) if x.strip()]
    # a full batch is cut right after its last line; a short last one at the end of the file
    assert reads == [
        ends[(n + 1) * size - 1] if (n + 1) * size <= len(kept) else len(data) for n in range(len(batches))
    ]


def test_the_worker_imports_no_matrix_client() -> None:
    """The worker's start-up skips `bridge.sources.matrix`'s package module (it imports matrix-nio)."""
    import subprocess
    import sys

    code = (
        "import sys; from bridge import import_worker as w; w.pure_encoder();"
        "print('nio' in sys.modules, 'psycopg' in sys.modules, 'bridge.log.store' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={
        **os.environ, "PYTHONPATH": str(Path(import_worker.__file__).parents[1])}).stdout  # fmt: skip
    assert out.split() == ["False", "False", "False"]


def test_the_cli_import_uses_workers_for_a_large_file_and_prints_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chatarchief import` (its `LocalWriter`) with the threshold at 1 byte starts a worker and prints the
    same counts line as with the worker off; both logs verify."""
    from typer.testing import CliRunner

    from bridge.cli import app

    path = _mixed_file(tmp_path / "in.jsonl")
    started: list[int] = []
    start = WorkerPool.start

    def counting(*args: Any) -> WorkerPool:
        pool = start(*args)
        started.append(len(pool.pids))
        return pool

    monkeypatch.setattr(import_pool.WorkerPool, "start", counting)
    monkeypatch.setattr(importer.os, "sched_getaffinity", lambda _: {0, 1})
    outputs = []
    for name, threshold in (("off", 1 << 40), ("on", 1)):
        monkeypatch.setattr(importer, "WORKER_MIN_BYTES", threshold)
        secrets = tmp_path / f"secrets-{name}"
        secrets.mkdir(mode=0o700)
        data, key = tmp_path / f"data-{name}", secrets / "ca.key"
        runner = CliRunner()
        assert runner.invoke(app, ["init", "--data-dir", str(data), "--key-file", str(key)]).exit_code == 0
        result = runner.invoke(app, ["import", "--data-dir", str(data), "--key-file", str(key), str(path)])
        assert result.exit_code == 0, result.stderr
        outputs.append(result.stdout)
        assert runner.invoke(app, ["verify", "--data-dir", str(data), "--key-file", str(key)]).exit_code == 0
    assert started == [1]
    assert outputs[0] == outputs[1] and "appended 124, duplicates 26, unknown 16" in outputs[0]


def test_a_malformed_batch_is_refused_before_anything_is_sealed() -> None:
    """Columns of unequal length, too few fields or an empty batch: ImportWorkerError, not an error mid-seal."""
    pool = WorkerPool([], MATRIX, path=Path("unused.jsonl"), index_key=bytes(32), batch=7, head=0)
    good = ("batch", 10, True, 0, ["!r:x"], ["$e"], [b"t" * 16], [b"c" * 16], b"\x02", [b"h" * 32], [b"p"])
    assert pool._batch(0, good).presealed.event_ids == ["$e"]
    for bad in (good[:-1], (*good[:5], ["$e", "$f"], *good[6:]), (*good[:4], [], [], [], [], b"", [], [])):
        with pytest.raises(ImportWorkerError, match="malformed batch 3"):
            pool._batch(3, bad)


@pytest.mark.parametrize(
    "frame",
    [
        ("lines", 10, True),
        ("lines", 10, True, []),
        ("lines", 10, True, ["str"]),
        ("lines", 1, True, b"x"),
        ("lines", "10", True, [b"x"]),
        ("lines", 10, 1, [b"x"]),
    ],
)
async def test_a_malformed_lines_frame_is_refused(frame: tuple[Any, ...]) -> None:
    """A "lines" frame (a batch the writer asked for) with too few fields, no lines or lines that are not
    bytes: ImportWorkerError before anything is presealed."""
    pool = WorkerPool([], MATRIX, path=Path("unused.jsonl"), index_key=bytes(32), batch=7, head=0)
    with pytest.raises(ImportWorkerError, match="malformed batch 3"):
        await pool._batch_of(3, 0, frame)


@pytest.mark.parametrize("tail", [[], ["str"], b"x", None])
async def test_a_malformed_split_frame_is_refused(tail: object) -> None:
    """A "split" frame (a batch presealed but for the last lines the writer asked for) whose raw lines are
    empty or not bytes: ImportWorkerError before anything is presealed."""
    pool = WorkerPool([], MATRIX, path=Path("unused.jsonl"), index_key=bytes(32), batch=7, head=0)
    good = ("split", 10, True, 0, ["!r:x"], ["$e"], [b"t" * 16], [b"c" * 16], b"\x02", [b"h" * 32], [b"p"])
    with pytest.raises(ImportWorkerError, match="malformed batch 3"):
        await pool._batch_of(3, 0, (*good, tail))


def _fixed_randomness(size: int) -> bytes:
    """`os.urandom` for `test_presealed_records_are_byte_identical...`: every salt 0x5a.., every nonce 0xa5..,
    whichever path draws them (the in-process seal draws nonce || salt per record in one call)."""
    caller = sys._getframe(1).f_code.co_name
    salt, nonce = b"\x5a" * crypto.SALT_BYTES, b"\xa5" * crypto.NONCE_BYTES
    if caller == "_seal_all":
        return (nonce + salt) * (size // (crypto.NONCE_BYTES + crypto.SALT_BYTES))
    if caller in ("preseal", "_presealed_versions"):  # the latter: a conflicting version's salt
        return salt * (size // crypto.SALT_BYTES)
    if caller == "_seal_presealed":
        return nonce * (size // crypto.NONCE_BYTES)
    return _URANDOM(size)


_URANDOM = os.urandom


async def test_presealed_records_are_byte_identical_to_the_in_process_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same input, log (a copy of one data dir: same keys), salts, nonces and clock give the same
    record rows, byte for byte (conflicting versions of events the input holds twice with other content
    included), through the in-process import (`encode_line`, `LogStore._seal_all`,
    `format.seal_record`: the documented composition) and the presealed path (`preseal`,
    `format.prepare_plaintexts`, `append_presealed`, `format.seal_prepared_rows` in slices, the multi-row
    insert). Batches of 300 lines (more than a seal slice and two INSERT statements), every one presealed by
    this process (the worker skips them all) so that the fixed randomness and clock apply."""
    import shutil
    import sqlite3

    from bridge.log import store as store_module
    from bridge.log.schema import db_path

    monkeypatch.setattr(importer, "BATCH", 300)
    monkeypatch.setattr(store_module, "SEAL_SLICE", 128)
    monkeypatch.setattr(import_pool, "HEAD_BATCHES", 1000)
    monkeypatch.setattr(os, "urandom", _fixed_randomness)
    for module in (importer, import_pool, import_worker, store_module):
        monkeypatch.setattr(module, "now_ms", lambda: 1_764_000_000_123)
    path = tmp_path / "in.jsonl"
    lines = [_event(i, body=f"bericht {i} " + "x" * (i % 50)) for i in range(700)]
    path.write_bytes(b"\n".join(lines) + b"\n" + _mixed_file(tmp_path / "mixed.jsonl").read_bytes())
    here = _log(tmp_path, "here")
    there = (tmp_path / "there", here[1])
    shutil.copytree(here[0], there[0])
    counts_here, _ = await _import(*here, path, workers=0)
    counts_there, _ = await _import(*there, path, workers=1)
    assert counts_there == counts_here and counts_here.appended > 700
    rows = []
    for data_dir, _ in (here, there):
        conn = sqlite3.connect(db_path(data_dir))
        try:
            rows.append(
                conn.execute("SELECT seq, dedup, header, commitment, body, leaf FROM records ORDER BY seq").fetchall()
            )
        finally:
            conn.close()
    assert len(rows[0]) > counts_here.appended and rows[0] == rows[1]
    for data_dir, keys in (here, there):
        verify_log(data_dir, keys)


def test_the_import_tuning_holds_while_imports_run_and_is_restored_after_the_last() -> None:
    """`importer._tuned_for_import`: the collector's first threshold is at least `IMPORT_GC_THRESHOLD` and the
    switch interval at most `IMPORT_SWITCH_INTERVAL` while any import runs, and the settings found by the
    first are restored when the last ends, whichever ends first."""
    import gc
    from contextlib import ExitStack

    before = gc.get_threshold(), sys.getswitchinterval()
    tuned = ((importer.IMPORT_GC_THRESHOLD, 10, 10), importer.IMPORT_SWITCH_INTERVAL)
    try:
        gc.set_threshold(700, 10, 10)
        sys.setswitchinterval(0.005)
        first, second = importer._tuned_for_import(), importer._tuned_for_import()
        with ExitStack() as outer:
            outer.enter_context(first)
            assert (gc.get_threshold(), sys.getswitchinterval()) == tuned
            second.__enter__()
        # the first ended before the second: still tuned
        assert (gc.get_threshold(), sys.getswitchinterval()) == tuned
        second.__exit__(None, None, None)
        assert (gc.get_threshold(), sys.getswitchinterval()) == ((700, 10, 10), 0.005)
    finally:
        gc.set_threshold(*before[0])
        sys.setswitchinterval(before[1])


@pytest.mark.parametrize("workers", [0, 1])
async def test_an_import_tells_the_store_the_records_left_after_each_full_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """`LogStore.expect` gets the records the rest of the file holds at the lines per byte read so far: exact
    for lines of one length (5 batches of 8: 32, 24, 16, 8, 0 left), in process and with a worker; the dedup
    filter then grows for them (the part after the first is sized for the 32 expected, not doubled)."""
    monkeypatch.setattr(importer, "BATCH", 8)
    monkeypatch.setattr(TagFilter, "MIN_CAPACITY", 4)
    told: list[int] = []
    expect = LogStore.expect

    def spy(self: LogStore, more: int) -> None:
        told.append(more)
        expect(self, more)

    monkeypatch.setattr(LogStore, "expect", spy)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(_event(100 + i, room=1) + b"\n" for i in range(40)))  # every line the same length
    data_dir, keys = _log(tmp_path, "log")
    async with await LogStore.open(data_dir, keys) as store:
        await store._filter_task  # type: ignore[misc]  # the filter of the new log, loaded
        counts = await import_file(store, path, workers=workers)
        parts = [capacity for _, _, capacity in store._filter._parts]
    assert counts.appended == 40 and told == [32, 24, 16, 8, 0]
    assert len(parts) < len([4, 8, 16, 32]) and sum(parts) >= 40  # doubling: 4, 8, 16, 32; sized: 4, 8, 33
