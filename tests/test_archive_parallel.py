"""Rendering in worker processes and the one-parse dossier reader give the same package, byte for byte.

`render_package` renders dossiers in a process pool for large packages (`render.POOL_MIN_BYTES`); the pool
is forced here on a small package so both paths run. The attack: an altered transcript (manifests recomputed,
as a careful insider would) must be caught by verify-package whichever way it renders.
"""

from __future__ import annotations

import dataclasses
import posixpath
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.archive import render
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import PackageIntegrityError, verify_package
from bridge.log import keys as keyfile
from tests.conftest import LogDir
from tests.support import processes
from tests.support.archive_log import OPTIONS, create_archive_log, dossier_dir, january_february, seal_for
from tests.test_archive_verify import rebag


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    made = create_archive_log(tmp_path)
    january_february(made, monkeypatch)
    monkeypatch.undo()
    return made


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _public(log: LogDir) -> tuple[str, object]:
    return keyfile.load_public(keyfile.public_path(log.key_file))


def test_worker_processes_and_streamed_lines_give_the_same_package(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """January (two dossiers, media, a withheld message, an edit): inline, 2 worker processes, and with every
    dossier streamed instead of held give identical files; each verifies with 1 and 2 processes."""
    inline = snapshot(
        log.data_dir, log.keys, Month(2024, 1), tmp_path / "inline", OPTIONS, seal=seal_for(log), workers=1
    )
    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0)
    pooled = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "pool", OPTIONS, seal=seal_for(log), workers=2)
    monkeypatch.setattr(render, "LINE_CACHE_BYTES", 0)
    streamed = snapshot(
        log.data_dir, log.keys, Month(2024, 1), tmp_path / "stream", OPTIONS, seal=seal_for(log), workers=1
    )
    want = _files(inline.path)
    assert len([n for n in want if n.endswith("transcript.html")]) == 2
    assert _files(pooled.path) == want
    assert _files(streamed.path) == want
    for workers in (1, 2):
        report = verify_package(pooled.path, _public(log), workers=workers)  # type: ignore[arg-type]
        assert (report.start, report.end) == (inline.start, inline.end)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_altered_transcript_is_caught_by_pooled_verification(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0)
    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    forged = tmp_path / "forged"
    shutil.copytree(pkg, forged)
    t = dossier_dir(forged, "alpha") / "transcript.html"
    text = t.read_text()
    assert "Goedemorgen" in text
    t.write_text(text.replace("Goedemorgen", "Goedenavond"))
    rebag(forged)
    with pytest.raises(PackageIntegrityError, match=r"transcript\.html is not the file its records give"):
        verify_package(forged, _public(log), workers=workers)  # type: ignore[arg-type]


_PART = st.text(alphabet="ab.-_", min_size=1, max_size=3)


@given(st.lists(_PART, min_size=1, max_size=4), st.lists(_PART, min_size=1, max_size=4))
def test_relative_link_is_posix_relpath(target: list[str], start: list[str]) -> None:
    """The links between dossiers skip relpath's filesystem calls, never its answer."""
    t, s = "/".join(target), "/".join(start)
    assert render.relative_link(t, s) == posixpath.relpath(t, s)


def test_publish_fsyncs_every_file_once_and_every_folder(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability before the package appears: each file of the bag is fsynced exactly once (several at a time),
    and each folder after its files."""
    from bridge.archive import bag

    synced: list[str] = []
    folders: list[Path] = []
    real_file, real_dir = bag._fsync_file, bag.fsync_dir

    def spy_file(path: str) -> None:
        synced.append(path)
        real_file(path)

    def spy_dir(path: Path) -> None:
        folders.append(path)
        real_dir(path)

    monkeypatch.setattr(bag, "_fsync_file", spy_file)
    monkeypatch.setattr(bag, "fsync_dir", spy_dir)
    out = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    temp_root = folders[0]  # os.walk gives the bag's root first
    assert sorted(Path(p).relative_to(temp_root).as_posix() for p in synced) == files
    assert len(synced) == len(set(synced))
    dirs = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()} | {"."}
    assert {Path(d).relative_to(temp_root).as_posix() for d in folders[: len(dirs)]} == dirs


@pytest.mark.parametrize(("cpus", "workers"), [(2, 1), (1, 1), (8, 7)])
def test_the_monthly_job_inside_run_leaves_one_cpu_to_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    from bridge import scheduler
    from bridge.scheduler import ArchiveJobs

    seen: list[object] = []
    monkeypatch.setattr(scheduler, "default_workers", lambda: cpus)
    monkeypatch.setattr(scheduler, "snapshot", lambda *a, **kw: seen.append(kw.get("workers")))
    jobs = ArchiveJobs(tmp_path, None, tmp_path, OPTIONS)  # type: ignore[arg-type]
    jobs._snapshot(Month(2024, 1), tmp_path / "out")
    assert seen == [workers]


def test_a_failing_rendering_process_is_a_clear_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper whose dossier cannot be rendered (its events.jsonl is gone) exits non-zero; the caller raises one
    line naming it. This process's own share is stubbed (the helper, a fresh interpreter, runs the real code)."""
    from bridge.archive import derive, mdto
    from bridge.archive.transcript import Provenance

    params = derive.RenderParams(OPTIONS.organisation, "Europe/Amsterdam", "00" * 16, Month(2024, 1))
    serie = mdto.Ref("serie", "chatarchief:00", render.BRON)
    provenance = Provenance("key", 0, 2, 0, derive.STATUS_CLOSED)

    def job(conversation: str) -> render._Job:
        state = derive.new_dossier(params.serie, "matrix", conversation, f"{params.serie}/gone-{conversation[1:]}")
        bare = dataclasses.replace(state, sha=None)  # as render._job sends it: no hash object
        return render._Job(tmp_path, False, params, serie, bare, provenance, False, (), {})

    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(render, "_render_job", lambda j: (serie, derive.Coverage(), []))
    with pytest.raises(RuntimeError, match=r"a rendering process failed \(exit 1\): FileNotFoundError"):
        render.render_jobs([job("!a:x"), job("!b:x")], [1, 100], 2)


@pytest.mark.parametrize("used", [True, False])
def test_rendering_processes_started_ahead_are_used_and_always_end(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, used: bool
) -> None:
    """`snapshot` with 2 processes starts its rendering helper before the record pass (it imports meanwhile):
    the package is the inline one, no second helper is started for the render, and every helper started has
    ended when `snapshot` returns, whether the render used it or not."""
    from bridge.archive import scan

    inline = snapshot(
        log.data_dir, log.keys, Month(2024, 1), tmp_path / "inline", OPTIONS, seal=seal_for(log), workers=1
    )
    monkeypatch.setattr(scan, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0 if used else 1 << 40)
    started = processes.started(monkeypatch, "bridge.archive.render")
    pooled = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "pool", OPTIONS, seal=seal_for(log), workers=2)
    assert _files(pooled.path) == _files(inline.path)
    assert len(started) == 1
    assert all(proc.returncode is not None for proc in started)  # type: ignore[attr-defined]
    assert (started[0].returncode == 0) == used  # type: ignore[attr-defined]  (unused: killed, waiting on stdin)


def test_a_refused_snapshot_ends_the_rendering_processes_started_ahead(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record pass that fails (a tampered record) leaves no rendering helper behind."""
    from bridge.archive import scan
    from bridge.errors import LogIntegrityError
    from tests.support.pg import Attacker
    from tests.test_archive_scan import _flip

    conn = Attacker(log.data_dir)
    try:
        _flip(conn, 5, "body")
    finally:
        conn.close()
    monkeypatch.setattr(scan, "PARALLEL_MIN_RECORDS", 0)
    started = processes.started(monkeypatch, "bridge.archive.render")
    with pytest.raises(LogIntegrityError):
        snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "pool", OPTIONS, seal=seal_for(log), workers=2)
    assert len(started) == 1
    assert all(proc.returncode is not None for proc in started)  # type: ignore[attr-defined]


@pytest.mark.parametrize("refused", [False, True])
def test_verify_package_starts_its_rendering_process_ahead_and_always_ends_it(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    """verify-package over a package large enough for its dossier workers starts its rendering helper with them
    (it imports while the first checks run): the render uses it (no second one is started), and it has ended
    when verify-package returns or refuses the package."""
    from bridge.archive import verify_package as vp

    pkg = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    if refused:
        t = dossier_dir(pkg, "alpha") / "transcript.html"
        t.write_text(t.read_text().replace("Goedemorgen", "Goedenavond"))
        rebag(pkg)
    monkeypatch.setattr(vp, "SCAN_MIN_BYTES", 0)
    monkeypatch.setattr(render, "POOL_MIN_BYTES", 0)
    started = processes.started(monkeypatch, "bridge.archive.render")
    at_render: list[int] = []
    real_render = vp.render_package

    def spy(*args: object, **kwargs: object) -> object:
        at_render.append(len(started))
        return real_render(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vp, "render_package", spy)
    if refused:
        with pytest.raises(PackageIntegrityError, match=r"transcript\.html is not the file its records give"):
            verify_package(pkg, _public(log), workers=2)  # type: ignore[arg-type]
    else:
        verify_package(pkg, _public(log), workers=2)  # type: ignore[arg-type]
    assert at_render == [1]  # started before the render began
    assert len(started) == 1
    assert all(proc.returncode is not None for proc in started)  # type: ignore[attr-defined]
    if not refused:
        assert started[0].returncode == 0  # type: ignore[attr-defined]  (it rendered: ended by itself)


def test_rendered_files_are_fsynced_while_the_package_is_made(
    log: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each transcript and its dossier's MDTO files are handed to the early fsyncs as soon as they are rendered,
    before the pakbon is written and the bag published (each file is still fsynced once: the test above)."""
    from bridge.archive import bag

    events: list[str] = []
    real_early, real_publish, real_pakbon = bag.BagBuilder.sync_early, bag.BagBuilder.publish, render.mdto.write_pakbon

    def spy_early(self: bag.BagBuilder, rels: object) -> None:
        got = list(rels)  # type: ignore[call-overload]
        events.extend(got)
        real_early(self, got)

    def spy_publish(self: bag.BagBuilder) -> bool:
        events.append("publish")
        return real_publish(self)

    def spy_pakbon(*args: object) -> None:
        events.append("pakbon")
        real_pakbon(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bag.BagBuilder, "sync_early", spy_early)
    monkeypatch.setattr(bag.BagBuilder, "publish", spy_publish)
    monkeypatch.setattr(render.mdto, "write_pakbon", spy_pakbon)
    out = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log)).path
    before = events[: events.index("pakbon")]
    rendered = sorted(
        p.relative_to(out / "data").as_posix()
        for p in (out / "data").rglob("*")
        if p.name == "transcript.html" or (p.name.endswith(".MDTO.xml") and p.parent != out / "data")
    )
    assert rendered and sorted(r for r in before if r in rendered) == rendered
