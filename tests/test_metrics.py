"""bridge.metrics: what the observer counts, alert kinds, health reasons, [metrics] config, who imports Prometheus."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import config
from bridge.errors import ConfigError
from bridge.events import ConversationId, Event, EventId, Kind, SenderId, SourceName
from bridge.metrics import CaptureMetrics, Vitals, WitnessVital, alert_kind, health_reasons, probe_writable
from tests.support.botrun import chatarchief

ROOT = Path(__file__).resolve().parent.parent


def event(i: int, kind: Kind = Kind.MESSAGE, received_at: int = 1_000) -> Event:
    return Event(
        source=SourceName("matrix"),
        conversation=ConversationId("!geheim-overleg:example.org"),
        event_id=EventId(f"$e{i}"),
        kind=kind,
        sender=SenderId("@minister:example.org"),
        sent_at=received_at,
        received_at=received_at,
        content={"body": "VERTROUWELIJK budget"},
    )


def scrape(metrics: CaptureMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_committed_events_are_counted_by_source_and_kind_with_lag_and_no_identifiers() -> None:
    """Three messages and one undecryptable event, durable 1.5 s after arrival: counted by kind, the lag
    histogram holds four observations in the 2.5 s bucket (not the 1 s one), appended and duplicate counts
    are what the store said; the exposition names no room, user or content."""
    m = CaptureMetrics("9.9")
    events = [event(i) for i in range(3)] + [event(3, Kind.UNDECRYPTABLE)]
    m.committed("matrix", events, appended=3, duplicates=1, durable_ms=2_500)
    got = scrape(m)
    assert got[("chatarchief_events_captured_total", frozenset({("source", "matrix"), ("kind", "message")}))] == 3
    assert got[("chatarchief_events_captured_total", frozenset({("source", "matrix"), ("kind", "undecryptable")}))] == 1
    assert got[("chatarchief_undecryptable_events_total", frozenset({("source", "matrix")}))] == 1
    assert got[("chatarchief_records_appended_total", frozenset({("source", "matrix")}))] == 3
    assert got[("chatarchief_duplicates_skipped_total", frozenset({("source", "matrix")}))] == 1
    bucket = "chatarchief_capture_lag_seconds_bucket"
    assert got[(bucket, frozenset({("source", "matrix"), ("le", "1.0")}))] == 0
    assert got[(bucket, frozenset({("source", "matrix"), ("le", "2.5")}))] == 4
    assert got[("chatarchief_source_last_commit_timestamp_seconds", frozenset({("source", "matrix")}))] == 2.5
    text = generate_latest(m.registry).decode()
    for secret in ("geheim", "minister", "VERTROUWELIJK", "$e0"):
        assert secret not in text


def test_storage_failure_sets_failing_until_recovered_and_update_reports_health() -> None:
    """A failed write makes storage_failing 1 and /healthz unhealthy naming the writer; recovery clears it;
    the log figures (unsealed = records - sealed) and a stopped source are reported."""
    m = CaptureMetrics("9.9")
    vitals = Vitals(
        records=10, sealed=7, checkpoint_ms=5_000, heartbeats=2, last_package_end_ms=None, package_months_failed=0
    )
    m.storage_failed("blobs", "database or disk is full")
    reasons = m.update(vitals, None, (1, 2))
    assert reasons == ["storage failing for blobs: database or disk is full"]
    got = scrape(m)
    assert got[("chatarchief_storage_failing", frozenset())] == 1
    assert got[("chatarchief_unsealed_records", frozenset())] == 3
    assert got[("chatarchief_last_checkpoint_timestamp_seconds", frozenset())] == 5.0
    assert got[("chatarchief_healthy", frozenset())] == 0
    m.storage_recovered("blobs")
    assert m.update(vitals, None, None) == []
    assert scrape(m)[("chatarchief_healthy", frozenset())] == 1
    stopped = Vitals(10, 10, None, 2, 1_000, 1, stopped_sources=("signal",))
    assert m.update(stopped, None, None) == ["source signal is not running"]
    assert scrape(m)[("chatarchief_package_months_failed", frozenset())] == 1


def test_witness_figures_name_each_witness_and_count_records_the_quorum_has_not_cosigned() -> None:
    """Per witness the size it last cosigned and its cosignature's time, labelled by the witness's public key
    name; whether the newest checkpoint has its quorum; sealed records above the quorum's size. Without
    [witness] none of these series appear (an absent witness is not a witness at size 0)."""
    m = CaptureMetrics("9.9")
    plain = Vitals(records=50, sealed=40, checkpoint_ms=None, heartbeats=0, last_package_end_ms=None,
                   package_months_failed=0)  # fmt: skip
    m.update(plain, None, None)
    got = scrape(m)
    assert not [k for k in got if k[0].startswith("chatarchief_witness_")]
    witnessed = Vitals(
        50, 40, None, 0, None, 0,
        witnesses=(WitnessVital("na.example/w1", 30, 1_790_000_000), WitnessVital("w2.example", 0, None)),
        witness_quorum_met=False, witnessed_size=30,
    )  # fmt: skip
    m.update(witnessed, None, None)
    got = scrape(m)
    assert got[("chatarchief_witness_cosigned_size", frozenset({("witness", "na.example/w1")}))] == 30
    assert got[("chatarchief_witness_cosigned_size", frozenset({("witness", "w2.example")}))] == 0
    stamp = "chatarchief_witness_last_cosignature_timestamp_seconds"
    assert got[(stamp, frozenset({("witness", "na.example/w1")}))] == 1_790_000_000
    assert (stamp, frozenset({("witness", "w2.example")})) not in got  # never cosigned: no made-up time
    assert got[("chatarchief_witness_quorum_met", frozenset())] == 0
    assert got[("chatarchief_witness_unwitnessed_records", frozenset())] == 10
    caught_up = Vitals(50, 50, None, 0, None, 0, witnesses=(WitnessVital("na.example/w1", 50, 1_790_000_060),),
                       witness_quorum_met=True, witnessed_size=50)  # fmt: skip
    m.update(caught_up, None, None)
    got = scrape(m)
    assert got[("chatarchief_witness_quorum_met", frozenset())] == 1
    assert got[("chatarchief_witness_unwitnessed_records", frozenset())] == 0


def test_health_reasons_lists_every_problem_one_line_each() -> None:
    """Storage, probe and stopped sources each give one line, in a stable order."""
    assert health_reasons({}, (), None) == []
    assert health_reasons({"signal": "I/O error", "matrix": "full"}, ("matrix",), "ENOSPC: No space left") == [
        "storage failing for matrix: full",
        "storage failing for signal: I/O error",
        "data dir not writable: ENOSPC: No space left",
        "source matrix is not running",
    ]


def test_probe_reports_a_read_only_data_dir_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """The probe file is removed after a good probe; a missing data dir is an error line, not an exception."""
    assert probe_writable(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    missing = probe_writable(tmp_path / "gone")
    assert missing is not None and missing.startswith("ENOENT")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("ALERT storage failing; capture paused, nothing acknowledged upstream", "storage_failing"),
        ("ALERT compliance: view-once message captured", "compliance"),
        ("ALERT monthly package blocked: its target path holds something", "monthly_package_blocked"),
        ("capture running", None),
        ("alert lower case is no alert", None),
    ],
)
def test_alert_kind(message: str, kind: str | None) -> None:
    """The words before the first ':' or ';' of an ALERT line, as a slug; None for other lines."""
    assert alert_kind(message) == kind


@given(st.text(max_size=300))
def test_alert_kind_is_a_short_slug_for_any_text(text: str) -> None:
    """Whatever follows ALERT, the kind is a bounded label of [a-z0-9_] (no content can leak through)."""
    kind = alert_kind("ALERT " + text)
    assert kind is not None and 0 < len(kind) <= 48
    assert set(kind) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


def test_metrics_config_defaults_off_on_loopback_and_refuses_remote_unless_allowed(tmp_path: Path) -> None:
    """[metrics] is off by default on 127.0.0.1:9464; a non-loopback address needs allow_remote; a listen
    value that is not host:port is one clear line."""
    s = config.load(None).metrics
    assert (s.enabled, s.host, s.port) == (False, "127.0.0.1", 9464)
    path = tmp_path / "c.toml"
    path.write_text('[metrics]\nenabled = true\nlisten = "0.0.0.0:9464"\n')
    with pytest.raises(ConfigError, match=r"'metrics' .*not a loopback address"):
        config.load(path)
    path.write_text('[metrics]\nenabled = true\nlisten = "0.0.0.0:9464"\nallow_remote = true\n')
    assert config.load(path).metrics.host == "0.0.0.0"
    path.write_text('[metrics]\nlisten = "[::1]:9100"\n')
    assert (config.load(path).metrics.host, config.load(path).metrics.port) == ("::1", 9100)
    for bad in ("9464", "127.0.0.1:99999", "metrics.example.org:9464"):
        path.write_text(f'[metrics]\nlisten = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"'metrics.listen'"):
            config.load(path)


def test_only_bridge_metrics_imports_prometheus_client() -> None:
    """Capture, sources and the log report through the observer; the Prometheus library stays in one module
    (import-linter's contract "metrics-at-the-edge" covers bridge.metrics itself)."""
    importers = []
    for path in sorted((ROOT / "bridge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "prometheus_client" for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["bridge/metrics.py"]


def test_run_refuses_a_metrics_port_in_use_with_one_line_exit_2(tmp_path: Path) -> None:
    """A metrics listen address already taken stops `run` at start with exit 2 and one line naming the
    address and the fix; the log stays sealed (verify passes)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"
[storage]
data_dir = "{tmp_path / "data"}"
key_file = "{secrets / "k.key"}"
[signal]
endpoint = "tcp://127.0.0.1:9"
[metrics]
enabled = true
listen = "127.0.0.1:{port}"
""")
        assert chatarchief("init", "--config", str(cfg)).returncode == 0
        run = chatarchief("run", "--config", str(cfg))
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if "metrics.listen" in line]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "enabled = false" in lines[0]
    assert "Traceback" not in run.stderr
    verify = chatarchief("verify", "--config", str(cfg))
    assert verify.returncode == 0, verify.stderr


def test_a_running_source_that_commits_nothing_for_silent_after_makes_health_fail() -> None:
    """A source with no commit since start (or since its last one) for more than `silent_after` seconds is
    named with its silence; a commit clears it; a stopped source is reported as stopped, not as silent."""
    now = [100.0]
    m = CaptureMetrics("9.9", silent_after=60, clock=lambda: now[0])
    running = Vitals(5, 5, None, 1, None, 0, running_sources=("matrix", "signal"))
    assert m.update(running, None, None) == []
    now[0] = 150.0
    m.committed("matrix", [], 0, 0, 1)
    now[0] = 200.0
    assert m.update(running, None, None) == [
        "source signal silent for 100 s (no sync, receive or keep-alive committed)"
    ]
    m.committed("signal", [], 0, 0, 1)
    now[0] = 215.0
    assert m.update(running, None, None) == ["source matrix silent for 65 s (no sync, receive or keep-alive committed)"]
    stopped = Vitals(5, 5, None, 1, None, 0, stopped_sources=("matrix",), running_sources=("signal",))
    assert m.update(stopped, None, None) == ["source matrix is not running"]


def test_the_compose_files_environment_enables_metrics_for_the_container_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/docker-compose.yml sets [metrics] through CHATARCHIEF_METRICS__*: those values parse to metrics on
    0.0.0.0:9464 with allow_remote (without it the same listen address is refused)."""
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    env = {k: v for k, v in compose["services"]["chatarchief"]["environment"].items() if "METRICS" in k}
    assert env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = config.load(None).metrics
    assert (s.enabled, s.host, s.port, s.allow_remote) == (True, "0.0.0.0", 9464, True)
    monkeypatch.delenv("CHATARCHIEF_METRICS__ALLOW_REMOTE")
    with pytest.raises(ConfigError, match="not a loopback address"):
        config.load(None)
