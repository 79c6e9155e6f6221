"""Packages with clear records, decisions from earlier months, missing media; temp dirs; the line cap.

Clear records (KEY, BLOB) are appended here by a test writer with direct database access, in exactly
the stored format `bridge.log.format` documents (`body` = salt || payload, commitment = SHA-256(body),
zero conversation tag and nonce), until the log's writer appends them itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bridge.archive import proof
from bridge.archive.package import MissingMediaError, private_workdir, snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import MAX_LINE_BYTES, PackageIntegrityError, iter_lines, verify_package
from bridge.blobs import BlobStore
from bridge.cli import app
from bridge.events import Attachment, Kind
from bridge.log import clear
from bridge.log import keys as keyfile
from bridge.log import store as store_module
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.withhold import withhold
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, PNG, create_archive_log, event, ms, seal_for
from tests.support.figures import record
from tests.test_archive_forgery import rebag

runner = CliRunner()


def verify_cli(log: LogDir, path: Path) -> tuple[int, str]:
    pub = keyfile.public_path(log.key_file)
    result = runner.invoke(app, ["verify-package", str(path), "--public-key", str(pub)])
    return result.exit_code, " ".join(result.output.split())


def test_clear_records_are_carried_and_recomputed_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's KEY records (seq 0, 1) and the BLOB record of an image go to proof/other-records.jsonl with
    their payload; verify-package recomputes their leaves (commitment = SHA-256(salt || payload) = ciphertext
    hash) without any key, and an altered wrapped key is caught."""
    log = _month_with_image(tmp_path, monkeypatch)
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    lines = [orjson.loads(x) for x in (pkg / "data/proof/other-records.jsonl").read_bytes().splitlines()]
    assert [sorted(d) for d in lines] == [
        ["ciphertext_sha256", "header", "key", "salt", "seq"],
        ["ciphertext_sha256", "header", "key", "salt", "seq"],
        ["blob", "ciphertext_sha256", "header", "salt", "seq"],
    ]
    assert [d["seq"] for d in lines[:2]] == [0, 1] and [d["key"]["purpose"] for d in lines[:2]] == ["index", "data"]
    blob = clear.parse_blob(proof.canonical_json(lines[2]["blob"]))
    assert (log.data_dir / "blobs" / blob.blob_id[:2] / blob.blob_id).stat().st_size == blob.size
    code, out = verify_cli(log, pkg)
    assert code == 0, out
    other = pkg / "data/proof/other-records.jsonl"
    wrapped = lines[1]["key"]["wrapped"]
    forged = ("B" if wrapped[0] == "A" else "A") + wrapped[1:]
    other.write_bytes(other.read_bytes().replace(wrapped.encode(), forged.encode()))
    rebag(pkg)
    code, out = verify_cli(log, pkg)
    assert code == 1 and "other-records.jsonl line 2" in out and "record 1" in out, out


def test_a_decision_from_an_earlier_month_is_carried_with_its_inclusion_proof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A January withhold hides February's edit of that message: the February package carries the decision
    in proof/decisions-before.jsonl with an RFC 9162 inclusion proof; without it the tombstone is refused."""
    log = create_archive_log(tmp_path)

    async def go() -> None:
        async with await LogStore.open(log.data_dir, log.keys, CheckpointPolicy(5, 10**9)) as store:
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 5))
            await store.append_events([event(n) for n in range(1, 6)])
            await withhold(store, "$e3", "privé", "I. Specialist", data_dir=log.data_dir, clock=lambda: ms(2024, 1, 6))
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 2, 3))
            await store.append_events([event(6, kind=Kind.EDIT, relates_to="$e3", body="geheim v2"), event(7)])
            await store.checkpoint()

    asyncio.run(go())
    monkeypatch.undo()
    jan = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    feb = snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "feb", OPTIONS, seal=seal_for(log)).path
    assert b"geheim" not in b"".join(p.read_bytes() for p in feb.rglob("*") if p.is_file())
    carried = (feb / "data/proof/decisions-before.jsonl").read_bytes().splitlines()
    decision_seq = orjson.loads(carried[0])["seq"]
    assert len(carried) == 1 and orjson.loads(carried[0])["decision"]["target"]["event_id"] == "$e3"
    assert verify_cli(log, feb)[0] == 0
    pub = keyfile.load_public(keyfile.public_path(log.key_file))
    verify_package(feb, pub, previous=jan)
    (feb / "data/proof/decisions-before.jsonl").write_bytes(b"")
    rebag(feb)
    code, out = verify_cli(log, feb)
    assert code == 1 and f"withheld by decision {decision_seq}, which the package does not hold" in out, out


def _month_with_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    log = create_archive_log(tmp_path)

    async def go() -> None:
        monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 5))
        async with await LogStore.open(log.data_dir, log.keys, CheckpointPolicy(50, 10**9)) as store:
            blobs = BlobStore(log.data_dir / "blobs", store.media_keys())
            blob_id, sha = await blobs.put(PNG, "image/png")
            img = Attachment("stored", "image/png", "foto.png", len(PNG), sha, blob_id)
            await store.append_events([event(1), event(2, kind=Kind.ATTACHMENT, attachments=(img,), content={})])
            monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 2, 5))
            await store.append_events([event(3)])
            await store.checkpoint()

    asyncio.run(go())
    monkeypatch.undo()
    return log


def test_snapshot_refuses_a_missing_blob_unless_allowed_and_then_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs deleted: snapshot exits 1 naming record and blob; with --allow-missing-media the package lists the
    absence in proof/missing-media.jsonl and verifies; removing that notice is caught."""
    log = _month_with_image(tmp_path, monkeypatch)
    shutil.rmtree(log.data_dir / "blobs")
    with pytest.raises(MissingMediaError, match=r"of record \d+ is missing"):
        snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    assert not (tmp_path / "jan").exists()
    org = tmp_path / "org.toml"
    org.write_text('[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n')
    args = ["snapshot", "--config", str(org), "--data-dir", str(log.data_dir), "--key-file", str(log.key_file)]
    args += ["--month", "2024-01"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "jan")])
    assert refused.exit_code == 1 and not (tmp_path / "jan").exists()
    result = refused
    assert result.exit_code == 1 and "of record" in result.output and "--allow-missing-media" in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "jan"), "--allow-missing-media"])
    assert result.exit_code == 0, result.output
    notice = orjson.loads((tmp_path / "jan/data/proof/missing-media.jsonl").read_bytes())
    assert notice["path"].endswith(f"media/{notice['seq']}-foto.png")
    assert notice["blob_id"] in " ".join(refused.output.split()).replace(" ", "")
    code, out = verify_cli(log, tmp_path / "jan")
    assert code == 0, out
    (tmp_path / "jan/data/proof/missing-media.jsonl").write_bytes(b"")
    rebag(tmp_path / "jan")
    code, out = verify_cli(log, tmp_path / "jan")
    assert code == 1 and "nor listed in proof/missing-media.jsonl" in out, out


def test_plaintext_is_built_in_a_private_dir_of_the_data_dir_and_crash_leftovers_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp bag lives in <data_dir>/tmp (0700), never beside --out; a dead process's temp bag is removed
    at the next snapshot, a live one's is left alone."""
    log = _month_with_image(tmp_path, monkeypatch)
    work = private_workdir(log.data_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = work / f".jan.tmp-{int(dead.stdout)}-00000000"
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "transcript.html").write_text("bericht 1")
    live = work / f".jan.tmp-{os.getppid()}-00000000"
    live.mkdir()
    seen: list[Path] = []
    import bridge.archive.package as package

    real = package.render_package

    def spy(builder: package.BagBuilder, *args: object, **kwargs: object) -> list[str]:
        seen.append(builder.root)
        return real(builder, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(package, "render_package", spy)
    snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "out" / "jan", OPTIONS, seal=seal_for(log))
    assert seen[0].parent == work and (work.stat().st_mode & 0o777) == 0o700
    assert not stale.exists() and live.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["jan"]


def test_record_lines_are_read_with_a_cap() -> None:
    """iter_lines refuses a line over its limit without reading the rest of it."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lines-{os.getpid()}.jsonl"
    path.write_bytes(b"ok\n" + b"x" * 1000 + b"\nnever\n")
    try:
        got: list[bytes] = []
        with pytest.raises(PackageIntegrityError, match="line 2: longer than the limit of 100 bytes"):
            for _, line in iter_lines(path, "f", limit=100):
                got.append(line)
        assert got == [b"ok\n"]
    finally:
        path.unlink()


def test_a_400_mib_line_is_refused_with_flat_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package whose events.jsonl holds one 400 MiB line (sparse file, manifests rebuilt) exits 1 and the
    verifier's peak memory stays far below the line's size (measured in a child process)."""
    log = _month_with_image(tmp_path, monkeypatch)
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    events = next((pkg / "data").rglob("events.jsonl"))
    with events.open("r+b") as fh:
        fh.truncate(400 << 20)  # zeros after the real lines: one huge line
    rebag(pkg)
    pub = keyfile.public_path(log.key_file)
    code = (
        # VmHWM is this process's own peak (getrusage's ru_maxrss keeps the forking pytest's peak across exec)
        "import sys; from bridge.cli import main; sys.argv = ['chatarchief', 'verify-package', sys.argv[1],"
        " '--public-key', sys.argv[2]]\n"
        "def hwm():\n    for l in open('/proc/self/status'):\n        if l.startswith('VmHWM:'):\n"
        "            return int(l.split()[1])\n"
        "try:\n    main()\nexcept SystemExit as e:\n"
        "    print('RSS', hwm()); sys.exit(e.code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(pkg), str(pub)], capture_output=True, text=True, cwd=Path.cwd(), timeout=300
    )
    assert done.returncode == 1, done.stderr + done.stdout
    assert f"longer than the limit of {MAX_LINE_BYTES} bytes" in " ".join(done.stderr.split())
    peak_kib = int(done.stdout.split("RSS")[1])
    record("verify_package_400mib_line", peak_rss_kib=peak_kib, line_limit_bytes=MAX_LINE_BYTES)
    assert peak_kib < 300 * 1024, peak_kib  # well under the 400 MiB line (1.3 GB before the cap)
