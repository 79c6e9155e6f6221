"""Prometheus metrics and the health check of `chatarchief run`, served on loopback.

Contract:
- `CaptureMetrics` is the `bridge.capture.CaptureObserver` that `run` hands its
  sinks: it counts what capture made durable (by source and kind), the capture
  lag (arrival -> durable), the last commit per source, undecryptable events and
  storage failures. Labels are operator vocabulary only ("matrix", "signal",
  "blobs", an event kind, an alert kind): never an account, a user id, a room or
  any content, so the figures can leave the host.
- `AlertCounter` is a logging handler counting `ALERT ...` log lines by kind
  (`alert_kind`: the words before the first ':' or ';', as a slug). Our log
  messages are constants (tests/test_logging_convention.py), so kinds are few.
- `Vitals` is what the wiring reads from the log and the jobs at each scrape
  (sizes, last checkpoint, heartbeats, packages, sources that stopped).
- `MetricsServer(listen, metrics, read_vitals, data_dir)` is an async context
  manager serving `GET /metrics` (text exposition format) and `GET /healthz`:
  200 `{"status": "ok"}` while every source runs and has committed (a sync, a
  receive, a keep-alive) within `silent_after` seconds, no write is paused on
  failing storage and a probe file can be created, written and fsynced in the
  data dir; else 503 with `{"status": "failing", "reasons": [...]}` (one line
  each).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from bridge.events import Event, Kind

__all__ = [
    "AlertCounter",
    "CaptureMetrics",
    "MetricsServer",
    "Vitals",
    "WitnessVital",
    "alert_kind",
    "health_reasons",
]

log = logging.getLogger(__name__)

ALERT_PREFIX = "ALERT "
PROBE_NAME = ".healthz-probe"
#: Seconds from an event's arrival at the bot to its commit; sources batch, so most land well under a second.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SLUG = re.compile(r"[^a-z0-9]+")


def alert_kind(message: str) -> str | None:
    """`ALERT storage failing; capture paused` -> "storage_failing"; None for a line that is no alert."""
    if not message.startswith(ALERT_PREFIX):
        return None
    head = re.split(r"[:;]", message[len(ALERT_PREFIX) :], maxsplit=1)[0]
    return _SLUG.sub("_", head.lower()).strip("_")[:48] or "unnamed"


@dataclass(frozen=True, slots=True)
class WitnessVital:
    """What one witness last cosigned for this log: its key name (public), the size, the cosignature's time."""

    name: str
    cosigned_size: int
    #: The cosignature's own timestamp (unix seconds), None before its first.
    cosigned_at_s: int | None


@dataclass(frozen=True, slots=True)
class Vitals:
    """The log's and the jobs' state at one scrape (read by the wiring, which owns the store)."""

    records: int
    sealed: int
    checkpoint_ms: int | None
    heartbeats: int
    #: End of the latest month whose package exists (unix ms, exclusive), None before the first.
    last_package_end_ms: int | None
    package_months_failed: int
    #: Sources whose task has ended (a running bot has none).
    stopped_sources: tuple[str, ...] = ()
    #: Sources whose task runs ("matrix", "signal"): each must commit within `silent_after` seconds.
    running_sources: tuple[str, ...] = ()
    #: One per configured witness (empty without [witness]).
    witnesses: tuple[WitnessVital, ...] = ()
    #: Does the newest checkpoint have its quorum of cosignatures? None: no [witness] or not asked yet.
    witness_quorum_met: bool | None = None
    #: Largest size at least `quorum` witnesses cosigned (0: none yet); None without [witness].
    witnessed_size: int | None = None


class _WitnessGauges:
    """What the witnesses cosigned for this log (see `CaptureMetrics._update_witnesses`)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.size = Gauge(
            "chatarchief_witness_cosigned_size", "Largest log size each witness cosigned", ["witness"], registry=r
        )
        self.time = Gauge(
            "chatarchief_witness_last_cosignature_timestamp_seconds",
            "Timestamp of each witness's newest cosignature of this log",
            ["witness"],
            registry=r,
        )
        self.quorum = Gauge(
            "chatarchief_witness_quorum_met", "1 when the newest checkpoint has its quorum of cosignatures", registry=r
        )
        self.unwitnessed = Gauge(
            "chatarchief_witness_unwitnessed_records",
            "Sealed records not yet under a checkpoint cosigned by the quorum",
            registry=r,
        )


class CaptureMetrics:
    """The counters and gauges of one bot; a `CaptureObserver` for its sinks (see the module docstring)."""

    def __init__(self, version: str, silent_after: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self.silent_after = silent_after
        #: label -> monotonic time of its last commit
        self.last_seen: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        with contextlib.suppress(Exception):  # /proc-less platforms: no process figures, the rest still works
            ProcessCollector(registry=r, namespace="chatarchief")
        Gauge("chatarchief_build_info", "Version of the running bot", ["version"], registry=r).labels(version).set(1)
        self.events = Counter(
            "chatarchief_events_captured", "Events made durable (re-deliveries too)", ["source", "kind"], registry=r
        )
        self.appended = Counter("chatarchief_records_appended", "New log records from capture", ["source"], registry=r)
        self.duplicates = Counter(
            "chatarchief_duplicates_skipped", "Re-delivered events the log already held", ["source"], registry=r
        )
        self.undecryptable = Counter(
            "chatarchief_undecryptable_events", "Events stored as undecryptable", ["source"], registry=r
        )
        self.lag = Histogram(
            "chatarchief_capture_lag_seconds",
            "Arrival at the bot -> durable in the log",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.last_commit = Gauge(
            "chatarchief_source_last_commit_timestamp_seconds",
            "Last commit of a source (a Matrix sync, a Signal receive or keep-alive), unix time",
            ["source"],
            registry=r,
        )
        self.storage_failures = Counter(
            "chatarchief_storage_failures", "Failed write attempts (capture paused meanwhile)", ["writer"], registry=r
        )
        self.storage_failing = Gauge(
            "chatarchief_storage_failing", "1 while a write is paused on failing storage or the probe fails", registry=r
        )
        self.alerts = Counter("chatarchief_alerts", "ALERT log lines, by kind", ["kind"], registry=r)
        self.heartbeats = Gauge("chatarchief_heartbeats_recorded", "Heartbeat records since start", registry=r)
        self.records = Gauge("chatarchief_log_records", "Records in the log", registry=r)
        self.unsealed = Gauge("chatarchief_unsealed_records", "Records not yet under a signed checkpoint", registry=r)
        self.checkpoint = Gauge(
            "chatarchief_last_checkpoint_timestamp_seconds", "Time of the latest signed checkpoint", registry=r
        )
        self.package_end = Gauge(
            "chatarchief_last_package_month_end_timestamp_seconds",
            "End of the latest month with a package (0: none yet)",
            registry=r,
        )
        self.package_failed = Gauge(
            "chatarchief_package_months_failed", "Due months whose package failed or is blocked", registry=r
        )
        self.sources_stopped = Gauge("chatarchief_sources_stopped", "Configured sources no longer running", registry=r)
        self.free_bytes = Gauge("chatarchief_data_dir_free_bytes", "Free bytes where the data dir is", registry=r)
        self.size_bytes = Gauge("chatarchief_data_dir_size_bytes", "Size of the data dir's file system", registry=r)
        self.healthy = Gauge("chatarchief_healthy", "1 when /healthz would answer 200", registry=r)
        #: writer label -> last error, while its write is paused
        self.failing: dict[str, str] = {}
        self._witness: _WitnessGauges | None = None

    # -- CaptureObserver
    def committed(self, label: str, events: Sequence[Event], appended: int, duplicates: int, durable_ms: int) -> None:
        self.last_seen[label] = self._clock()
        self.last_commit.labels(label).set(durable_ms / 1000)
        self.appended.labels(label).inc(appended)
        self.duplicates.labels(label).inc(duplicates)
        for event in events:
            self.events.labels(event.source, event.kind.value).inc()
            if event.kind is Kind.UNDECRYPTABLE:
                self.undecryptable.labels(event.source).inc()
            self.lag.labels(event.source).observe(max(0, durable_ms - event.received_at) / 1000)

    def storage_failed(self, label: str, error: str) -> None:
        self.storage_failures.labels(label).inc()
        self.failing[label] = error

    def storage_recovered(self, label: str) -> None:
        self.failing.pop(label, None)

    # -- state read at a scrape
    def _update_witnesses(self, vitals: Vitals, witnessed_size: int) -> None:
        """The witness series, registered at the first scrape with [witness] (a bot without witnesses exports
        none: `quorum_met 0` there would be an alert about witnesses nobody configured)."""
        if self._witness is None:
            self._witness = _WitnessGauges(self.registry)
        g = self._witness
        for w in vitals.witnesses:
            g.size.labels(w.name).set(w.cosigned_size)
            if w.cosigned_at_s is not None:
                g.time.labels(w.name).set(w.cosigned_at_s)
        if vitals.witness_quorum_met is not None:
            g.quorum.set(1 if vitals.witness_quorum_met else 0)
        g.unwitnessed.set(max(0, vitals.sealed - witnessed_size))

    def update(self, vitals: Vitals, probe_error: str | None, disk: tuple[int, int] | None) -> list[str]:
        """Set the gauges from `vitals`; returns the health reasons (empty: healthy)."""
        self.records.set(vitals.records)
        self.unsealed.set(max(0, vitals.records - vitals.sealed))
        if vitals.checkpoint_ms is not None:
            self.checkpoint.set(vitals.checkpoint_ms / 1000)
        self.heartbeats.set(vitals.heartbeats)
        self.package_end.set((vitals.last_package_end_ms or 0) / 1000)
        self.package_failed.set(vitals.package_months_failed)
        self.sources_stopped.set(len(vitals.stopped_sources))
        if vitals.witnessed_size is not None:
            self._update_witnesses(vitals, vitals.witnessed_size)
        if disk is not None:
            self.free_bytes.set(disk[0])
            self.size_bytes.set(disk[1])
        self.storage_failing.set(1 if self.failing or probe_error else 0)
        now = self._clock()
        silent = {
            name: now - self.last_seen.get(name, self._started)
            for name in vitals.running_sources
            if now - self.last_seen.get(name, self._started) > self.silent_after
        }
        reasons = health_reasons(self.failing, vitals.stopped_sources, probe_error, silent)
        self.healthy.set(0 if reasons else 1)
        return reasons


def health_reasons(
    failing: Mapping[str, str],
    stopped: Sequence[str],
    probe_error: str | None,
    silent: Mapping[str, float] | None = None,
) -> list[str]:
    """Why the bot is not healthy, one line each (pure); empty when it is."""
    reasons = [f"storage failing for {label}: {error}" for label, error in sorted(failing.items())]
    if probe_error is not None:
        reasons.append(f"data dir not writable: {probe_error}")
    reasons += [f"source {name} is not running" for name in stopped]
    reasons += [
        f"source {name} silent for {round(seconds)} s (no sync, receive or keep-alive committed)"
        for name, seconds in sorted((silent or {}).items())
    ]
    return reasons


class AlertCounter(logging.Handler):
    """Counts `ALERT ...` log records by kind into `counter` (attach to the `bridge` logger)."""

    def __init__(self, metrics: CaptureMetrics) -> None:
        super().__init__(level=logging.WARNING)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        kind = alert_kind(str(record.msg))
        if kind is not None:
            self._metrics.alerts.labels(kind).inc()


def probe_writable(data_dir: Path) -> str | None:
    """Create, write, fsync and remove a small file in `data_dir`; the error (one line) if any step fails."""
    path = data_dir / f"{PROBE_NAME}-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"\0" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        return f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror}"
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def disk_figures(data_dir: Path) -> tuple[int, int] | None:
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class MetricsServer:
    """Serves /metrics and /healthz on `host:port` while open (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: CaptureMetrics,
        read_vitals: Callable[[], Awaitable[Vitals]],
        data_dir: Path,
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._read_vitals = read_vitals
        self._data_dir = data_dir
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # one scrape at a time: gauges are shared

    async def _refresh(self) -> list[str]:
        async with self._lock:
            vitals = await self._read_vitals()
            probe = await asyncio.to_thread(probe_writable, self._data_dir)
            disk = await asyncio.to_thread(disk_figures, self._data_dir)
            return self._metrics.update(vitals, probe, disk)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        await self._refresh()
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        reasons = await self._refresh()
        if reasons:
            return web.json_response({"status": "failing", "reasons": reasons}, status=503)
        return web.json_response({"status": "ok"})

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics served", extra={"listen": f"{self._host}:{self._port}", "paths": ["/metrics", "/healthz"]})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
