"""Wiring: config -> stores -> sources -> capture -> jobs. The only module that knows them all.

Contract: `run(settings, data_dir, keys, stop)` runs every configured source
against the log in `data_dir` until `stop` is set: it opens the one `LogStore`
(refusing a second bot on the same data dir), seals what a crash left unsealed,
serves the control socket (`bridge.log.control`: other commands write through
the bot), starts the monthly archive jobs (`bridge.scheduler`), hands each
source a `bridge.capture.LogSink`, serves `/metrics` and `/healthz` when
`[metrics] enabled` (`bridge.metrics`, fed through the sinks' observer), and on
stop seals the log with a checkpoint.

Everything below this module takes small option objects, not `Settings`: the
translation (`matrix_source_config`, `signal_source_config`, `archive_options`,
`checkpoint_policy`) lives here, so the layers under it never import config
(see docs/architecture.md; `make lint` enforces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import __version__
from bridge.archive.mdto import Organisation
from bridge.archive.package import ArchiveOptions, private_workdir
from bridge.archive.range import first_instant_ms, zone
from bridge.blobs import BlobStore
from bridge.capture import LogSink, RetryingBlobs, supervise
from bridge.clock import now_ms
from bridge.config import S3Destination, Settings
from bridge.errors import ConfigError, StorageError, UsageError
from bridge.liveness import Heartbeats, restart_gap
from bridge.log import checkpoint as checkpoint_note
from bridge.log.control import ControlServer
from bridge.log.db import PgWriterBusy
from bridge.log.keys import KeyMaterial, check_permissions
from bridge.log.lock import WriterBusy
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.log.view import LogView
from bridge.log.writer import check_private_dir, seal_in_loop
from bridge.metrics import AlertCounter, CaptureMetrics, MetricsServer, Vitals, WitnessVital
from bridge.scheduler import ArchiveJobs
from bridge.sources.matrix import MatrixSource, MatrixSourceConfig, prepare_device
from bridge.sources.signal import SignalSource, SignalSourceConfig
from bridge.witness.client import Witnessing
from bridge.witness.cosigned import CosignatureStore
from bridge.witness.note import ALG_COSIGNATURE_V1, NoteError, Verifier, parse_vkey
from bridge.worm.bucket import Connection, read_credentials
from bridge.worm.publish import WormDestination, WormOptions

log = logging.getLogger(__name__)


async def run(settings: Settings, data_dir: Path, keys: KeyMaterial, stop: asyncio.Event) -> None:
    """Run every configured source against the log in `data_dir` until `stop` is set."""
    if settings.matrix is None and settings.signal is None:
        raise UsageError("no source configured: add a [matrix] (or [signal]) section to the config")
    options = archive_options(settings)  # refused now, not at the first month's end
    if settings.matrix is not None:
        for secret in (settings.matrix.password_file, settings.matrix.access_token_file):
            if secret is not None:
                check_permissions(secret, "matrix credential file")
    check_private_dir(data_dir)
    targets = witness_targets(settings)  # a bad [witness] key is a config error before anything starts
    if settings.storage.standby and settings.matrix is not None:
        # Its Matrix device exists with keys from now on, so senders share room keys with it while it waits.
        await prepare_device(matrix_source_config(settings, data_dir, keys))
    store = await open_store(settings, data_dir, keys, stop)
    if store is None:  # a standby told to stop before it took over
        return
    async with store:
        await record_restart_gap(store, data_dir, keys)
        await store.checkpoint()  # seal whatever a crash left unsealed
        await asyncio.to_thread(private_workdir, data_dir)  # plaintext temp bags of a crashed snapshot go now
        m = settings.metrics
        metrics = CaptureMetrics(__version__, m.silent_after_seconds) if m.enabled else None
        blobs = RetryingBlobs(BlobStore(data_dir / "blobs", store.media_keys()), stop=stop, observer=metrics)
        seal = seal_in_loop(store, asyncio.get_running_loop())
        a = settings.archive
        worm = worm_destination(settings, data_dir, keys)
        if worm is not None:
            await check_worm(worm)
        folder = a.destination if isinstance(a.destination, Path) else data_dir / "outbox"
        archive = ArchiveJobs(data_dir, keys, folder, options, a.schedule, store, seal=seal, worm=worm)
        witnessing = witness_task(settings, targets, data_dir, keys, store, stop)
        tasks: list[asyncio.Task[None]] = []
        retries: list[LogSink | RetryingBlobs] = [blobs]
        if settings.matrix is not None:
            cfg = matrix_source_config(settings, data_dir, keys)
            sink = LogSink(store, f"matrix:{settings.matrix.user_id}", stop=stop, observer=metrics)
            retries.append(sink)
            spool_sink = None
            if cfg.spool_dir is not None:
                spool_sink = LogSink(store, f"matrix-spool:{settings.matrix.user_id}", stop=stop, observer=metrics)
                retries.append(spool_sink)
            matrix = MatrixSource(cfg, sink, blobs, spool_sink)
            tasks.append(asyncio.create_task(matrix.run(stop), name="matrix"))
        if settings.signal is not None:
            signal_cfg = signal_source_config(settings)
            name = f"signal:{settings.signal.account or settings.signal.endpoint}"
            sink = LogSink(store, name, stop=stop, observer=metrics)
            retries.append(sink)
            tasks.append(asyncio.create_task(SignalSource(signal_cfg, sink, blobs).run(stop), name="signal"))
        heartbeats = Heartbeats(store, settings.storage.heartbeat_minutes * 60)
        try:
            async with (
                ControlServer(data_dir, store),
                serve_metrics(settings, metrics, store, tasks, heartbeats, archive, data_dir, witnessing),
            ):
                heartbeats.start()
                archive.start()  # monthly packages: catches up missed months now, then on archive.schedule
                log.info(
                    "capture running",
                    extra={
                        "version": __version__,
                        "sources": [t.get_name() for t in tasks],
                        "data_dir": str(data_dir),
                        "log_id": keys.log_id.hex(),
                        "log_size": store.size,
                        "writer_lock": str(data_dir / "writer.lock"),
                        "pid": os.getpid(),
                        "heartbeat_minutes": settings.storage.heartbeat_minutes,
                        "archive_schedule": settings.archive.schedule,
                    },
                )
                try:
                    await supervise(tasks, stop, retries)
                finally:
                    await heartbeats.stop()
                    await archive.stop()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                note = await store.checkpoint()
            except StorageError as exc:
                log.error("ALERT could not seal the log at stop; the next start seals it", extra={"error": str(exc)})
            else:
                sealed_size = int(note.split("\n", 2)[1])
                log.info("capture stopped; log sealed", extra={"log_size": store.size, "sealed_size": sealed_size})
            if witnessing is not None:
                await witnessing.finish()


class _WitnessTask:
    """The witnessing loop beside capture; at stop, one last round (bounded) for the final checkpoint."""

    def __init__(self, witnessing: Witnessing, store: CosignatureStore, stop: asyncio.Event) -> None:
        self.witnessing = witnessing
        self.store = store
        self.task = asyncio.create_task(witnessing.run(stop), name="witness")

    async def finish(self, timeout: float = 10.0) -> None:
        await asyncio.gather(self.task, return_exceptions=True)
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.wait_for(self.witnessing.sync_once(session, force=True), timeout)
        except Exception as exc:  # the next start catches up
            log.warning("final witnessing round failed", extra={"error": str(exc)})
        finally:
            self.store.close()


def witness_targets(settings: Settings) -> list[tuple[str, Verifier]]:
    """(url, key) of each configured witness; ConfigError for a key that is not a cosignature vkey."""
    w = settings.witness
    if w is None:
        return []
    try:
        targets = [(url, parse_vkey(key)) for url, key in zip(w.urls, w.public_keys, strict=True)]
    except NoteError as exc:
        raise ConfigError(f"[witness] public_keys: {exc}") from None
    for _, key in targets:
        if key.alg != ALG_COSIGNATURE_V1:
            raise ConfigError(f"[witness] public_keys: {key.name} is not a witness cosignature key (type 0x04)")
    return targets


def witness_task(
    settings: Settings,
    targets: list[tuple[str, Verifier]],
    data_dir: Path,
    keys: KeyMaterial,
    store: LogStore,
    stop: asyncio.Event,
) -> _WitnessTask | None:
    """Start asking the configured witnesses (None when [witness] is absent: today's behaviour)."""
    w = settings.witness
    if w is None:
        return None
    cosigned = CosignatureStore(data_dir)

    def leaves(start: int, end: int) -> list[bytes]:  # in a worker thread: its own read-only connection
        with LogView(data_dir, keys) as view:
            return [leaf for _, leaf in view.leaves(start, end)]

    witnessing = Witnessing(
        targets, cosigned, store.latest_checkpoint, leaves,
        quorum=w.quorum, poll_seconds=w.poll_seconds, retry_max=w.retry_max_seconds, timeout=w.timeout_seconds,
    )  # fmt: skip
    store.on_checkpoint = witnessing.wake  # a signed checkpoint wakes the client; sealing never waits for it
    return _WitnessTask(witnessing, cosigned, stop)


def witness_vitals(base: Vitals, task: _WitnessTask) -> Vitals:
    """`base` with the witness fields: per witness what it last cosigned, the quorum now, the witnessed size."""
    found = [WitnessVital(t.key.name, *(task.store.latest(t.key.vkey) or (0, None))) for t in task.witnessing.targets]
    sizes = sorted((w.cosigned_size for w in found), reverse=True)
    quorum = task.witnessing.quorum
    return dataclasses.replace(
        base,
        witnesses=tuple(found),
        witness_quorum_met=task.witnessing.witnessed,
        witnessed_size=sizes[quorum - 1] if 0 < quorum <= len(sizes) else 0,
    )


@contextlib.asynccontextmanager
async def serve_metrics(
    settings: Settings,
    metrics: CaptureMetrics | None,
    store: LogStore,
    tasks: Sequence[asyncio.Task[None]],
    heartbeats: Heartbeats,
    archive: ArchiveJobs,
    data_dir: Path,
    witnessing: _WitnessTask | None = None,
) -> AsyncIterator[None]:
    """/metrics and /healthz while capture runs (nothing when `[metrics] enabled` is false)."""
    if metrics is None:
        yield
        return
    tz = zone(settings.archive.timezone)

    async def vitals() -> Vitals:
        note = await store.latest_checkpoint()
        sealed, at_ms = 0, None
        if note is not None:
            cp, _ = checkpoint_note.parse_checkpoint_note(note)
            sealed, at_ms = cp.size, cp.timestamp_ms
        last = archive.last_month
        base = Vitals(
            records=store.size,
            sealed=sealed,
            checkpoint_ms=at_ms,
            heartbeats=heartbeats.beats,
            last_package_end_ms=None if last is None else first_instant_ms(last.next(), tz),
            package_months_failed=len(archive.failed),
            stopped_sources=tuple(t.get_name() for t in tasks if t.done()),
            running_sources=tuple(t.get_name() for t in tasks if not t.done()),
        )
        return base if witnessing is None else witness_vitals(base, witnessing)

    m = settings.metrics
    try:
        server = await MetricsServer(m.host, m.port, metrics, vitals, data_dir).__aenter__()
    except OSError as exc:
        raise UsageError(
            f"metrics.listen {m.listen} cannot be served: {exc.strerror}; choose another port or set"
            " [metrics] enabled = false"
        ) from None
    alerts = AlertCounter(metrics)
    logging.getLogger("bridge").addHandler(alerts)
    try:
        yield
    finally:
        logging.getLogger("bridge").removeHandler(alerts)
        await server.__aexit__(None, None, None)


#: How often a standby tries the writer lock (PostgreSQL frees it the moment the active bot's session ends).
STANDBY_POLL_SECONDS = 0.5


async def open_store(settings: Settings, data_dir: Path, keys: KeyMaterial, stop: asyncio.Event) -> LogStore | None:
    """The log's writer; a standby (`[storage] standby = true`) waits for the writer lock until it gets it (then
    opens the store from what is committed, so it continues exactly where the active bot's last commit ended)
    or until `stop` (None)."""
    waiting = False
    while True:
        try:
            store = await LogStore.open(data_dir, keys, checkpoint_policy(settings))
        except PgWriterBusy as busy:
            if not settings.storage.standby:
                raise UsageError(f"{busy}; one active bot per log") from None
            if not waiting:
                log.info("standby: waiting for the writer lock", extra={"holder": busy.holder or "unknown"})
                waiting = True
        except WriterBusy as busy:
            who = f"process {busy.pid}" if busy.pid is not None else "another process"
            raise UsageError(
                f"{who} already writes the log in {data_dir} (lock {data_dir / 'writer.lock'}); one bot per data dir"
                " (import, withhold, rotate-key and snapshot hand their work to it)"
            ) from None
        else:
            if waiting:
                log.warning("standby: took over the writer lock; continuing from the log", extra={"size": store.size})
            return store
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STANDBY_POLL_SECONDS)
        if stop.is_set():
            return None


async def record_restart_gap(store: LogStore, data_dir: Path, keys: KeyMaterial) -> None:
    """The bot was not running between its log's last record and now: record that span (bridge.liveness)."""

    def last() -> tuple[int, int] | None:
        with LogView(data_dir, keys) as view:
            return view.last_appended()

    found = await asyncio.to_thread(last)
    if found is None:
        return
    seq, last_ms = found
    gap = restart_gap(last_ms, now_ms(), seq)
    await store.append_events([gap])
    log.warning(
        "capture gap recorded: the bot was not running",
        extra={"gap_start_ms": gap.content["gap_start_ms"], "gap_end_ms": gap.content["gap_end_ms"]},
    )


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop`: sources finish the batch in hand and save their cursor."""
    if sys.platform == "win32":  # the loop has no signal handlers there; Ctrl+C still interrupts
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def disable_core_dumps() -> None:
    """No core file may hold the keys or decrypted chats: RLIMIT_CORE 0, and not dumpable (Linux)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_dumpable = 4
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)


def checkpoint_policy(settings: Settings) -> CheckpointPolicy:
    s = settings.storage
    return CheckpointPolicy(every_records=s.checkpoint_every_records, every_seconds=s.checkpoint_every_seconds)


def archive_options(settings: Settings) -> ArchiveOptions:
    """What packages say about their owner; a UsageError when the config names none."""
    o = settings.organisation
    if o is None:
        raise UsageError(
            "no [organisation] in the config: packages must name the archive's owner; add [organisation] with"
            ' name = "Ministerie van …" and archive_creator_id = "…" (see config/chatarchief.example.toml)'
        )
    org = Organisation(o.name, o.archive_creator_id, o.appraisal, o.retention_years)
    return ArchiveOptions(org, settings.archive.timezone)


def worm_destination(
    settings: Settings, data_dir: Path, keys: KeyMaterial, destination: S3Destination | None = None
) -> WormDestination | None:
    """The `s3://` destination of the config (or `destination`, from `snapshot --out`); None for a folder."""
    a = settings.archive
    dest = destination if destination is not None else a.destination
    if not isinstance(dest, S3Destination):
        return None
    if a.retention_days is None:
        raise ConfigError(f"{dest.url}: set archive.retention_days (how long each package is locked)")
    creds = read_credentials(a.s3_credentials_file) if a.s3_credentials_file is not None else None
    conn = Connection(dest.bucket, a.s3_endpoint, a.s3_region, creds)
    options = WormOptions(conn, dest.prefix, a.retention_days, a.object_lock_mode, a.keep_local, a.upload_attempts)
    return WormDestination(options, data_dir, (keys.key_name, keys.public_key))


async def check_worm(worm: WormDestination) -> None:
    """At start: a bucket without object lock (or missing, or refusing us) stops `run` (ConfigError);
    one that cannot be reached now is an ALERT only: capture must not wait for the archive's storage."""
    try:
        await worm.check()
    except StorageError as exc:
        log.error(
            "ALERT archive destination unreachable at start; packages wait in the outbox",
            extra={"destination": worm.url, "error": str(exc)},
        )


def matrix_source_config(settings: Settings, data_dir: Path, keys: KeyMaterial) -> MatrixSourceConfig:
    m = settings.matrix
    assert m is not None
    return MatrixSourceConfig(
        homeserver=m.homeserver,
        store_dir=m.store_dir or data_dir / "matrix-store",
        pickle_key=keys.derive("matrix-nio-store"),
        user_id=m.user_id,
        password_file=m.password_file,
        access_token_file=m.access_token_file,
        device_name=m.device_name,
        allowed_inviters=frozenset(m.allowed_inviters),
        rooms=frozenset(m.rooms),
        max_media_bytes=m.max_media_bytes,
        sync_timeout_ms=m.sync_timeout_ms,
        spool_dir=m.spool_dir,
        spool_key=spool_private_key(keys) if m.spool_dir is not None else None,
    )


def spool_private_key(keys: KeyMaterial) -> X25519PrivateKey:
    """The bot's X25519 key that opens the Synapse module's sealed spool: derived from the key material (HKDF,
    as nio's store key), so it is as safe and as backed up as the key file, and stable across `rotate-key`."""
    return X25519PrivateKey.from_private_bytes(keys.derive("matrix-spool-x25519"))


def signal_source_config(settings: Settings) -> SignalSourceConfig:
    s = settings.signal
    assert s is not None
    return SignalSourceConfig(
        endpoint=s.endpoint,
        account=s.account,
        receive_mode=s.receive_mode,
        attachments_dir=s.attachments_dir,
        max_media_bytes=s.max_media_bytes,
        max_message_bytes=s.max_message_bytes,
        max_disconnected_seconds=s.max_disconnected_seconds,
    )
