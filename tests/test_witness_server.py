"""The witness against real logs over real HTTP: tlog-witness.md's status codes, durability, fork evidence,
and the attack it exists for (a key holder rewrites history and re-signs every checkpoint)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.dev.synapse import free_port
from bridge.log import merkle
from bridge.log.schema import initialise
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.witness.client import Witnessing
from bridge.witness.config import LogEntry, WitnessConfig
from bridge.witness.cosigned import CosignatureStore
from bridge.witness.note import CosignerKey, Verifier, parse_vkey, split_note
from bridge.witness.request import AddCheckpoint
from bridge.witness.server import serve
from tests.conftest import LogDir, create_log, fill_log, make_event
from tests.test_witness_note import independent_cosignature_check

runner = CliRunner()
WITNESS_NAME = "witness.test.example/w1"


def leaves_of(log: LogDir) -> list[bytes]:
    conn = sqlite3.connect(log.db)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT leaf FROM records ORDER BY seq")]
    finally:
        conn.close()


def newest_note(log: LogDir) -> str:
    conn = sqlite3.connect(log.db)
    try:
        return str(conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()[0])
    finally:
        conn.close()


def make_witness(tmp_path: Path, logs: list[LogDir], **extra: object) -> tuple[WitnessConfig, CosignerKey]:
    key = CosignerKey.generate(WITNESS_NAME)
    key_file = tmp_path / "witness" / "witness.key"
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file.write_text(key.to_text())
    key_file.chmod(0o600)
    entries = tuple(LogEntry(origin=lg.keys.key_name, vkeys=(lg.keys.vkey(),)) for lg in logs)
    config = WitnessConfig(
        key_file=key_file, state=tmp_path / "witness" / "state.sqlite3", listen="127.0.0.1:0", logs=entries, **extra
    )  # type: ignore[arg-type]
    return config, key


@contextlib.asynccontextmanager
async def running(config: WitnessConfig) -> AsyncIterator[str]:
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, stop, port.set_result))
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}"
    finally:
        stop.set()
        await task


async def post(url: str, body: bytes) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.post(url + "/add-checkpoint", data=body) as r:
        return r.status, await r.text(), r.headers.get("Content-Type", "")


def witnessing(log: LogDir, url: str, key: Verifier, clock: list[float] | None = None) -> Witnessing:
    store = CosignatureStore(log.data_dir)

    async def latest() -> str:
        return newest_note(log)

    def leaves(start: int, end: int) -> list[bytes]:
        return leaves_of(log)[start:end]

    kwargs = {"clock": (lambda: clock[0])} if clock is not None else {}
    return Witnessing([(url, key)], store, latest, leaves, retry_min=1.0, retry_max=60.0, timeout=2.0, **kwargs)


async def sync(w: Witnessing) -> str:
    async with aiohttp.ClientSession() as session:
        return (await w.sync_once(session))[w.targets[0].url]


def verify_cli(log: LogDir, key: Verifier, quorum: int = 1) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["verify", "--data-dir", str(log.data_dir), "--witness-key", key.vkey, "--quorum", str(quorum)],
    )
    return result.exit_code, result.output


def rewrite_history(log: LogDir, changed_seq_event: int, total: int) -> None:
    """What a key holder can do: rebuild the log under the same keys with one event changed, re-signing every
    checkpoint (a new database in the same place, cosignatures left as they were)."""
    os.remove(log.db)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(log.db) + suffix)
    initialise(log.data_dir, log.keys)

    async def go() -> None:
        policy = CheckpointPolicy(every_records=10, every_seconds=3600)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            events = [make_event(i, body="nothing was said" if i == changed_seq_event else None) for i in range(total)]
            for start in range(0, total, 5):
                await store.append_events(events[start : start + 5])
            await store.checkpoint()

    asyncio.run(go())


# -- the attack ----------------------------------------------------------------------------------------------


async def test_rewritten_history_is_refused_and_verify_fails(tmp_path: Path) -> None:
    """A key holder rewrites one record and re-signs every checkpoint: the witness refuses the rewritten
    checkpoint (422), writes fork evidence holding both signed checkpoints, and `verify --witness-key
    --quorum 1` exits 1 naming the checkpoint, while plain `verify` still says intact."""
    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 40)
    config, key = make_witness(tmp_path, [log])
    async with running(config) as url:
        w = witnessing(log, url, key.verifier)
        assert (await sync(w)).startswith("cosigned 42")
        honest_note = newest_note(log)
        code, out = await asyncio.to_thread(verify_cli, log, key.verifier)
        assert code == 0, out
        assert "cosigned by witness.test.example/w1" in out

        await asyncio.to_thread(rewrite_history, log, 7, 50)
        assert (await asyncio.to_thread(runner.invoke, app, ["verify", "--data-dir", str(log.data_dir)])).exit_code == 0
        w2 = witnessing(log, url, key.verifier)
        outcome = await sync(w2)
        assert "refused with HTTP 422" in outcome
        # a same-size fork (old = new = 42, another root) is refused too
        forged_42 = _note_at(log, 42)
        status, body, _ = await post(url, AddCheckpoint(42, (), forged_42).encode())
        assert status == 422 and "fork" in body

    evidence = sorted(config.evidence().iterdir())
    assert len(evidence) == 2
    texts = [e.read_text() for e in evidence]
    assert all(honest_note in t for t in texts)  # the checkpoint the witness had cosigned, log-signed ...
    assert any("\n52\n" in t and "consistency proof" in t for t in texts)  # ... the rewritten one it refused
    assert any(forged_42 in t and "fork" in t for t in texts)  # ... and the same-size fork
    code, out = await asyncio.to_thread(verify_cli, log, key.verifier)
    assert code == 1
    assert "checkpoint at tree size 52" in out and "0 valid witness cosignature" in out


def _note_at(log: LogDir, size: int) -> str:
    conn = sqlite3.connect(log.db)
    try:
        return str(conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()[0])
    finally:
        conn.close()


# -- the spec's status codes ---------------------------------------------------------------------------------


async def test_status_codes(tmp_path: Path) -> None:
    """404 unknown origin, 403 unsigned or forged, 400 old > size, 409 stale old size (body: our size,
    text/x.tlog.size), 422 bad proof / non-empty proof from 0 / size 0 without the empty root; 200 otherwise."""
    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 20)
    other = create_log(tmp_path / "other")
    config, key = make_witness(tmp_path, [log])
    leaves = leaves_of(log)
    note = newest_note(log)
    size = len(leaves)
    async with running(config) as url:
        assert (await post(url, AddCheckpoint(0, (), newest_note(other)).encode()))[0] == 404
        text, _ = split_note(note)
        assert (await post(url, AddCheckpoint(0, (), text + "\n— someone AAAAAAAA\n").encode()))[0] == 403
        assert (await post(url, AddCheckpoint(0, (), _resign_garbage(note)).encode()))[0] == 403
        assert (await post(url, AddCheckpoint(size + 1, (), note).encode()))[0] == 400
        assert (await post(url, b"old 1\nnot a proof\n\n" + note.encode()))[0] == 400
        assert (await post(url, AddCheckpoint(0, (leaves[0],), note).encode()))[0] == 422
        status, body, _ = await post(url, AddCheckpoint(0, (), note).encode())
        assert status == 200
        sig_line = body
        cosig = key.verifier
        (sig,) = [s for s in split_note(note + sig_line)[1] if cosig.matches(s)]
        assert cosig.verify(text, sig) and (cosig.timestamp(sig) or 0) > 0
        assert abs(independent_cosignature_check(cosig.vkey, note + sig_line) - time.time()) < 60
        status, body, ctype = await post(url, AddCheckpoint(0, (), note).encode())
        assert (status, body, ctype) == (409, f"{size}\n", "text/x.tlog.size")
        # grow the log; a wrong proof is 422, the right one 200
        await asyncio.to_thread(_grow, log, 20, 13)
        new_leaves = leaves_of(log)
        new_note = newest_note(log)
        good = merkle.consistency_proof(new_leaves, size)
        bad = [*good[:-1], hashlib.sha256(b"x").digest()]
        assert (await post(url, AddCheckpoint(size, tuple(bad), new_note).encode()))[0] == 422
        assert (await post(url, AddCheckpoint(size, tuple(good), new_note).encode()))[0] == 200
        # rollback: the older, validly signed checkpoint is refused whatever old size is claimed
        assert (await post(url, AddCheckpoint(len(new_leaves), (), note).encode()))[0] == 400
        status, body, _ = await post(url, AddCheckpoint(size, (), note).encode())
        assert (status, body) == (409, f"{len(new_leaves)}\n")
        # the monitoring endpoint serves the latest checkpoint with the log's and our signatures
        origin_hash = hashlib.sha256(log.keys.key_name.encode()).hexdigest()
        async with aiohttp.ClientSession() as s, s.get(f"{url}/{origin_hash}/checkpoint") as r:
            served = await r.text()
        assert r.status == 200 and served.startswith(split_note(new_note)[0])
        assert sum(cosig.matches(s) for s in split_note(served)[1]) == 1


def _resign_garbage(note: str) -> str:
    """The note with its log signature's bytes replaced: same name and key ID, signature fails."""
    text, sigs = split_note(note)
    (sig,) = sigs
    bad = bytes(b ^ 0xFF for b in sig.signature)
    return text + "\n— " + sig.name + " " + base64.b64encode(sig.key_id + bad).decode() + "\n"


def _grow(log: LogDir, start: int, n: int) -> None:
    async def go() -> None:
        async with await LogStore.open(log.data_dir, log.keys, CheckpointPolicy(1000, 3600)) as store:
            await store.append_events([make_event(i) for i in range(start, start + n)])
            await store.checkpoint()

    asyncio.run(go())


async def test_allow_list_refuses_other_clients(tmp_path: Path) -> None:
    """With allow_clients set, a client outside it gets 403 before anything is parsed."""
    log = create_log(tmp_path)
    config, _ = make_witness(tmp_path, [log], allow_clients=("10.9.8.0/24",))
    async with running(config) as url:
        status, body, _ = await post(url, AddCheckpoint(0, (), newest_note(log)).encode())
    assert status == 403 and "not allowed" in body


# -- durability ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def witness_process(config_file: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "witness", "serve", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + (proc.stderr.read() if proc.stderr else "")
        yield line.split("listening on ")[1].strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def test_restart_loses_nothing(tmp_path: Path) -> None:
    """The witness (a real `chatarchief witness serve` process) is killed with SIGKILL right after it
    answered; restarted, it still knows the size it cosigned (409 with that size for a stale request)."""
    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 30)
    config, _ = make_witness(tmp_path, [log])
    config_file = tmp_path / "witness.toml"
    port = free_port()
    config_file.write_text(
        f'key_file = "{config.key_file}"\nstate = "{config.state}"\nlisten = "127.0.0.1:{port}"\n'
        f'[[logs]]\norigin = "{log.keys.key_name}"\nvkeys = ["{log.keys.vkey()}"]\n'
    )
    note = newest_note(log)
    with witness_process(config_file) as url:
        status, _, _ = await post(url, AddCheckpoint(0, (), note).encode())
        assert status == 200
    with witness_process(config_file) as url:
        status, body, _ = await post(url, AddCheckpoint(0, (), note).encode())
    assert (status, body) == (409, "32\n")


# -- a witness down ------------------------------------------------------------------------------------------


async def test_witness_down_for_an_hour_then_caught_up_with_one_proof(tmp_path: Path) -> None:
    """While the witness is down the log keeps growing and signing (capture never waits); the client warns
    and backs off (at most `retry_max` between tries over a simulated hour); back up, one request with one
    proof from the size it last cosigned brings it to the newest checkpoint."""
    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 10)
    config, key = make_witness(tmp_path, [log])
    clock = [1000.0]
    async with running(config) as url:
        w = witnessing(log, url, key.verifier, clock)
        assert (await sync(w)).startswith("cosigned 12")
    # down: nothing listens at url any more
    tries = 0
    for step in range(360):  # an hour in 10 s steps; the log grows and is signed every 5 minutes
        if step % 30 == 0:
            await asyncio.to_thread(_grow, log, 10 + step, 3)
        clock[0] += 10
        outcome = await sync(w)
        tries += outcome != "waiting to retry"
        assert not outcome.startswith("cosigned")
    assert 55 <= tries < 100  # backed off to one try a minute (retry_max), but kept trying
    assert w.targets[0].delay == 60.0
    size = 12 + 12 * 3
    assert newest_note(log).split("\n")[1] == str(size)
    async with running(config) as url2:
        w.targets[0].url = url2
        clock[0] += 61
        assert await sync(w) == f"cosigned {size} (proof from 12)"
    code, out = await asyncio.to_thread(verify_cli, log, key.verifier)
    assert code == 0, out


def test_witness_init_cli(tmp_path: Path) -> None:
    """`witness init` writes a 0600 key and KEY.pub, prints the vkey, and never overwrites."""
    key_file = tmp_path / "w" / "witness.key"
    result = runner.invoke(app, ["witness", "init", "--name", "w.example.nl/1", "--key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    assert key_file.stat().st_mode & 0o777 == 0o600
    vkey = (tmp_path / "w" / "witness.key.pub").read_text().strip()
    assert vkey in result.output and parse_vkey(vkey).name == "w.example.nl/1"
    again = runner.invoke(app, ["witness", "init", "--name", "w.example.nl/1", "--key-file", str(key_file)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_verify_quorum_usage_errors(filled_log: LogDir) -> None:
    """--quorum above the number of keys, or a log key given as a witness key: exit 2."""
    w = CosignerKey.generate("w.example/1").verifier
    r = runner.invoke(app, ["verify", "--data-dir", str(filled_log.data_dir), "--witness-key", w.vkey, "--quorum", "2"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["verify", "--data-dir", str(filled_log.data_dir), "--witness-key", filled_log.keys.vkey()])
    assert r.exit_code == 2 and "0x04" in r.output
    r = runner.invoke(app, ["verify", "--data-dir", str(filled_log.data_dir), "--witness-key", w.vkey])
    assert r.exit_code == 1 and "0 valid witness cosignature" in r.output


async def test_oversized_body_is_refused(tmp_path: Path) -> None:
    """A body over the limit is refused (413) without being parsed; the witness keeps serving."""
    log = create_log(tmp_path)
    config, _ = make_witness(tmp_path, [log])
    async with running(config) as url:
        status, _, _ = await post(url, b"old 0\n\n" + b"x" * (300 * 1024))
        assert status == 413
        assert (await post(url, AddCheckpoint(0, (), newest_note(log)).encode()))[0] == 200


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_and_prefix(tmp_path: Path) -> None:
    """With tls_cert/tls_key and a prefix, add-checkpoint is served over HTTPS under the prefix; the client
    (trusting that certificate) gets a cosignature; plain HTTP to the port fails."""
    import ssl

    log = create_log(tmp_path)
    cert, key_pem = _self_signed(tmp_path)
    config, key = make_witness(tmp_path, [log], tls_cert=cert, tls_key=key_pem, prefix="/w")
    async with running(config) as url:
        https = url.replace("http://", "https://") + "/w"
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.post(https + "/add-checkpoint", data=AddCheckpoint(0, (), newest_note(log)).encode()) as r:
                body = await r.text()
                assert r.status == 200
            assert key.verifier.matches(split_note(newest_note(log) + body)[1][-1])
        with pytest.raises(aiohttp.ClientError):
            await post(url + "/w", AddCheckpoint(0, (), newest_note(log)).encode())


async def test_client_relearns_the_witness_size_after_losing_its_store(tmp_path: Path) -> None:
    """The data dir's cosignature store is lost (restored from an old backup): the client starts from 0, the
    witness answers 409 with its size, and the client catches up with one proof from that size."""
    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 10)
    config, key = make_witness(tmp_path, [log])
    async with running(config) as url:
        w = witnessing(log, url, key.verifier)
        assert (await sync(w)).startswith("cosigned 12")
        w.store.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(str(log.data_dir / "cosignatures.sqlite3") + suffix)
        await asyncio.to_thread(_grow, log, 10, 5)
        assert await sync(witnessing(log, url, key.verifier)) == "cosigned 17 (proof from 12)"


async def test_a_lying_witness_is_never_stored(tmp_path: Path) -> None:
    """A 'witness' that answers 200 with a cosignature by another key, or over another checkpoint, gets
    nothing stored and is reported as refusing; verify --quorum then fails."""
    from aiohttp import web

    log = create_log(tmp_path)
    await asyncio.to_thread(fill_log, log, 10)
    pinned = CosignerKey.generate("liar.example/w")
    impostor = CosignerKey.generate("liar.example/w")  # same name, other key
    other_text = split_note(newest_note(log))[0].replace("\n12\n", "\n13\n")
    answers = [
        impostor.cosign(split_note(newest_note(log))[0], int(time.time())).line + "\n",
        pinned.cosign(other_text, int(time.time())).line + "\n",
    ]

    async def lie(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=answers.pop(0))

    app_ = web.Application()
    app_.router.add_post("/add-checkpoint", lie)
    runner_ = web.AppRunner(app_)
    await runner_.setup()
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner_.addresses[0][1]}"
        w = witnessing(log, url, pinned.verifier)
        assert "no valid cosignature" in await sync(w)
        w.targets[0].next_try = 0
        assert "no valid cosignature" in await sync(w)
        assert w.store.signatures_for(split_note(newest_note(log))[0]) == []
    finally:
        await runner_.cleanup()
    code, _ = await asyncio.to_thread(verify_cli, log, pinned.verifier)
    assert code == 1


def test_verify_json_names_the_witness_check(filled_log: LogDir) -> None:
    """`verify --json` with too few cosignatures prints the failure with check 'witness' and the size."""
    import json

    w = CosignerKey.generate("w.example/1").verifier
    r = runner.invoke(app, ["verify", "--data-dir", str(filled_log.data_dir), "--witness-key", w.vkey, "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout.splitlines()[0])
    assert doc["check"] == "witness" and doc["seq"] == 52 and (doc["expected"], doc["found"]) == ("1", "0")
