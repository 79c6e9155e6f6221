"""An s3:// destination end to end: config, credentials, the monthly job in `run`, `snapshot --out s3://`,
`upload`, and the tar format; against moto's S3 server as a STAND-IN (tests/support/s3.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bridge import scheduler
from bridge.archive.derive import package_name
from bridge.archive.range import Month
from bridge.cli import app
from bridge.config import ArchiveSettings, S3Destination, load
from bridge.errors import ConfigError, KeyFileError
from bridge.scheduler import ArchiveJobs
from bridge.worm.bucket import Connection, Credentials, read_credentials
from bridge.worm.publish import WormDestination, WormOptions
from bridge.worm.serial import serialise, unpack
from tests.conftest import LogDir
from tests.support.archive_log import OPTIONS, create_archive_log, january_february, ms
from tests.support.s3 import CREDENTIALS, StandIn, start_stand_in

runner = CliRunner()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    yield from start_stand_in()


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogDir:
    log = create_archive_log(tmp_path)
    january_february(log, monkeypatch)
    monkeypatch.undo()
    return log


def worm(log: LogDir, conn: Connection) -> WormDestination:
    opts = WormOptions(conn, "packages", 7, attempts=2, backoff_seconds=0.01)
    return WormDestination(opts, log.data_dir, (log.keys.key_name, log.keys.public_key))


def keys_in(stand_in: StandIn, bucket: str) -> list[str]:
    async def go() -> list[str]:
        async with stand_in.client() as c:
            got = await c.list_object_versions(Bucket=bucket)
            return sorted(str(v["Key"]) for v in got.get("Versions", []))

    return asyncio.run(go())


# -- config and credentials --


def test_s3_destination_parses_and_needs_retention() -> None:
    """`s3://bucket/prefix` becomes an S3Destination (also from CHATARCHIEF_ARCHIVE__DESTINATION); a bad bucket
    name, or no retention_days, is refused; the s3 keys beside a folder serve `snapshot --out s3://` and `upload`."""
    a = ArchiveSettings(destination="s3://archief-bucket/min/bzk/", retention_days=3650)  # type: ignore[arg-type]
    assert a.destination == S3Destination(bucket="archief-bucket", prefix="min/bzk")
    assert isinstance(ArchiveSettings(destination="/srv/archive").destination, Path)  # type: ignore[arg-type]
    for bad, says in (
        ({"destination": "s3://Bad_Bucket/x", "retention_days": 1}, "does not name an S3 bucket"),
        ({"destination": "s3://bucket-a/x"}, "needs retention_days"),
        ({"destination": "ftp://host/x"}, "a folder or s3://"),
        ({"destination": "s3://bucket-a/x", "retention_days": 1, "object_lock_mode": "NONE"}, "object_lock_mode"),
    ):
        with pytest.raises(Exception, match=says):
            ArchiveSettings(**bad)  # type: ignore[arg-type]
    assert ArchiveSettings(destination="/srv/archive", retention_days=5).retention_days == 5  # type: ignore[arg-type]


def test_s3_destination_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment overrides the file's folder with a bucket, parsed the same way."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[archive]\ndestination = "/srv/archive"\nretention_days = 30\n')
    monkeypatch.setenv("CHATARCHIEF_ARCHIVE__DESTINATION", "s3://archief-bucket/bzk")
    assert load(cfg).archive.destination == S3Destination(bucket="archief-bucket", prefix="bzk")


def test_config_file_error_for_s3_is_one_line(tmp_path: Path) -> None:
    """Through `config.load`: a ConfigError naming the key and the example."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[archive]\ndestination = "s3://bucket-a/p"\n')
    with pytest.raises(ConfigError, match=r"retention_days") as caught:
        load(cfg)
    assert len(str(caught.value).splitlines()) == 1


def test_credentials_file_is_read_private_and_never_echoed(tmp_path: Path) -> None:
    """The AWS shared-credentials format; a group-readable file is refused; the secret is in no repr or error."""
    f = tmp_path / "s3.ini"
    f.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = very-secret-value\n")
    os.chmod(f, 0o600)
    creds = read_credentials(f)
    assert creds == Credentials("AKIDEXAMPLE", "very-secret-value")
    assert "very-secret-value" not in repr(creds)
    os.chmod(f, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_credentials(f)
    f.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\nsecret = very-secret-value\n")
    os.chmod(f, 0o600)
    with pytest.raises(ConfigError, match="needs aws_access_key_id and aws_secret_access_key") as caught:
        read_credentials(f)
    assert "very-secret-value" not in str(caught.value)


# -- the tar format --


names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12
)
trees = st.dictionaries(
    st.lists(names.filter(lambda n: n not in (".", "..")), min_size=1, max_size=3).map(tuple),
    st.binary(max_size=300),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_serialise_round_trips_and_is_deterministic(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[tuple[str, ...], bytes]
) -> None:
    """Any tree of files (any names, Dutch or not): unpack(serialise(bag)) gives the same files, and
    serialising twice gives the same bytes (the same month re-uploaded compares equal)."""
    root = tmp_path_factory.mktemp("tree")
    bag = root / "bag"
    written: dict[str, bytes] = {}
    for parts, data in tree.items():
        path = bag.joinpath(*parts)
        if any((bag.joinpath(*parts[:i])).is_file() for i in range(1, len(parts))) or path.is_dir():
            continue  # a file where a folder is wanted (or vice versa): not a tree
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written["/".join(parts)] = data
    a = serialise(bag, root / "a.tar")
    b = serialise(bag, root / "b.tar")
    assert (a.sha256, a.size) == (b.sha256, b.size)
    assert a.path.read_bytes() == b.path.read_bytes()
    out = unpack(a.path, root / "out", "bag")
    back = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert back == written


# -- the monthly job inside `run` --


def test_monthly_job_uploads_each_month_once(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catch-up with an s3:// destination: every ended month is uploaded and verified (receipts), the outbox
    is empty after, and a second run uploads nothing (a receipt marks a month done)."""
    monkeypatch.setattr(scheduler, "now_ms", lambda: ms(2024, 3, 10))
    bucket = stand_in.make_bucket()
    dest = worm(log_dir, stand_in.connection(bucket))
    jobs = ArchiveJobs(log_dir.data_dir, log_dir.keys, log_dir.data_dir / "outbox", OPTIONS, worm=dest)
    written = asyncio.run(jobs.catch_up())
    assert [r.month for r in written] == ["2024-01", "2024-02"]
    assert jobs.failed == [] and jobs.last_month == Month(2024, 2)
    names = [package_name(log_dir.keys.log_id, Month(2024, m)) for m in (1, 2)]
    assert keys_in(stand_in, bucket) == [f"packages/{n}.tar" for n in names]
    assert all(dest.done(n) for n in names)
    assert list((log_dir.data_dir / "outbox").iterdir()) == []
    assert asyncio.run(jobs.catch_up()) == []
    assert len(keys_in(stand_in, bucket)) == 2


def test_monthly_job_alerts_keeps_the_package_and_uploads_it_later(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store unreachable: an ALERT per month, the packages stay in the outbox; when it is back, the next
    run uploads those very packages (not rebuilt) and nothing is lost."""
    monkeypatch.setattr(scheduler, "now_ms", lambda: ms(2024, 2, 10))
    gone = Connection("worm-gone", "http://127.0.0.1:9", "us-east-1", CREDENTIALS)
    jobs = ArchiveJobs(log_dir.data_dir, log_dir.keys, log_dir.data_dir / "outbox", OPTIONS, worm=worm(log_dir, gone))
    with caplog.at_level(logging.ERROR, logger="bridge.scheduler"):
        asyncio.run(jobs.catch_up())
    assert jobs.failed == ["2024-01"]
    assert any("ALERT monthly package not uploaded" in r.getMessage() for r in caplog.records)
    staged = log_dir.data_dir / "outbox" / package_name(log_dir.keys.log_id, Month(2024, 1))
    stamp = (staged / "bag-info.txt").stat().st_mtime_ns
    bucket = stand_in.make_bucket()
    back = ArchiveJobs(
        log_dir.data_dir,
        log_dir.keys,
        log_dir.data_dir / "outbox",
        OPTIONS,
        worm=worm(log_dir, stand_in.connection(bucket)),
    )
    seen: list[int] = []
    real = WormDestination.publish

    async def spy(self: WormDestination, package: Path) -> object:
        seen.append((package / "bag-info.txt").stat().st_mtime_ns)
        return await real(self, package)

    monkeypatch.setattr(WormDestination, "publish", spy)
    assert asyncio.run(back.catch_up()) == []  # nothing rebuilt
    assert seen == [stamp] and back.failed == [] and not staged.exists()
    assert keys_in(stand_in, bucket) == [f"packages/{staged.name}.tar"]


# -- the command line --


def cli_config(tmp_path: Path, log: LogDir, stand_in: StandIn, *, creds_mode: int = 0o600) -> Path:
    creds = tmp_path / "s3-credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {CREDENTIALS.access_key_id}\n"
        f"aws_secret_access_key = {CREDENTIALS.secret_access_key}\n"
    )
    os.chmod(creds, creds_mode)
    cfg = tmp_path / "chatarchief.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{log.data_dir}"\nkey_file = "{log.key_file}"\n\n'
        f'[archive]\ndestination = "s3://placeholder-bucket/x"\ns3_endpoint = "{stand_in.endpoint}"\n'
        f'retention_days = 10\ns3_credentials_file = "{creds}"\n\n'
        '[organisation]\nname = "Ministerie van Tests"\narchive_creator_id = "https://organisaties.overheid.nl/1/Test"\n'
    )
    return cfg


def test_snapshot_out_s3_uploads_and_verifies(log_dir: LogDir, stand_in: StandIn, tmp_path: Path) -> None:
    """`snapshot --out s3://bucket/prefix`: written to the outbox, uploaded under lock, read back, verified,
    the local copy removed; run again it reports the package already there (identical)."""
    bucket = stand_in.make_bucket()
    cfg = cli_config(tmp_path, log_dir, stand_in)
    args = ["snapshot", "--config", str(cfg), "--month", "2024-01", "--out", f"s3://{bucket}/ministerie"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"uploaded: s3://{bucket}/ministerie/" in first.output and "COMPLIANCE lock until" in first.output
    assert CREDENTIALS.secret_access_key not in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already in the bucket (identical)" in again.output
    assert len(keys_in(stand_in, bucket)) == 1


def test_snapshot_to_a_bucket_without_lock_is_exit_2_one_line(
    log_dir: LogDir, stand_in: StandIn, tmp_path: Path
) -> None:
    """No object lock on the bucket: exit 2, one line naming the problem, no traceback, the package kept."""
    bucket = stand_in.make_bucket(object_lock=False)
    cfg = cli_config(tmp_path, log_dir, stand_in)
    result = runner.invoke(app, ["snapshot", "--config", str(cfg), "--month", "2024-01", "--out", f"s3://{bucket}/p"])
    assert result.exit_code == 2, result.output
    assert "has no object lock" in result.output and "Traceback" not in result.output
    assert (log_dir.data_dir / "outbox" / package_name(log_dir.keys.log_id, Month(2024, 1)) / "bag-info.txt").is_file()
    for bad in ("ftp://host/x", "s3://No_Such/x"):
        result = runner.invoke(app, ["snapshot", "--config", str(cfg), "--month", "2024-01", "--out", bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_upload_command_keeps_the_given_package(log_dir: LogDir, stand_in: StandIn, tmp_path: Path) -> None:
    """`upload PACKAGE s3://...` for a package written to a folder earlier: uploaded and verified, kept;
    a group-readable credentials file is exit 2."""
    cfg = cli_config(tmp_path, log_dir, stand_in)
    package = tmp_path / "jan"
    made = runner.invoke(app, ["snapshot", "--config", str(cfg), "--month", "2024-01", "--out", str(package)])
    assert made.exit_code == 0, made.output
    bucket = stand_in.make_bucket()
    result = runner.invoke(app, ["upload", "--config", str(cfg), str(package), f"s3://{bucket}/later"])
    assert result.exit_code == 0, result.output
    assert "local copy kept" in result.output and (package / "bag-info.txt").is_file()
    assert keys_in(stand_in, bucket) == [f"later/{package.name}.tar"]
    cfg = cli_config(tmp_path, log_dir, stand_in, creds_mode=0o644)
    result = runner.invoke(app, ["upload", "--config", str(cfg), str(package), f"s3://{bucket}/later"])
    assert result.exit_code == 2 and "chmod 600" in result.output


def test_backup_leaves_out_the_plaintext_outbox_and_keeps_receipts(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A package waiting in the outbox is plaintext: `backup` (whose copy must be unreadable without the key)
    does not copy it; the receipts of uploaded months (no chat content) are copied."""
    from bridge.backup import backup

    monkeypatch.setattr(scheduler, "now_ms", lambda: ms(2024, 3, 10))
    bucket = stand_in.make_bucket()
    jobs = ArchiveJobs(
        log_dir.data_dir,
        log_dir.keys,
        log_dir.data_dir / "outbox",
        OPTIONS,
        worm=worm(log_dir, stand_in.connection(bucket)),
    )
    asyncio.run(jobs.catch_up())
    staged = log_dir.data_dir / "outbox" / "waiting"
    (staged / "data").mkdir(parents=True)
    (staged / "data" / "events.jsonl").write_text('{"body": "kamerbrief concept"}\n')
    backup(log_dir.data_dir, tmp_path / "backup")
    copied = {p.relative_to(tmp_path / "backup").as_posix() for p in (tmp_path / "backup").rglob("*") if p.is_file()}
    assert not any(c.startswith("outbox/") for c in copied)
    assert {f"uploads/{package_name(log_dir.keys.log_id, Month(2024, m))}.json" for m in (1, 2)} <= copied


def test_run_wiring_refuses_a_bucket_without_lock_and_only_alerts_when_unreachable(
    log_dir: LogDir, stand_in: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`run`'s start-up check (bridge.app.check_worm) on the destination built from the config: a bucket
    without object lock stops it (ConfigError, exit 2); an unreachable store is an ALERT only (capture must
    not wait for the archive's storage)."""
    from bridge.app import check_worm, worm_destination

    cfg = cli_config(tmp_path, log_dir, stand_in)
    plain = stand_in.make_bucket(object_lock=False)
    settings = load(cfg)
    dest = worm_destination(settings, log_dir.data_dir, log_dir.keys, S3Destination(bucket=plain, prefix="p"))
    assert dest is not None and dest.options.retention_days == 10 and dest.options.mode == "COMPLIANCE"
    assert dest.options.conn.credentials == CREDENTIALS
    with pytest.raises(ConfigError, match="has no object lock"):
        asyncio.run(check_worm(dest))
    gone = WormDestination(
        WormOptions(Connection("worm-gone", "http://127.0.0.1:9", "us-east-1", CREDENTIALS), "", 1),
        log_dir.data_dir,
        (log_dir.keys.key_name, log_dir.keys.public_key),
    )
    with caplog.at_level(logging.ERROR, logger="bridge.app"):
        asyncio.run(check_worm(gone))
    assert any("ALERT archive destination unreachable" in r.getMessage() for r in caplog.records)


def test_attack_a_forged_receipt_does_not_hide_a_month(
    log_dir: LogDir, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An insider writes a receipt for a month that was never uploaded (or one whose version is gone): the
    catch-up asks the bucket, raises an ALERT, keeps the forged receipt aside as evidence and uploads the month."""
    monkeypatch.setattr(scheduler, "now_ms", lambda: ms(2024, 2, 10))
    bucket = stand_in.make_bucket()
    dest = worm(log_dir, stand_in.connection(bucket))
    name = package_name(log_dir.keys.log_id, Month(2024, 1))
    receipts = log_dir.data_dir / "uploads"
    receipts.mkdir()
    forged = json.dumps(
        {"bucket": bucket, "key": f"packages/{name}.tar", "lock_mode": "COMPLIANCE", "retain_until": "2099-01-01",
         "sha256": "00", "size": 1, "uploaded": True, "url": "s3://x", "version_id": "made-up"}
    )  # fmt: skip
    (receipts / f"{name}.json").write_text(forged)
    jobs = ArchiveJobs(log_dir.data_dir, log_dir.keys, log_dir.data_dir / "outbox", OPTIONS, worm=dest)
    with caplog.at_level(logging.ERROR, logger="bridge.scheduler"):
        written = asyncio.run(jobs.catch_up())
    assert [r.month for r in written] == ["2024-01"] and jobs.failed == []
    assert any("ALERT upload receipt contradicted" in r.getMessage() for r in caplog.records)
    assert keys_in(stand_in, bucket) == [f"packages/{name}.tar"]
    assert [p.read_text() for p in receipts.glob(f"{name}.json.contradicted-*")] == [forged]
    assert dest.confirm_sync(name)  # the new receipt holds
