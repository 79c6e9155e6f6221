"""`chatarchief demo`: the whole flow on embedded defaults, end to end, in under a minute.

Starts a throwaway Synapse on 127.0.0.1 (from `.venv-synapse`, or the Python
named by CHATARCHIEF_SYNAPSE_PYTHON), registers an archive bot and two demo
officials, creates a fresh log, and runs the real capture pipeline (the same
`bridge.app.run` as `chatarchief run`, logging in token-only). The officials chat
in an encrypted and a plain room: text, a reply, an edit, a deletion, a
reaction and a file. When every sent event is durable in the log, everything is
stopped, the month so far is written as an (interim) archive package and
checked with the public key alone, and the demo prints what was captured, the
results of `verify` and `verify-package`, the transcripts to open, and where
the data lives. Work files go to `./demo-data` (wiped at the next demo
run; a directory not made by the demo is never touched).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bridge import config, logs
from bridge.app import archive_options
from bridge.app import run as run_bot
from bridge.archive.derive import range_text
from bridge.archive.package import SnapshotResult, interim_package
from bridge.archive.verify_package import PackageReport, verify_package
from bridge.dev.officials import Official, make_official, ok, poll_until
from bridge.dev.synapse import SynapseServer, archiver_module_config
from bridge.durable import write_exclusive
from bridge.errors import UsageError
from bridge.events import Event, Kind
from bridge.log import keys as keyfile
from bridge.log.reader import iter_events
from bridge.log.store import initialise
from bridge.log.verify import VerifyReport, verify_log

MARKER = ".chatarchief-demo"
CAPTURE_TIMEOUT = 40.0


@dataclass
class DemoResult:
    workdir: Path
    data_dir: Path
    key_file: Path
    config_file: Path
    sent: dict[str, str] = field(default_factory=dict)  # event id -> room id
    events: list[tuple[int, Event]] = field(default_factory=list)
    report: VerifyReport | None = None
    package: SnapshotResult | None = None
    package_report: PackageReport | None = None
    seconds: float = 0.0


def prepare_workdir(workdir: Path) -> None:
    """Fresh work dir; only ever wipes one that a previous demo made."""
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise UsageError(f"{workdir} exists and was not made by the demo; move it away or pass another --dir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by `chatarchief demo`; deleted by the next demo run\n")


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_exclusive(path, text.encode("utf-8"), 0o600)


def write_config(
    result: DemoResult, server: SynapseServer, bot_id: str, token_file: Path, officials: list[str]
) -> None:
    inviters = ", ".join(f'"{o}"' for o in officials)
    result.config_file.write_text(
        "# Written by `chatarchief demo` for its throwaway homeserver.\n"
        f'[storage]\ndata_dir = "{result.data_dir}"\nkey_file = "{result.key_file}"\n\n'
        f'[matrix]\nhomeserver = "{server.url}"\nuser_id = "{bot_id}"\naccess_token_file = "{token_file}"\n'
        f"allowed_inviters = [{inviters}]\nsync_timeout_ms = 1000\n\n"
        f'[archive]\ndestination = "{result.workdir / "archive"}"\n\n'
        '[organisation]\nname = "Demo-ministerie"\narchive_creator_id = "demo"\n\n'
        '[logging]\nlevel = "WARNING"\nformat = "text"\n'
    )


async def chat(
    minister: Official,
    woordvoerder: Official,
    bot_id: str,
    sent: dict[str, str],
    durable: Callable[[str], Awaitable[None]],
) -> None:
    """The demo conversation: every kind of event the archive must keep.

    The minister deletes a message only once the bot has it (`durable`): the homeserver strips a redacted
    event's content, so a bot that syncs after the deletion (a loaded machine) could only store the stripped
    original. Capturing before any deletion is what the server-side module is for (docs/synapse-module.md)."""
    both = [woordvoerder.user_id, bot_id]
    encrypted = await minister.create_room(encrypted=True, invite=both, name="Overleg Kamerbrief (versleuteld)")
    plain = await minister.create_room(encrypted=False, invite=both, name="Persberichten")
    for room in (encrypted, plain):
        ok(await woordvoerder.client.join(room))
        await minister.wait_member(room, woordvoerder.user_id)
        await minister.wait_member(room, bot_id, timeout=CAPTURE_TIMEOUT)
        await woordvoerder.wait_member(room, bot_id, timeout=CAPTURE_TIMEOUT)

    async def send(who: Official, room: str, content: dict[str, Any], kind: str = "m.room.message") -> str:
        event_id = await who.send(room, content, kind)
        sent[event_id] = room
        return event_id

    for room, secure in ((encrypted, True), (plain, False)):
        ask = await send(minister, room, {"msgtype": "m.text", "body": "Kun je de Kamerbrief voor morgen klaarzetten?"})
        reply = await send(
            woordvoerder,
            room,
            {
                "msgtype": "m.text",
                "body": "Ja, concept volgt vanmiddag.",
                "format": "org.matrix.custom.html",
                "formatted_body": "Ja, <b>concept</b> volgt vanmiddag.",
                "m.relates_to": {"m.in_reply_to": {"event_id": ask}},
            },
        )
        await send(
            woordvoerder,
            room,
            {
                "msgtype": "m.text",
                "body": "* Ja, concept volgt om 15:00.",
                "m.new_content": {"msgtype": "m.text", "body": "Ja, concept volgt om 15:00."},
                "m.relates_to": {"rel_type": "m.replace", "event_id": reply},
            },
        )
        await send(
            minister, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}}, "m.reaction"
        )
        await send(woordvoerder, room, await upload(woordvoerder, secure))
        oops = await send(minister, room, {"msgtype": "m.text", "body": "Dit had ik niet moeten sturen."})
        await durable(oops)
        redaction = ok(await minister.client.room_redact(room, oops, reason="verkeerde chat"))
        sent[str(redaction.event_id)] = room


async def upload(who: Official, encrypt: bool) -> dict[str, Any]:
    data = b"%PDF-1.4\n% concept Kamerbrief (demo)\n" + os.urandom(2048)
    name = "concept-kamerbrief.pdf"
    response, decryption = await who.client.upload(
        lambda *_: io.BytesIO(data), content_type="application/pdf", filename=name, encrypt=encrypt, filesize=len(data)
    )
    content: dict[str, Any] = {
        "msgtype": "m.file",
        "body": name,
        "filename": name,
        "info": {"mimetype": "application/pdf", "size": len(data)},
    }
    uri = ok(response).content_uri
    if encrypt:
        content["file"] = {**(decryption or {}), "url": uri}
    else:
        content["url"] = uri
    return content


async def run_demo(workdir: Path) -> DemoResult:
    """Run the demo in `workdir` (an absolute path; see `main`)."""
    started = time.monotonic()
    prepare_workdir(workdir)
    result = DemoResult(workdir, workdir / "data", workdir / "secrets" / "demo.key", workdir / "chatarchief.toml")
    # Chatarchief's Synapse module puts the archive bot into every room the officials create (synapse-module/).
    module = archiver_module_config("@archief:localhost", officials=("@minister:localhost", "@woordvoerder:localhost"))
    server = SynapseServer(workdir / "synapse", archiver_module=module)
    await asyncio.to_thread(server.start)
    officials: list[Official] = []
    stop = asyncio.Event()
    bot: asyncio.Task[None] | None = None
    try:
        bot_id, bot_token = await server.register_user_async("archief", os.urandom(16).hex())
        token_file = workdir / "secrets" / "archief.token"
        write_secret(token_file, bot_token)
        for name in ("minister", "woordvoerder"):
            officials.append(await make_official(server, workdir / "officials", name=name))
        material = keyfile.generate(os.urandom(16))
        keyfile.write_new(result.key_file, material)
        initialise(result.data_dir, material)
        write_config(result, server, bot_id, token_file, [o.user_id for o in officials])
        settings = config.load(result.config_file)
        bot = asyncio.create_task(run_bot(settings, result.data_dir, material, stop))
        # The module joins the bot at room creation, so wait until its device has keys: messages sent before
        # that could never be decrypted by it (docs/synapse-module.md, "Operating").
        token = officials[0].client.access_token

        async def bot_ready() -> bool:
            if bot is not None and bot.done():
                bot.result()
            return await asyncio.to_thread(server.has_device_keys, token, bot_id)

        await poll_until(bot_ready, timeout=CAPTURE_TIMEOUT, interval=0.2)

        def holds(wanted: set[str]) -> bool:
            if bot is not None and bot.done():
                bot.result()  # surface the bot's error instead of waiting for the timeout
            return wanted <= {e.event_id for _, e in iter_events(result.data_dir, material)}

        async def durable(event_id: str) -> None:
            await poll_until(lambda: holds({event_id}), timeout=CAPTURE_TIMEOUT, interval=0.1)

        await chat(officials[0], officials[1], bot_id, result.sent, durable)
        await poll_until(lambda: holds(set(result.sent)), timeout=CAPTURE_TIMEOUT, interval=0.3)
        stop.set()
        await bot
        result.events = list(iter_events(result.data_dir, material))
        result.report = verify_log(result.data_dir, material)
        # The month is still open: write the package of the month so far (labelled interim),
        # then check it as an archivist would, with the public key only.
        options = archive_options(settings)
        folder = settings.archive.destination
        assert isinstance(folder, Path), "the demo writes its own config with a folder destination"
        result.package = interim_package(result.data_dir, material, options, folder)
        public = keyfile.load_public(keyfile.public_path(result.key_file))
        result.package_report = verify_package(result.package.path, public)
    finally:
        stop.set()
        if bot is not None and not bot.done():
            bot.cancel()
            await asyncio.gather(bot, return_exceptions=True)
        for person in officials:
            await person.client.close()
        await asyncio.to_thread(server.stop)
        shutil.rmtree(workdir / "officials", ignore_errors=True)  # the officials' own devices; not the archive
    result.seconds = time.monotonic() - started
    return result


def describe(event: Event) -> str:
    c = event.content
    if event.kind in (Kind.MESSAGE, Kind.EDIT):
        prefix = "edit of an earlier message: " if event.kind is Kind.EDIT else ""
        return prefix + str(c.get("body", ""))[:60]
    if event.kind is Kind.DELETION:
        return f"deleted {event.relates_to} (the original stays in the archive)"
    if event.kind is Kind.REACTION:
        return f"reacted {c.get('key')}"
    if event.kind is Kind.ATTACHMENT and event.attachments:
        a = event.attachments[0]
        return f"file {a.filename} ({a.size} bytes, {a.status}, sha256 {str(a.sha256)[:12]}…)"
    if event.kind is Kind.MEMBERSHIP:
        return f"{c.get('target')} {c.get('membership')}"
    if event.kind is Kind.STATE:
        return str(c.get("type"))
    return event.kind.value


def command_name() -> str:
    """How the operator invoked us (e.g. `.venv/bin/chatarchief`), so the hint works when pasted."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "chatarchief":
        return "chatarchief"
    try:
        return str(argv0.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0)


def print_result(result: DemoResult, console: Console) -> None:
    table = Table(title="Captured in the archive (decrypted for display)", show_lines=False)
    for column in ("seq", "room", "kind", "sender", "what"):
        table.add_column(column)
    rooms = {
        e.conversation: str(e.content.get("content", {}).get("name", ""))
        for _, e in result.events
        if e.kind is Kind.STATE and e.content.get("type") == "m.room.name"
    }
    for seq, event in result.events:
        if event.kind in (Kind.MEMBERSHIP, Kind.STATE):
            continue
        label = rooms.get(event.conversation) or event.conversation
        sender = (event.sender or "").split(":")[0]
        table.add_row(str(seq), label, event.kind.value, sender, describe(event))
    console.print(table)
    kinds = Counter(e.kind.value for _, e in result.events)
    console.print("all records by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    encrypted = sum(1 for _, e in result.events if "encryption" in e.content)
    console.print(f"{encrypted} events arrived end-to-end encrypted and were decrypted by the bot's own device")
    report = result.report
    assert report is not None
    console.print(
        f"[green]verify: intact[/] — {report.records} records, {report.checkpoints} signed checkpoints,"
        f" all decrypted and checked; root {report.root.hex()[:16]}…",
        markup=True,
    )
    package, checked = result.package, result.package_report
    assert package is not None and checked is not None
    console.print(
        f"[green]verify-package: intact[/] — records {range_text(checked.start, checked.end)} of the log, "
        f"{checked.record_files} event files, {checked.media_files} media files, {checked.mdto_files} MDTO files"
        " (checked with the public key only)",
        markup=True,
    )
    console.print(f"\nmonthly package (BagIt + MDTO, {package.status}): {package.path}")
    for transcript in package.transcripts:
        console.print(f"  open in a browser: {transcript}")
    console.print(f"\nlog (encrypted SQLite): {result.data_dir}")
    console.print(f"key file (outside the data dir, 0600): {result.key_file}")
    console.print(f"public key for auditors: {result.key_file}.pub")
    console.print(f"config: {result.config_file}")
    console.print(f"try: {command_name()} verify --config {result.config_file}")
    console.print(f"demo took {result.seconds:.1f} s; the homeserver and bot are stopped.")


def main(workdir: Path, console: Console) -> None:
    logs.setup("WARNING", "text")
    logging.getLogger("nio").setLevel(logging.ERROR)  # the officials' clients warn about routine key setup
    console.print("starting a throwaway Synapse on 127.0.0.1, an archive bot and two demo officials…")
    result = asyncio.run(run_demo(workdir.resolve()))
    print_result(result, console)
