"""`chatarchief demo` end to end: a real Synapse, the real capture pipeline, every kind captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.demo import MARKER, run_demo
from bridge.errors import UsageError
from bridge.events import Kind

pytestmark = pytest.mark.synapse


async def test_demo_captures_every_sent_event_and_verifies(tmp_path: Path) -> None:
    """Every event the demo officials send (text, reply, edit, reaction, file, message, deletion; two rooms)
    is in the log, files are stored in the blob store, encrypted-room events carry decryption evidence,
    and verify passes with no unsealed tail."""
    result = await run_demo(tmp_path / "demo")
    captured = {e.event_id: e for _, e in result.events}
    assert set(result.sent) <= set(captured)
    kinds = [captured[i].kind for i in result.sent]
    for kind in (Kind.MESSAGE, Kind.EDIT, Kind.REACTION, Kind.ATTACHMENT, Kind.DELETION):
        assert kinds.count(kind) >= 2, kind
    files = [captured[i] for i in result.sent if captured[i].kind is Kind.ATTACHMENT]
    assert all(f.attachments[0].status == "stored" and f.attachments[0].blob_id for f in files)
    assert sum("encryption" in captured[i].content for i in result.sent) == 5
    deleted = [captured[i].relates_to for i in result.sent if captured[i].kind is Kind.DELETION]
    assert all(d in captured and captured[d].content["body"] for d in deleted)  # originals kept
    assert result.report is not None and result.report.unsealed == 0
    # besides the events: the two KEY records of `init` and one BLOB record per stored file
    kinds = result.report.kinds
    assert kinds["key"] == 2 and kinds["blob"] == len({f.attachments[0].blob_id for f in files})
    assert result.report.records == len(result.events) + kinds["key"] + kinds["blob"]
    assert result.seconds < 60
    # The month so far is packaged, verified with the public key only, one transcript per room, plus the
    # bot's own liveness dossier (heartbeats, bridge.liveness).
    assert result.package is not None and result.package_report is not None
    assert result.package_report.end == result.report.records
    assert len(result.package.transcripts) == 3 and all(t.is_file() for t in result.package.transcripts)
    assert any(e.content.get("notice") == "heartbeat" for _, e in result.events)
    html = b"".join(t.read_bytes() for t in result.package.transcripts)
    assert b"Kun je de Kamerbrief" in html


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """The demo wipes only its own work dir (recognised by its marker file)."""
    from bridge.demo import prepare_workdir

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(UsageError):
        prepare_workdir(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").exists()
    prepare_workdir(tmp_path / "demo")
    (tmp_path / "demo" / "old").write_text("x")
    prepare_workdir(tmp_path / "demo")
    assert not (tmp_path / "demo" / "old").exists() and (tmp_path / "demo" / MARKER).exists()


def test_demo_command_prints_summary(tmp_path: Path) -> None:
    """The console command runs the demo, exits 0, prints the verify result and where the data lives."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify: intact" in proc.stdout and "Overleg Kamerbrief" in proc.stdout
    assert "verify-package: intact" in proc.stdout and "transcript.html" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "[green]" not in proc.stdout and "[/]" not in proc.stdout  # markup rendered, never printed raw
