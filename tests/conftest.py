"""Shared fixtures: a real log on disk, made through the public API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId
from bridge.log import keys as keyfile
from bridge.log.db import PgTarget
from bridge.log.keys import KeyMaterial
from bridge.log.store import CheckpointPolicy, LogStore, initialise
from tests.support.pg import PgServer

# Hypothesis profiles: `fast` for `make check` (before a commit), `thorough` in CI (`.ci/run`, or any run with CI
# set), `local` (hypothesis' defaults, no deadline) otherwise. HYPOTHESIS_PROFILE picks one explicitly. Tests
# that fix their own max_examples keep it; the profile sets it for the others and the deadline for all.
settings.register_profile("fast", max_examples=20, deadline=None)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# Hypothesis' defaults without its 200 ms deadline: timing is for bench/, and a loaded 2-core machine made
# a contract test "flaky" on time alone.
settings.register_profile("local", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("thorough" if os.environ.get("CI") else "local"))

pytest_plugins = ["tests.support.fixtures"] if (Path(__file__).parent / "support" / "fixtures.py").exists() else []


@dataclass
class LogDir:
    data_dir: Path
    key_file: Path
    keys: KeyMaterial
    #: The PostgreSQL log (schema) when the log lives there, else None (SQLite in the data dir).
    pg: PgTarget | None = None

    @property
    def db(self) -> Path:
        return self.data_dir / "log.sqlite3"

    @property
    def backend(self) -> str:
        return "sqlite" if self.pg is None else "postgresql"


def make_event(i: int, conversation: str = "!room:example.org", body: str | None = None) -> Event:
    return Event(
        source=MATRIX,
        conversation=ConversationId(conversation),
        event_id=EventId(f"$event{i}"),
        kind=Kind.MESSAGE,
        sender=SenderId("@minister:example.org"),
        sent_at=1_700_000_000_000 + i,
        received_at=1_700_000_000_500 + i,
        content={"msgtype": "m.text", "body": body if body is not None else f"message {i}"},
        raw={"type": "m.room.message", "event_id": f"$event{i}"},
    )


def create_log(tmp_path: Path, pg: PgTarget | None = None) -> LogDir:
    data_dir = tmp_path / "data"
    key_file = tmp_path / "keys" / "chatarchief.key"
    key_file.parent.mkdir(mode=0o700, parents=True)
    material = keyfile.generate(os.urandom(16))
    keyfile.write_new(key_file, material)
    initialise(data_dir, material, pg)
    return LogDir(data_dir, key_file, material, pg)


def fill_log(log: LogDir, n: int, every_records: int = 10, batch: int = 5) -> None:
    """Append n events in batches, checkpointing every `every_records`, sealing the end."""

    async def go() -> None:
        policy = CheckpointPolicy(every_records=every_records, every_seconds=3600)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            for start in range(0, n, batch):
                await store.append_events([make_event(i) for i in range(start, min(n, start + batch))])
            await store.checkpoint()

    asyncio.run(go())


@pytest.fixture
def empty_log(tmp_path: Path) -> LogDir:
    return create_log(tmp_path)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (started only by tests that ask for it)."""
    server = PgServer(tmp_path_factory.mktemp("pg-client"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: The log's storage backends: contract tests run against each (`any_empty_log`, `any_filled_log`).
BACKENDS = ("sqlite", "postgresql")


def backend_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDir:
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        return create_log(tmp_path, server.new_log_target())
    return create_log(tmp_path)


@pytest.fixture(params=BACKENDS)
def any_empty_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDir:
    return backend_log(request, tmp_path)


@pytest.fixture(params=BACKENDS)
def any_filled_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDir:
    log = backend_log(request, tmp_path)
    fill_log(log, 50)
    return log


@pytest.fixture
def filled_log(tmp_path: Path) -> LogDir:
    log = create_log(tmp_path)
    fill_log(log, 50)
    return log


# End-to-end tests that start a real `chatarchief run` (or wait out retries with backoff) take seconds each:
# `make test` and CI run them, `make check` (-m "not slow") leaves them out to stay under a minute and a half.
SLOW_MODULES = frozenset({"test_witness_run.py", "test_control_run.py", "test_signal_run.py", "test_worm_run.py"})
SLOW_TESTS = frozenset(
    {
        "test_an_unreachable_endpoint_fails_after_the_attempts_and_keeps_the_package",
        "test_run_logs_a_start_line_json_only_and_the_real_reason",
        "test_monthly_job_alerts_keeps_the_package_and_uploads_it_later",
        "test_run_wiring_refuses_a_bucket_without_lock_and_only_alerts_when_unreachable",
        "test_backup_command_prints_a_summary_and_exits_2_on_usage_errors",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=[1, 2], ids=["workers=1", "workers=2"])
def verify_workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """`verify_log`'s default number of processes for the test. At 2 even a small log is split into ranges of
    four records, so helper processes, the merge of their ranges and the checkpoints inside them run on
    every tamper the suite makes (the suites assert the same outcome for both)."""
    from bridge.log import verify_workers as workers

    monkeypatch.setattr(workers, "default_workers", lambda: request.param)
    monkeypatch.setattr(workers, "CHUNK", 4)
    monkeypatch.setattr(workers, "PARALLEL_MIN", 0)
    return int(request.param)
