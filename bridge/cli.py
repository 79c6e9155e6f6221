"""The `chatarchief` command line: parse, call, print. No logic lives here.

Contract (other tools script against it; see DESIGN.md): exit 0 on success, 1
when the log or a package is tampered with or inconsistent (first bad record
named), 2 for usage and configuration errors (one line on stderr naming what is
wrong and how to fix it). Tracebacks are never the user interface; set
CHATARCHIEF_DEBUG=1 to see one for an unexpected internal error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from bridge import cli_witness, config
from bridge.errors import ChatarchiefError, LogIntegrityError, UsageError
from bridge.importer import ImportFormat, import_file
from bridge.log import db
from bridge.log import keys as keyfile
from bridge.log.keys import KeyMaterial, check_permissions
from bridge.log.store import CheckpointPolicy, initialise
from bridge.log.verify import verify_log
from bridge.log.writer import check_private_dir, open_writer

if TYPE_CHECKING:  # aiobotocore loads only for an s3:// destination
    from bridge.worm.publish import Receipt as WormReceipt
    from bridge.worm.publish import WormDestination

app = typer.Typer(
    name="chatarchief",
    help="Archive officials' business chats into an encrypted, tamper-evident log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain one-line usage errors and help, no boxes
)
# Markup off by default: paths and messages may hold "[...]"; the few coloured words opt in (`markup=True`).
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", metavar="FILE", help="TOML config file (flags override it).")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", metavar="DIR", help="Directory holding the log.")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the report (or the failure: check, record, evidence) as JSON on stdout.")
]
KeyFileOpt = Annotated[
    Path | None, typer.Option("--key-file", metavar="FILE", help="Key file (kept outside the data dir).")
]


def _fail(message: str, code: int) -> NoReturn:
    for line in message.splitlines() or [message]:
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn: Callable[[], T], *, as_json: bool = False) -> T:
    """Turn our errors into one line and an exit code; never a traceback.

    The one place the CLI handles errors: commands call through it and never catch
    on their own. With `as_json`, an integrity failure is also printed on stdout as
    a JSON object (`LogIntegrityError.to_json`: the check, record, reason and evidence).
    """
    try:
        return fn()
    except LogIntegrityError as exc:
        if as_json:
            _print_json(exc.to_json())
        err.print(f"[bold red]TAMPERED:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        raise typer.Exit(1) from None
    except UsageError as exc:
        _fail(str(exc), 2)
    except ChatarchiefError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:  # a file the operator named cannot be read or written: usage, not tampering
        if os.environ.get("CHATARCHIEF_DEBUG"):
            raise
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".strip(": "), 2)


def _require(condition: bool, message: str) -> None:
    """A usage error a command finds itself goes through `_guard` like every other."""

    def check() -> None:
        if not condition:
            raise UsageError(message)

    _guard(check)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _version(value: bool) -> None:
    if value:
        out.print(f"chatarchief {_installed_version()}")
        raise typer.Exit(0)


def _installed_version() -> str:
    try:
        return metadata.version("chatarchief")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Archive officials' business chats into an encrypted, tamper-evident log."""


def _print_json(value: dict[str, object]) -> None:
    typer.echo(json.dumps(value, sort_keys=True))


def _run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return _guard(lambda: asyncio.run(coro()))


def _settings(path: Path | None) -> config.Settings:
    return _guard(lambda: config.load(path))


def _paths(
    settings: config.Settings, data_dir: Path | None, key_file: Path | None, need_key: bool = True
) -> tuple[Path, Path | None]:
    def resolve() -> tuple[Path, Path | None]:
        dd = data_dir or settings.storage.data_dir
        kf = key_file or settings.storage.key_file
        if need_key and kf is None:
            raise UsageError("a key file is needed: pass --key-file PATH or set storage.key_file in the config")
        return dd, kf

    return _guard(resolve)


def _load_keys(key_file: Path, data_dir: Path, signing_key: Path | None = None) -> KeyMaterial:
    def load() -> KeyMaterial:
        keyfile.ensure_outside(key_file, data_dir)
        check_private_dir(key_file.parent, "key directory")
        if signing_key is not None:
            keyfile.ensure_outside(signing_key, data_dir)
        return keyfile.load(key_file, signing_key)

    return _guard(load)


def _open_keys(
    config_file: Path | None, data_dir: Path | None, key_file: Path | None
) -> tuple[config.Settings, Path, KeyMaterial]:
    """Config, data dir and key material for a command that needs the key file."""
    settings = _settings(config_file)
    dd, kf = _paths(settings, data_dir, key_file)
    assert kf is not None
    if config_file is not None:
        _guard(lambda: db.check_configured(dd, settings.storage.backend, _pg_target(settings)))
    return settings, dd, _load_keys(kf, dd, settings.storage.signing_key_file)


def _pg_target(settings: config.Settings) -> db.PgTarget | None:
    """The configured PostgreSQL log (DSN checked: no password in it), None for SQLite."""
    s = settings.storage
    if s.backend != "postgresql" or s.dsn is None:
        return None
    dsn = s.dsn
    return _guard(lambda: db.PgTarget.checked(dsn, s.password_file))


def _via(pid: int | None) -> str:
    return f" (through the running bot, process {pid})" if pid is not None else ""


def _policy(settings: config.Settings) -> CheckpointPolicy:
    s = settings.storage
    return CheckpointPolicy(every_records=s.checkpoint_every_records, every_seconds=s.checkpoint_every_seconds)


SigningKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--signing-key", metavar="FILE", help="The checkpoint signing key's own file (default KEY_FILE.signing)."
    ),
]


@app.command()
def init(
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
    signing_key: SigningKeyOpt = None,
) -> None:
    """Create keys and an empty log. Never overwrites; writes the public key to KEY_FILE.pub.

    The key-encryption key goes to KEY_FILE, the Ed25519 signing key to its own file (both 0600).
    """
    settings = _settings(config_file)
    dd, kf = _paths(settings, data_dir, key_file)
    assert kf is not None
    sk = signing_key or settings.storage.signing_key_file or keyfile.signing_path(kf)
    pg = _pg_target(settings)

    def create() -> tuple[KeyMaterial, Path]:
        keyfile.ensure_outside(kf, dd)
        keyfile.ensure_outside(sk, dd)
        if db.backend_of(dd) is not None:
            raise UsageError(f"{dd} already holds a log; refusing to overwrite it")
        if pg is not None and pg.password_file is not None:
            check_permissions(pg.password_file, "PostgreSQL password file")
        for path in (kf, sk):
            if path.exists():
                raise UsageError(f"{path} already exists; refusing to overwrite a key file")
        kf.parent.mkdir(parents=True, exist_ok=True)
        sk.parent.mkdir(parents=True, exist_ok=True)
        material = keyfile.generate(os.urandom(16))
        pub = keyfile.write_new(kf, material, sk)
        initialise(dd, material, pg)
        return material, pub

    material, pub = _guard(create)
    out.print(f"created log {material.log_id.hex()} in {dd if pg is None else pg.describe()}")
    out.print(f"key file:   {kf} (mode 0600; keep a copy in escrow, never inside the data dir)")
    out.print(f"signing key: {sk} (mode 0600; signs checkpoints; hold it apart from the key file where you can)")
    out.print(f"public key: {pub}")
    out.print(f"            {material.vkey()}")


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="File to import, one event per line.")],
    fmt: Annotated[
        ImportFormat, typer.Option("--format", metavar="FORMAT", help="Input format.")
    ] = ImportFormat.MATRIX_JSONL,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Append events from a file; bad lines are kept as `unknown`. Ends with a signed checkpoint."""
    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    _require(file.is_file(), f"{file} is not a readable file")
    total = file.stat().st_size

    async def go() -> tuple[Any, int | None]:
        async with open_writer(dd, material, _policy(settings)) as writer:
            if not err.is_terminal:
                return await import_file(writer, file, fmt), writer.remote_pid
            columns = (TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err, transient=True) as bar:
                task = bar.add_task("import", total=total)
                counts = await import_file(writer, file, fmt, lambda n: bar.update(task, completed=n))
                return counts, writer.remote_pid

    counts, pid = _run(go)
    out.print(
        f"imported {counts.lines} lines: appended {counts.appended}, duplicates {counts.duplicates},"
        f" unknown {counts.unknown}{_via(pid)}"
    )


@app.command()
def verify(
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", metavar="FILE", help="Expected signing key (.pub); default: the log's own."),
    ] = None,
    pinned: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint", metavar="NOTE", help="A checkpoint note kept outside the data dir that the log must extend."
        ),
    ] = None,
    allow_unsealed: Annotated[
        bool,
        typer.Option(
            "--allow-unsealed", help="Keyless: accept records after the last checkpoint (beside a running bot)."
        ),
    ] = False,
    config_file: ConfigOpt = None,
    as_json: JsonOpt = False,
    witness_key: cli_witness.WitnessKeyOpt = None,
    quorum: cli_witness.QuorumOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            help="Processes checking records (default: the usable CPUs; 1: this one only).",
        ),
    ] = None,
) -> None:
    """Check integrity, order and checkpoints (with --key-file: decrypt and check every record too).

    Exit 0 intact, 1 tampered or inconsistent (first bad record named), 2 usage error.
    """
    settings = _settings(config_file)
    dd, kf = _paths(settings, data_dir, key_file, need_key=False)
    material = _load_keys(kf, dd) if kf is not None else None
    pub = _guard(lambda: keyfile.load_public(public_key)) if public_key is not None else None
    anchors = [_guard(partial(Path.read_text, p, "utf-8")) for p in pinned or []]
    witnesses, need = _guard(lambda: cli_witness.witness_verifiers(witness_key, quorum))
    report = _guard(
        lambda: verify_log(dd, material, pub, anchors=anchors, allow_unsealed=allow_unsealed, workers=workers),
        as_json=as_json,
    )
    cosigners: list[str] = []
    if witnesses:
        text = report.newest_checkpoint
        cosigners = _guard(lambda: cli_witness.check_log_witnessed(dd, text, witnesses, need), as_json=as_json)
    if as_json:
        _print_json({**report.to_json(), **({"witnessed_by": cosigners} if witnesses else {})})
        return
    out.print(
        f"[green]intact[/]: {report.records} records, {_count(report.checkpoints, 'signed checkpoint')}", markup=True
    )
    out.print(f"root {report.root.hex()} signed by {report.signer}")
    if report.rotations:
        at = ", ".join(str(s) for s in report.rotations)
        out.print(f"signing key rotated at record {at}: each rotation checked from the pinned key")
    if witnesses:
        size = report.newest_checkpoint.split("\n", 2)[1]
        out.print(f"witnessed: checkpoint {size} cosigned by {', '.join(cosigners)} (quorum {need})")
    if report.decrypted is not None:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items())) or "none"
        out.print(f"decrypted and checked {report.decrypted} records ({kinds})")
    else:
        out.print("records not decrypted (no --key-file): integrity, order and signatures only")
    if public_key is None and material is None:
        out.print("[yellow]note[/]: checked against the log's own public key; pass --public-key to pin it", markup=True)
    if report.unsealed:
        how = "authenticated with the key" if material is not None else "NOT vouched for (--allow-unsealed)"
        out.print(
            f"[yellow]note[/]: {report.unsealed} records after the last checkpoint are not sealed yet, {how}"
            " (a running bot or a crash leaves these; the next writer seals them)",
            markup=True,
        )


@app.command()
def run(config_file: ConfigOpt = None, data_dir: DataDirOpt = None, key_file: KeyFileOpt = None) -> None:
    """Run the bot: capture the configured sources until SIGTERM/SIGINT, then seal the log."""
    _require(config_file is not None, "run needs --config FILE (see config/chatarchief.example.toml)")
    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    from bridge import app as wiring
    from bridge import logs

    wiring.disable_core_dumps()  # the process holds the keys and decrypted chats
    logs.setup(settings.logging.level, settings.logging.format)

    async def go() -> None:
        stop = asyncio.Event()
        wiring.install_stop_signals(stop)
        await wiring.run(settings, dd, material, stop)

    _run(go)


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Work directory (wiped at the next demo).")
    ] = Path("demo-data"),
) -> None:
    """Throwaway Synapse + archive bot + demo officials, end to end; prints what was captured."""
    from bridge import demo as demo_module

    _guard(lambda: demo_module.main(workdir, out))


@app.command("migrate-store")
def migrate_store(
    to: Annotated[str, typer.Option("--to", metavar="DSN", help="The PostgreSQL log: a libpq DSN, no password.")],
    config_file: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    password_file: Annotated[
        Path | None, typer.Option("--password-file", metavar="FILE", help="The PostgreSQL password, alone in a file.")
    ] = None,
    new_data_dir: Annotated[
        Path | None,
        typer.Option(
            "--new-data-dir", metavar="DIR", help="Data dir of the PostgreSQL log (default DATA_DIR.postgresql)."
        ),
    ] = None,
) -> None:
    """Copy a SQLite log into an empty PostgreSQL schema and prove both have the same signed root.

    Stop the bot first (the SQLite writer lock is held during the copy). Nothing is re-encrypted or re-signed.
    """
    from bridge.log.migrate import migrate_to_postgresql

    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    pw = password_file or settings.storage.password_file
    if pw is not None:
        _guard(lambda: check_permissions(pw, "PostgreSQL password file"))
    target = _guard(lambda: db.PgTarget.checked(to, pw))
    new_dd = new_data_dir or dd.with_name(dd.name + ".postgresql")
    done = _guard(lambda: migrate_to_postgresql(dd, target, new_dd, material))
    copied = ", ".join(f"{table} {n}" for table, n in done.rows.items())
    out.print(f"copied {copied} into {target.describe()}")
    out.print(f"same signed root: {done.target.records} records, root {done.target.root.hex()} (verified on both)")
    out.print(f"the PostgreSQL log's data dir: {new_dd} (media blobs copied; the SQLite log is untouched)")
    out.print(
        f'switch: set [storage] data_dir = "{new_dd}", backend = "postgresql", dsn and password_file; start the bot'
    )


@app.command("rotate-key")
def rotate_key(data_dir: DataDirOpt = None, key_file: KeyFileOpt = None, config_file: ConfigOpt = None) -> None:
    """Start a new data key; records already written stay readable with their old key."""
    _, dd, material = _open_keys(config_file, data_dir, key_file)

    async def go() -> tuple[int, int | None]:
        async with open_writer(dd, material) as writer:
            return await writer.rotate_data_key(), writer.remote_pid

    key_id, pid = _run(go)
    out.print(f"new data key {key_id} is now used for new records{_via(pid)}")


@app.command("rotate-signing-key")
def rotate_signing_key(
    new_signing_key: Annotated[
        Path,
        typer.Option(
            "--new-signing-key",
            metavar="FILE",
            help="The new signing key file (0600); made, with FILE.pub, when it does not exist.",
        ),
    ],
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
    signing_key: SigningKeyOpt = None,
) -> None:
    """Hand checkpoint signing over to a new key: a record signed by the old and the new key, under the proof.

    Works beside a running bot (it does the rotation). Afterwards point storage.signing_key_file at the new
    file, give FILE.pub to the witness operators, and destroy the old signing key.
    """
    settings = _settings(config_file)
    dd, kf = _paths(settings, data_dir, key_file)
    assert kf is not None
    material = _load_keys(kf, dd, signing_key or settings.storage.signing_key_file)

    def prepare() -> bool:
        keyfile.ensure_outside(new_signing_key, dd)
        check_private_dir(new_signing_key.parent, "signing key directory")
        return keyfile.new_signing_key(new_signing_key, material)[1]

    created = _guard(prepare)
    new_file = new_signing_key.absolute()  # a running bot opens it from its own working directory

    async def go() -> tuple[tuple[int, str], int | None]:
        async with open_writer(dd, material) as writer:
            return await writer.rotate_signing_key(new_file), writer.remote_pid

    (seq, vkey), pid = _run(go)
    if created:
        out.print(
            f"new signing key: {new_signing_key} (mode 0600), its public key {keyfile.public_path(new_signing_key)}"
        )
    out.print(f"signing key rotated at record {seq}{_via(pid)}: checkpoints are now signed by")
    out.print(f"            {vkey}")
    out.print(
        f"set storage.signing_key_file = {new_signing_key} (or pass --signing-key) before the next start; give"
        " the new public key to your witnesses' operators; then destroy the old signing key file."
        " Auditors keep pinning the log's original KEY.pub: verify follows the rotation records from it."
    )


@app.command("migrate-signing-key")
def migrate_signing_key_cmd(
    key_file: KeyFileOpt = None, signing_key: SigningKeyOpt = None, config_file: ConfigOpt = None
) -> None:
    """Move the signing key of an older (combined) key file into its own 0600 file; safe to rerun."""
    settings = _settings(config_file)
    kf = key_file or settings.storage.key_file
    _require(kf is not None, "a key file is needed: pass --key-file PATH or set storage.key_file in the config")
    assert kf is not None
    sk = signing_key or settings.storage.signing_key_file

    def migrate() -> tuple[Path, bool]:
        keyfile.ensure_outside(sk or keyfile.signing_path(kf), settings.storage.data_dir)
        return keyfile.migrate_signing_key(kf, sk)

    path, moved = _guard(migrate)
    if moved:
        out.print(f"signing key moved to {path} (0600); {kf} now holds only the key-encryption key")
        out.print("replace the escrow copy of the key file, and escrow the signing key file too")
    else:
        out.print(f"{kf} already keeps the signing key apart ({path}); nothing to do")


def _moment(value: str, tz: str, end_of_day: bool, flag: str) -> int:
    """`YYYY-MM-DD` or an ISO date-time, in the archive's timezone unless it carries an offset; ms UTC."""
    from datetime import date, datetime, timedelta
    from zoneinfo import ZoneInfo

    def parse() -> int:
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
                return int(((start + timedelta(days=1)) if end_of_day else start).timestamp() * 1000)
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{flag} {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(tz))
        return int(moment.timestamp() * 1000)

    return _guard(parse)


@app.command("events")
def events_cmd(
    conversation: Annotated[
        str | None, typer.Option("--conversation", metavar="ID", help="Only this conversation (room id, group id).")
    ] = None,
    sender: Annotated[
        str | None, typer.Option("--sender", metavar="TEXT", help="Sender id contains TEXT (case-insensitive).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DATE", help="Sent on or after (YYYY-MM-DD or ISO date-time).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="DATE", help="Sent before; a plain date includes that whole day."),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", metavar="TEXT", help="Text, captions, poll answers… contain TEXT.")
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", metavar="KIND", help="Only this kind (repeatable): message, edit…")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="Print at most N events (0: all).")] = 200,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List and search events (decrypted in memory, nothing written); ids are printed ready to paste.

    Dates are in archive.timezone (Europe/Amsterdam by default). Exit 0 when something matched, 1 when the
    log fails its checks while being read, 2 for usage errors (and 0 with a note when nothing matched).
    """
    import shlex

    from bridge.events import Kind
    from bridge.search import Query, find, snippet, when_ms

    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    tz = settings.archive.timezone
    known = {k.value: k for k in Kind}
    unknown = [k for k in kind or [] if k not in known]
    _require(not unknown, f"--kind {', '.join(unknown)}: not a kind; one of {', '.join(sorted(known))}")
    _require(limit >= 0, "--limit must be 0 (all) or more")
    query = Query(
        conversation=conversation,
        sender=sender,
        since_ms=_moment(since, tz, False, "--since") if since else None,
        until_ms=_moment(until, tz, True, "--until") if until else None,
        text=text,
        kinds=frozenset(known[k] for k in kind or []),
    )

    def listing() -> tuple[int, bool]:
        from datetime import UTC, datetime
        from zoneinfo import ZoneInfo

        shown, more = 0, False
        zone = ZoneInfo(tz)
        for found in find(dd, material, query):
            if limit and shown == limit:
                more = True
                break
            ev = found.event
            at = datetime.fromtimestamp(when_ms(ev) / 1000, UTC).astimezone(zone)
            if as_json:
                row = {
                    "seq": found.seq,
                    "source": ev.source,
                    "conversation": ev.conversation,
                    "event_id": ev.event_id,
                    "kind": ev.kind.value,
                    "sender": ev.sender,
                    "sent_at": ev.sent_at,
                    "received_at": ev.received_at,
                    "text": snippet(ev, 200),
                }
                typer.echo(json.dumps(row, ensure_ascii=False, sort_keys=True))
            else:
                out.print(
                    f"{found.seq:>6}  {at:%Y-%m-%d %H:%M}  {ev.kind.value:<13} {ev.sender or '-'}  "
                    f"{shlex.quote(ev.event_id)} --conversation {shlex.quote(ev.conversation)}  {snippet(ev)}",
                    highlight=False,
                )
            shown += 1
        return shown, more

    shown, more = _guard(listing)
    if not as_json:
        if shown == 0:
            err.print("no events match")
        elif more:
            err.print(f"first {_count(shown, 'event')} shown; narrow the search or pass --limit 0 for all")


@app.command("withhold")
def withhold_cmd(
    event_id: Annotated[
        str, typer.Argument(metavar="EVENT_ID", help="Upstream id of the event (e.g. $abc… for Matrix).")
    ],
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why (shown in the package tombstone).")],
    by: Annotated[str, typer.Option("--by", metavar="NAME", help="Who decides (shown in the package tombstone).")],
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", metavar="ID", help="Conversation id, when the event id is in several."),
    ] = None,
    release: Annotated[bool, typer.Option("--release", help="Undo an earlier withhold (another record).")] = False,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Append a decision record withholding an event from archive packages (or releasing it)."""
    from bridge.withhold import Outcome, withhold

    settings, dd, material = _open_keys(config_file, data_dir, key_file)

    async def go() -> tuple[Outcome, int | None]:
        async with open_writer(dd, material, _policy(settings)) as writer:
            done = await withhold(writer, event_id, reason, by, data_dir=dd, conversation=conversation, release=release)
            return done, writer.remote_pid

    done, pid = _run(go)
    if done.standing is not None:
        s = done.standing
        out.print(
            f"{event_id} in {done.target.conversation} is already withheld: decision record {done.seq} by {s.by}"
            f" ({s.reason}); nothing appended (to change the reason: --release, then withhold again)"
        )
        return
    out.print(f"{'released' if release else 'withheld'} {event_id}: decision record {done.seq}{_via(pid)}")


@app.command()
def snapshot(
    month: Annotated[
        str, typer.Option("--month", metavar="YYYY-MM", help="Calendar month YYYY-MM (archive.timezone).")
    ],
    out_dir: Annotated[
        str,
        typer.Option(
            "--out",
            metavar="DIR|s3://BUCKET/PREFIX",
            help="The package directory to create, or an object-lock bucket (uploaded, read back, verified;"
            " the [archive] s3_* keys and retention_days apply).",
        ),
    ],
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
    allow_missing_media: Annotated[
        bool,
        typer.Option(
            "--allow-missing-media",
            help="Write the package even if media blobs are gone; each absence is listed in the package.",
        ),
    ] = False,
    interim: Annotated[
        bool,
        typer.Option(
            "--interim",
            help="The current month so far, as a final package now (an official leaving office); labelled"
            " interim. The package of the whole month later extends it (verify-package --previous).",
        ),
    ] = False,
) -> None:
    """Write the sealed package (BagIt, MDTO, proofs) of a month that has ended (or, --interim, so far)."""
    from bridge.app import archive_options
    from bridge.archive.package import snapshot as write_snapshot
    from bridge.archive.package import writer_seal
    from bridge.archive.range import parse_month

    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    options = _guard(lambda: archive_options(settings))
    worm = _guard(lambda: _worm_for(out_dir, settings, dd, material))
    out_path = Path(out_dir)
    if worm is not None:
        from bridge.archive.derive import package_name

        out_path = worm.staging(package_name(material.log_id, _guard(lambda: parse_month(month)), interim=interim))
    seal = writer_seal(dd, material)  # bridge.log.writer.seal_at: the running bot signs when it holds the log
    result = _guard(
        lambda: write_snapshot(
            dd,
            material,
            parse_month(month),
            out_path,
            options,
            seal=seal,
            allow_missing_media=allow_missing_media,
            interim=interim,
        )
    )
    from bridge.archive.derive import range_text

    verb = "wrote" if result.written else "already there (identical)"
    label = ", interim: the month so far" if result.status == "open month, interim" else ""
    out.print(f"{verb}: {result.path} ({result.month}{label}, records {range_text(result.start, result.end)})")
    if result.missing_media:
        err.print(f"warning: {result.missing_media} media files missing, listed in data/proof/missing-media.jsonl")
    if worm is not None:
        _print_receipt(_guard(lambda: worm.publish_sync(result.path)), worm.options.keep_local, result.path)


def _worm_for(out_dir: str, settings: config.Settings, dd: Path, material: KeyMaterial) -> WormDestination | None:
    if not out_dir.startswith("s3://"):
        if "://" in out_dir:
            raise UsageError(f"--out {out_dir}: a folder or s3://bucket/prefix")
        return None
    from bridge.app import worm_destination

    try:
        dest = config.parse_s3_url(out_dir)
    except ValueError as exc:
        raise UsageError(f"--out: {exc}") from None
    if settings.archive.retention_days is None:
        raise UsageError(f"--out {out_dir}: set [archive] retention_days in the config (how long packages are locked)")
    return worm_destination(settings, dd, material, dest)


def _print_receipt(receipt: WormReceipt, kept: bool, local: Path) -> None:
    verb = "uploaded" if receipt.uploaded else "already in the bucket (identical)"
    where = f"kept at {local}" if kept else "removed"
    out.print(
        f"{verb}: {receipt.url} version {receipt.version_id}, {receipt.lock_mode} lock until {receipt.retain_until};"
        f" read back and verified (sha256 {receipt.sha256}); local copy {where}"
    )


@app.command("upload")
def upload_cmd(
    package: Annotated[Path, typer.Argument(metavar="PACKAGE", help="A package directory (snapshot wrote it).")],
    destination: Annotated[str, typer.Argument(metavar="s3://BUCKET/PREFIX", help="An object-lock bucket.")],
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Upload a package under object lock, read it back and verify it; the local package is kept."""
    import dataclasses

    from bridge.worm.publish import WormDestination

    settings, dd, material = _open_keys(config_file, data_dir, key_file)
    _require(destination.startswith("s3://"), f"{destination}: the destination must be s3://bucket/prefix")
    _require(package.is_dir(), f"{package} is not a package directory")
    worm = _guard(lambda: _worm_for(destination, settings, dd, material))
    assert worm is not None
    keep = WormDestination(
        dataclasses.replace(worm.options, keep_local=True), dd, (material.key_name, material.public_key)
    )
    _print_receipt(_guard(lambda: keep.publish_sync(package)), True, package)


@app.command("backup")
def backup_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="New folder for the backup (never overwritten).")
    ],
    data_dir: DataDirOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Copy the data dir consistently while `run` writes it (SQLite backup API); the key file is not copied."""
    from bridge.backup import backup

    settings = _settings(config_file)
    dd, _ = _paths(settings, data_dir, None, need_key=False)
    extra: dict[str, Path] = {}
    store = settings.matrix.store_dir if settings.matrix is not None else None
    if store is not None and not store.resolve().is_relative_to(dd.resolve()):
        extra["matrix-store"] = store
    report = _guard(lambda: backup(dd, out_dir, extra))
    out.print(
        f"backup written: {report.out} ({_count(report.records, 'record')}, {_count(report.files, 'file')},"
        f" {report.bytes / 2**20:.1f} MiB); the key file is not in it: keep its escrowed copy apart (docs/keys.md)"
    )


@app.command("verify-package")
def verify_package_cmd(
    path: Annotated[Path, typer.Argument(metavar="PACKAGE", help="The package directory.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", metavar="FILE", help="The log's verifier key (KEY_FILE.pub).")
    ],
    previous: Annotated[
        Path | None,
        typer.Option("--previous", metavar="PACKAGE", help="The previous month's package, to check the chain."),
    ] = None,
    as_json: JsonOpt = False,
    witness_key: cli_witness.WitnessKeyOpt = None,
    quorum: cli_witness.QuorumOpt = None,
) -> None:
    """Check a package with only its public key. Exit 0 intact, 1 not (naming what failed), 2 usage."""
    from bridge.archive.derive import range_text
    from bridge.archive.verify_package import verify_package

    pub = _guard(lambda: keyfile.load_public(public_key))
    witnesses, need = _guard(lambda: cli_witness.witness_verifiers(witness_key, quorum))
    report = _guard(lambda: verify_package(path, pub, previous, witnesses=witnesses, quorum=need), as_json=as_json)
    if as_json:
        _print_json(report.to_json())
        return
    out.print(
        f"[green]intact[/]: {report.month} ({report.status}), records {range_text(report.start, report.end)}"
        f" in {report.record_files} record files, {report.media_files} media, {report.mdto_files} MDTO files valid",
        markup=True,
    )
    out.print(f"end root {report.root.hex()} signed by {pub[0]}")
    if (lv := report.liveness) is not None:
        out.print(
            f"liveness (proof/liveness.json): {_count(lv.gaps, 'capture gap')}, {_count(lv.heartbeats, 'heartbeat')},"
            f" longest silence {lv.longest_silence_ms / 3_600_000:.1f} h, {_count(lv.withheld, 'withheld record')}",
            markup=False,
        )
    if previous is not None:
        out.print(
            f"extends the previous package {previous} (an interim package of the same month, or the month before)"
        )
    if witnesses:
        out.print(f"witnessed: extended by checkpoints cosigned by {', '.join(report.witnessed_by)} (quorum {need})")


cli_witness.register(app, _guard, out)  # `chatarchief witness init|serve`


@app.command()
def coverage(config_file: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Officials' rooms vs the archiver's presence (admin API when the bot is a server admin). Exit 1 if uncovered."""
    _require(config_file is not None, "coverage needs --config FILE (see config/chatarchief.example.toml)")
    settings, dd, material = _open_keys(config_file, None, None)
    from bridge import coverage as cov
    from bridge.log.reader import iter_events

    m = settings.matrix
    _require(m is not None, "coverage needs a [matrix] section in the config")
    assert m is not None
    officials = frozenset(m.officials or m.allowed_inviters)
    _require(bool(officials), "coverage needs matrix.officials (or matrix.allowed_inviters) to know whose rooms")
    opts = cov.CoverageOptions(m.homeserver, m.user_id, officials, m.password_file, m.access_token_file)
    report = _run(lambda: cov.survey(opts))
    stats = _guard(lambda: cov.log_stats(e for _, e in iter_events(dd, material)))
    report = cov.with_log(report, stats)
    if as_json:
        _print_json(report.to_json())
    else:
        out.print(
            f"{len(report.rooms)} official room(s) ({report.via.replace('_', ' ')}); uncovered: {len(report.uncovered)}"
        )
        for r in report.rooms:
            mark = "[green]covered[/]" if r.covered else "[bold red]UNCOVERED[/]"
            out.print(
                f"{mark} {r.room_id} {'encrypted' if r.encrypted else 'plain'} officials={','.join(r.officials)}"
                f" archiver={r.archiver_membership} since={r.archiver_since_ms} captured={r.log.captured}"
                f" undecryptable={r.log.undecryptable} gaps={r.log.gaps} last={r.log.last_captured_ms}",
                soft_wrap=True,
            )
    if report.uncovered:
        raise typer.Exit(1)


@app.command("spool-key")
def spool_key(config_file: ConfigOpt = None, data_dir: DataDirOpt = None, key_file: KeyFileOpt = None) -> None:
    """Print the bot's X25519 public key for the Synapse module's `spool.public_key` (derived from the key file)."""
    _, _, material = _open_keys(config_file, data_dir, key_file)
    from bridge.app import spool_private_key
    from bridge.sources.matrix.spool import spool_public_key_b64

    out.print(spool_public_key_b64(spool_private_key(material)), soft_wrap=True)


@app.command()
def adopt(config_file: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Bring the archiver into the officials' existing rooms (the bot must be a Synapse server admin).

    Exit 0 when every official room is adopted, 1 when some could not be (named), 2 for usage/config errors."""
    _require(config_file is not None, "adopt needs --config FILE (see config/chatarchief.example.toml)")
    settings = _settings(config_file)
    from bridge import adopt as adoption
    from bridge.coverage import CoverageOptions

    m = settings.matrix
    _require(m is not None, "adopt needs a [matrix] section in the config")
    assert m is not None
    officials = frozenset(m.officials or m.allowed_inviters)
    _require(bool(officials), "adopt needs matrix.officials (or matrix.allowed_inviters) to know whose rooms")
    opts = CoverageOptions(m.homeserver, m.user_id, officials, m.password_file, m.access_token_file)
    report = _run(lambda: adoption.adopt(opts))
    if as_json:
        _print_json(report.to_json())
    else:
        joined = sum(r.outcome == "joined" for r in report.rooms)
        out.print(
            f"{_count(len(report.rooms), 'official room')}: {joined} adopted now, "
            f"{sum(r.outcome == 'already_in' for r in report.rooms)} already covered, {len(report.failed)} failed",
            markup=False,
        )
        for r in report.rooms:
            line = f"{r.outcome.upper()} {r.room_id} {'encrypted' if r.encrypted else 'plain'}"
            if r.reason:
                line += f": {r.reason}"
            if r.undecryptable:
                line += f"; undecryptable before join: {'>=' if r.at_least else ''}{r.undecryptable}"
            out.print(line, markup=False, soft_wrap=True)
            for note in r.notes:
                out.print(f"  - {note}", markup=False, soft_wrap=True)
    for r in report.failed:
        err.print(f"not adopted: {r.room_id}: {r.reason}", markup=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    # Everything we create (log, WAL, blobs, nio store, packages in progress) is private by default.
    os.umask(0o077)
    try:
        app()
    except SystemExit:
        raise
    except BaseException as exc:  # last resort: one line, not a traceback
        if os.environ.get("CHATARCHIEF_DEBUG"):
            raise
        err.print(f"error: internal error ({type(exc).__name__}): {exc}; rerun with CHATARCHIEF_DEBUG=1", markup=False)
        sys.exit(70)


if __name__ == "__main__":
    main()
