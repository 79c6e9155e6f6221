"""The monthly package writer (bridge.archive.package): layout, validity, determinism, atomicity."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import bagit
import pytest
import xmlschema

from bridge.archive import mdto
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.errors import UsageError
from bridge.log.verify import verify_log
from tests.conftest import LogDir
from tests.support.archive_log import (
    OPTIONS,
    ROOM_A,
    append,
    create_archive_log,
    dossier_dir,
    event,
    january_february,
    ms,
    seal_for,
)

#: The shipped copy of the Nationaal Archief's XSD (its hash is pinned in test_archive_mdto.py).
XSD = resources.files("bridge.archive").joinpath("schema/MDTO-XML1.0.1.xsd")


@pytest.fixture
def two_months(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    log = create_archive_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    return log


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_package_is_a_valid_bag_with_mdto_that_the_xsd_accepts(two_months: LogDir, tmp_path: Path) -> None:
    """bagit-python validates the bag; the Nationaal Archief XSD, read by an independent validator (xmlschema),
    accepts every MDTO file."""
    out = tmp_path / "jan"
    result = snapshot(two_months.data_dir, two_months.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(two_months))
    # 2 KEY records (the log's creation), 9 events, the image's BLOB record, the decision
    assert (result.start, result.end, result.written) == (0, 13, True)
    bagit.Bag(str(out)).validate()
    with resources.as_file(XSD) as xsd:
        schema = xmlschema.XMLSchema(str(xsd))
    mdto_files = sorted((out / "data").rglob("*.MDTO.xml"))
    assert len(mdto_files) == 1 + 2 + 2 * 2 + 1  # serie, 2 dossiers, events+transcript per dossier, 1 image
    for p in mdto_files:
        mdto.validate(p.read_bytes())
        schema.validate(str(p))
    assert all(t.is_file() for t in result.transcripts)


def test_package_holds_every_record_of_the_month_and_withholds_content(two_months: LogDir, tmp_path: Path) -> None:
    """Every version, the deleted original and the image are kept; the withheld message is a tombstone only."""
    out = tmp_path / "jan"
    snapshot(two_months.data_dir, two_months.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(two_months))
    text = b"".join(p.read_bytes() for p in (out / "data").rglob("*") if p.is_file())
    for kept in (b"concept kamerbrief v2", b'concept kamerbrief"', b"Goedemorgen", b"Crisisoverleg"):
        assert kept in text
    assert b"verjaardag" not in text
    alpha = dossier_dir(out, "alpha") / "events.jsonl"
    assert len(alpha.read_text().splitlines()) == 7
    transcript = (alpha.parent / "transcript.html").read_text()
    assert "<script>alert" not in transcript and "&lt;script&gt;" in transcript
    assert "media/8-" in transcript and list((alpha.parent / "media").iterdir())


def test_same_log_gives_byte_identical_packages(two_months: LogDir, tmp_path: Path) -> None:
    """Determinism: two snapshots of the same month (different paths) have the same bytes in every file."""
    a = snapshot(
        two_months.data_dir, two_months.keys, Month(2024, 2), tmp_path / "a", OPTIONS, seal=seal_for(two_months)
    )
    b = snapshot(
        two_months.data_dir, two_months.keys, Month(2024, 2), tmp_path / "b", OPTIONS, seal=seal_for(two_months)
    )
    assert _files(a.path) == _files(b.path)
    assert (a.path / "bag-info.txt").read_text().count(f"Bagging-Date: {sealed_day(a.path)}") == 1


def sealed_day(package: Path) -> str:
    """The day (Amsterdam) of the package's newest checkpoint: its Bagging-Date."""
    from bridge.archive.derive import local_date
    from bridge.log import checkpoint

    names = ["checkpoint-close.txt", "checkpoint-end.txt"]
    note = next((package / "data/proof" / n).read_text() for n in names if (package / "data/proof" / n).exists())
    ms = checkpoint.parse_checkpoint_body(checkpoint.open_note(note)[0]).timestamp_ms
    assert ms is not None
    return local_date(ms, "Europe/Amsterdam").isoformat()


def test_rerun_is_idempotent_and_a_different_package_is_never_overwritten(two_months: LogDir, tmp_path: Path) -> None:
    """Same bytes at --out: success without writing; anything else there: refused, left untouched."""
    out = tmp_path / "jan"
    snapshot(two_months.data_dir, two_months.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(two_months))
    again = snapshot(two_months.data_dir, two_months.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(two_months))
    assert not again.written
    with pytest.raises(UsageError, match="different package"):
        snapshot(two_months.data_dir, two_months.keys, Month(2024, 2), out, OPTIONS, seal=seal_for(two_months))
    assert "Chatarchief-Month: 2024-01" in (out / "bag-info.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_a_crash_leaves_no_half_package(two_months: LogDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves nothing under the final name (and the temp dir is removed)."""
    import bridge.archive.package as package

    def boom(*args: object, **kwargs: object) -> list[str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "render_package", boom)
    with pytest.raises(OSError):
        snapshot(
            two_months.data_dir, two_months.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(two_months)
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "data", tmp_path / "keys"]


def test_snapshot_signs_and_stores_prefix_checkpoints_the_log_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month is closed by a checkpoint at exactly its end, signed when missing, stored; `verify` accepts it."""
    log = create_archive_log(tmp_path)
    append(log, monkeypatch, [(ms(2024, 1, 3), [event(1), event(2)]), (ms(2024, 2, 3), [event(3), event(4)])])
    monkeypatch.undo()
    assert verify_log(log.data_dir, log.keys).checkpoints == 2  # at 2 (creation) and 6 only
    result = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    assert (result.start, result.end) == (0, 4)
    assert verify_log(log.data_dir, log.keys).checkpoints == 3
    assert (tmp_path / "jan/data/proof/checkpoint-end.txt").read_text().split("\n")[1] == "4"
    feb = snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "feb", OPTIONS, seal=seal_for(log))
    assert (tmp_path / "feb/data/proof/checkpoint-start.txt").read_bytes() == (
        tmp_path / "jan/data/proof/checkpoint-end.txt"
    ).read_bytes()
    assert (feb.start, feb.end) == (4, 6)


def test_refuses_a_month_that_has_not_ended(two_months: LogDir, tmp_path: Path) -> None:
    """The current month cannot be sealed; allow_open_month writes an interim package of the range so far."""
    from datetime import date

    today = date.today()
    with pytest.raises(UsageError, match="has not ended"):
        snapshot(
            two_months.data_dir,
            two_months.keys,
            Month(today.year, today.month),
            tmp_path / "now",
            OPTIONS,
            seal=seal_for(two_months),
        )
    result = snapshot(
        two_months.data_dir,
        two_months.keys,
        Month(today.year, today.month),
        tmp_path / "now",
        OPTIONS,
        allow_open_month=True,
    )
    assert result.status == "open month, interim" and result.start == result.end == 23
    assert "Chatarchief-Status: open month, interim" in (result.path / "bag-info.txt").read_text()


def test_refuses_a_month_whose_end_is_not_sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of the month after the last checkpoint (a crash tail) must be sealed before the month is packaged."""
    log = create_archive_log(tmp_path)
    append(log, monkeypatch, [(ms(2024, 1, 3), [event(1)])], seal=True)
    append(log, monkeypatch, [(ms(2024, 1, 9), [event(2, room=ROOM_A)])], seal=False)
    monkeypatch.undo()
    with pytest.raises(UsageError, match="sealed only up to"):
        snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    assert not (tmp_path / "jan").exists()


def test_empty_month_and_many_conversations_with_few_open_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month without records is an empty, valid package; 150 conversations work with a 4 KiB spill buffer."""
    import bridge.archive.package as package

    log = create_archive_log(tmp_path)
    events = [event(i, room=f"!room{i % 150}:example.org") for i in range(600)]
    append(log, monkeypatch, [(ms(2024, 3, 2), events[:300]), (ms(2024, 3, 30), events[300:])])
    monkeypatch.undo()
    monkeypatch.setattr(package, "SPILL_BYTES", 4096)
    empty = snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "feb", OPTIONS, seal=seal_for(log))
    assert (empty.start, empty.end) == (2, 2)  # after the 2 KEY records of January
    bagit.Bag(str(empty.path)).validate()
    full = snapshot(log.data_dir, log.keys, Month(2024, 3), tmp_path / "mar", OPTIONS, seal=seal_for(log))
    assert len(full.transcripts) == 150
    assert sum(len(p.read_text().splitlines()) for p in (full.path / "data").rglob("events.jsonl")) == 600
    assert os.path.exists(full.path / "data" / "proof" / "leaves.txt")


def test_interim_package_of_the_current_month_for_the_demo(tmp_path: Path) -> None:
    """interim_package writes the range so far, closed by a fresh checkpoint, and returns its transcripts."""
    from bridge.archive.package import interim_package
    from bridge.archive.verify_package import verify_package
    from tests.conftest import create_log, fill_log

    log = create_log(tmp_path)  # created now: its 2 KEY records open the current month
    fill_log(log, 12)  # appended now: the current month
    result = interim_package(log.data_dir, log.keys, OPTIONS, tmp_path / "archive", seal_for(log))
    assert result.path.name.endswith("-interim") and (result.start, result.end) == (0, 14)
    assert [p.name for p in result.transcripts] == ["transcript.html"]
    verify_package(result.path, (log.keys.key_name, log.keys.public_key))
