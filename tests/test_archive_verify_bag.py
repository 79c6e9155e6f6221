"""verify-package hashes the bag on a thread beside the other checks: its verdict is still the first check's.

The bag's fixity (every file against its manifest) is check 1; the other checks need only the manifest, so
they run while the files are hashed. These tests pin what that must not change: a bag that is not intact is
reported as such whatever a later check finds, and sooner or later than it; a defect only the hashing finds is
never lost; an error on the hashing thread reaches the caller.
"""

from __future__ import annotations

import time
from pathlib import Path

import bagit
import pytest

from bridge.archive import verify_package
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.errors import Check
from bridge.log import keys as keyfile
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, archive_log_two_months, dossier_dir, seal_for
from tests.test_archive_verify import copy


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[LogDir, Path]:
    root = tmp_path_factory.mktemp("baglog")
    log = archive_log_two_months(root)
    jan = snapshot(log.data_dir, log.keys, Month(2024, 1), root / "jan", OPTIONS, seal=seal_for(log)).path
    return log, jan


def _verify(log: LogDir, pkg: Path) -> verify_package.PackageReport:
    return verify_package.verify_package(pkg, keyfile.load_public(keyfile.public_path(log.key_file)), workers=1)


def _slow_hashing(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The hashing ends only after `seconds` (as on a large package): the other checks are long done."""
    real = bagit.Bag.validate

    def slow(self: bagit.Bag, *args: object, **kwargs: object) -> object:
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bagit.Bag, "validate", slow)


@pytest.mark.parametrize("slow", [0.0, 0.5])
def test_a_stale_bag_is_reported_even_where_a_later_check_fails_first(
    made: tuple[LogDir, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: float
) -> None:
    """range.json edited and the bag left as it was: the range check would fail at once, the hashing later;
    the verdict is the bag's."""
    log, jan = made
    pkg = copy(jan, tmp_path)
    rng = pkg / "data" / "proof" / "range.json"
    rng.write_bytes(rng.read_bytes().replace(b'"month"', b'"mOnth"', 1))  # same size: Payload-Oxum holds
    _slow_hashing(monkeypatch, slow)
    with pytest.raises(verify_package.PackageIntegrityError) as found:
        _verify(log, pkg)
    assert found.value.check == Check.PACKAGE_FIXITY, str(found.value)
    assert "bag fixity" in str(found.value) and "range.json" in str(found.value)


def test_a_defect_only_the_hashing_finds_is_reported(
    made: tuple[LogDir, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transcript edited and the bag left as it was: re-deriving compares against the manifest (which still
    names the true bytes), so only the hashing sees it; the run must not end intact before the hashing does."""
    log, jan = made
    pkg = copy(jan, tmp_path)
    transcript = dossier_dir(pkg, "alpha") / "transcript.html"
    transcript.write_bytes(transcript.read_bytes().replace(b"<body", b"<BODY", 1))
    _slow_hashing(monkeypatch, 0.5)
    with pytest.raises(verify_package.PackageIntegrityError) as found:
        _verify(log, pkg)
    assert found.value.check == Check.PACKAGE_FIXITY and "transcript.html" in str(found.value)


def test_an_error_on_the_hashing_thread_reaches_the_caller(
    made: tuple[LogDir, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, jan = made
    pkg = copy(jan, tmp_path)
    assert _verify(log, pkg).end > 0  # intact

    def broken(self: bagit.Bag, *args: object, **kwargs: object) -> object:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(bagit.Bag, "validate", broken)
    with pytest.raises(RuntimeError, match="the disk went away"):
        _verify(log, pkg)
