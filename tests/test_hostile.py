"""Hostile input end to end: chat content is attacker-controlled, from Synapse through the log into a package.

An official (or anyone who can get a message into an archived room) sends
HTML/JS in message bodies, formatted bodies, display names, room names and file
names; file names with path traversal, 300 characters, bidi overrides; a file
that lies about its size; a file over the configured media limit. The real
`chatarchief run` captures it, the month is packaged, and then:
- every HTML transcript, parsed (lxml and the stdlib tokenizer), holds no
  script, handler attribute, foreign URL or active element: hostile text is text;
- every file the package or the blob store holds resolves inside it, and nothing
  was written outside (the traversal targets do not exist);
- the lying file is stored (a declared size is not trusted), the oversized one is
  recorded as `oversized` with the limit named, and nothing of it is stored;
- an invite from a user not in `allowed_inviters` (same local name on another
  server included) is declined and nothing of that room is archived.

The 100 MB case of issue 6 runs at a 64 KiB configured limit: the code path is
the same (streamed, cut at the limit), and a 100 MB upload would cost CI more
than it proves; Signal's huge-message limit is covered in test_signal_source.py.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import verify_package
from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from bridge.log import keys as keyfile
from bridge.sources.matrix.invites import handle_invites
from bridge.sources.matrix.planner import Rules, SyncState, plan
from tests.support.archive_log import OPTIONS
from tests.support.botrun import BotRun, chatarchief, write_config
from tests.support.logview import LogView
from tests.support.officials import OfficialFactory, ok, poll_until, unique_name
from tests.test_archive_transcript import assert_inert

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

SCRIPT = "<script>alert('xss')</script>"
IMG = '<img src=x onerror="alert(1)">'
LIMIT = 64 * 1024
NAMES = {
    "traversal": "../../../../../../tmp/chatarchief-evil<script>.txt",
    "absolute": "/etc/cron.d/chatarchief-evil",
    "long": "n" * 300 + ".txt",
    "bidi": "\u202etxt.exe",
    "dots": "..",
}


async def test_hostile_chat_content_is_inert_contained_and_limited(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Hostile names, HTML and files go through capture and packaging without executing, escaping the
    package or blob store, or dodging the media limit (see the module docstring for each rule)."""
    alice = await official("alice")
    ok(await alice.client.set_displayname(f"{IMG}Minister{SCRIPT}"))
    name = unique_name("hostilebot")
    bot_id, _ = await synapse.register_user_async(name, f"pw-{name}")
    config = write_config(tmp_path, synapse, bot_id, f"pw-{name}", alice.user_id,
                          extra_matrix=f"max_media_bytes = {LIMIT}")  # fmt: skip
    assert chatarchief("init", "--config", str(config)).returncode == 0
    data_dir = tmp_path / "data"
    keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
    bot = BotRun(config, tmp_path)
    ids: dict[str, str] = {}
    try:
        proc = bot.start()
        with LogView(data_dir, keys) as view:
            await poll_until(lambda: bool(view.cursors()) or proc.poll() is not None, timeout=60)
            room = await alice.create_room(encrypted=True, invite=[bot_id], name=f"{SCRIPT}Crisis{IMG}")
            await alice.wait_member(room, bot_id)
            ids["html"] = await alice.send(room, {
                "msgtype": "m.text", "body": f"{SCRIPT} javascript:alert(1)", "format": "org.matrix.custom.html",
                "formatted_body": f'<a href="javascript:alert(1)">klik</a>{IMG}<iframe src="//evil"></iframe>',
            })  # fmt: skip
            for key, filename in NAMES.items():
                data = f"inhoud {key}".encode()
                up, _ = await alice.client.upload(io.BytesIO(data), "text/plain", "x.txt", filesize=len(data))
                content = {"msgtype": "m.file", "body": filename, "filename": filename, "url": ok(up).content_uri,
                           "info": {"mimetype": f"text/html{SCRIPT}", "size": len(data)}}  # fmt: skip
                ids[key] = await alice.send(room, content)
            small = b"klein maar liegt over zijn grootte"
            up, _ = await alice.client.upload(io.BytesIO(small), "text/plain", "liar.txt", filesize=len(small))
            ids["liar"] = await alice.send(room, {"msgtype": "m.file", "body": "liar.txt", "url": ok(up).content_uri,
                                                  "info": {"size": 10**12}})  # fmt: skip
            big = os.urandom(LIMIT * 3)
            up, _ = await alice.client.upload(io.BytesIO(big), "application/octet-stream", "big.bin",
                                              filesize=len(big))  # fmt: skip
            ids["big"] = await alice.send(room, {"msgtype": "m.file", "body": "big.bin", "url": ok(up).content_uri,
                                                 "info": {"size": 5}})  # fmt: skip

            stranger = await official("stranger")
            lure = await stranger.create_room(encrypted=False, invite=[bot_id], name="lokkertje")
            lure_msg = await stranger.send_text(lure, "kom erbij")

            async def bot_left_the_lure() -> bool:
                members = ok(await stranger.client.joined_members(lure))
                state = ok(await stranger.client.room_get_state_event(lure, "m.room.member", bot_id))
                return bot_id not in {m.user_id for m in members.members} and state.content.get("membership") == "leave"

            await poll_until(bot_left_the_lure, timeout=60)
            keys_sent = [(room, eid) for eid in ids.values()]
            await poll_until(lambda: view.count_stored(keys_sent) == len(keys_sent), timeout=60)
            events = {e.event_id: e for _, e in view.events()}
            assert view.count_stored([(lure, lure_msg)]) == 0
            assert not any(e.conversation == lure for e in events.values())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, bot.stderr_tail()
    finally:
        bot.cleanup()

    # The limit: the liar is stored, the big one recorded as oversized with the limit, not stored.
    (liar,) = events[ids["liar"]].attachments
    assert liar.status == "stored" and liar.size == len(small)
    (over,) = events[ids["big"]].attachments
    assert over.status == "oversized" and str(LIMIT) in (over.error or "") and over.blob_id is None
    for key in NAMES:
        (att,) = events[ids[key]].attachments
        assert att.status == "stored" and att.filename == NAMES[key]  # kept exactly, as metadata
    assert events[ids["html"]].kind is Kind.MESSAGE

    blobs = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(_inside(p, data_dir / "blobs") and p.name.isalnum() for p in blobs)
    assert not Path("/tmp/chatarchief-evil<script>.txt").exists()
    assert not Path("/etc/cron.d/chatarchief-evil").exists()

    # The package: contained, verifiable, and every transcript inert.
    now = events[ids["html"]].sent_at or 0
    month = _month_of(now)
    out = tmp_path / "pkg"
    package = snapshot(data_dir, keys, month, out, OPTIONS, allow_open_month=True).path
    verify_package(package, keyfile.load_public(keyfile.public_path(tmp_path / "secrets" / "chatarchief.key")))
    files = [p for p in package.rglob("*")]
    assert all(_inside(p, package) for p in files)
    assert not any(".." in p.relative_to(package).parts for p in files)
    transcripts = [p for p in files if p.suffix == ".html"]
    assert transcripts
    chat_pages = 0
    for page in transcripts:
        doc = assert_inert(page.read_bytes())  # every page, the archiver's own liveness dossier included
        text = str(doc.text_content())
        if b'"liveness"' in (page.parent / "events.jsonl").read_bytes():
            continue  # the archiver's own heartbeats and gaps: no chat content to look for
        chat_pages += 1
        assert "alert('xss')" in text  # shown as text, not dropped
    assert chat_pages >= 1


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _month_of(ms: int) -> Month:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    t = datetime.fromtimestamp(ms / 1000, ZoneInfo("Europe/Amsterdam"))
    return Month(t.year, t.month)


class _FakeClient:
    """Just enough of RawKeepingClient for handle_invites: records joins and leaves."""

    user_id = "@archief:example.org"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def join(self, room_id: str) -> Any:
        self.calls.append(("join", room_id))
        return object()

    async def room_leave(self, room_id: str) -> Any:
        self.calls.append(("leave", room_id))
        return object()


def _invite(sender: str, target: str = "@archief:example.org") -> dict[str, Any]:
    member = {"type": "m.room.member", "state_key": target, "sender": sender, "content": {"membership": "invite"}}
    return {"invite_state": {"events": [member]}}


async def test_invites_from_unknown_users_and_servers_are_declined() -> None:
    """Only an allowed inviter's invite is accepted: an unknown user, the same local name on another
    server, a forged inviter for another target, or an invite with no inviter at all are declined."""
    client = _FakeClient()
    invites = {
        "!ok:example.org": _invite("@official:example.org"),
        "!stranger:example.org": _invite("@stranger:example.org"),
        "!otherserver:evil.example": _invite("@official:evil.example"),
        "!forged:evil.example": _invite("@official:example.org", target="@someone-else:example.org"),
        "!nobody:evil.example": {"invite_state": {"events": []}},
    }
    rules = Rules(client.user_id, frozenset({"@official:example.org"}))
    todo = plan({"rooms": {"invite": invites}}, SyncState(None, set()), rules)
    await handle_invites(client, todo.invites)  # type: ignore[arg-type]
    assert sorted(client.calls) == sorted([
        ("join", "!ok:example.org"), ("leave", "!stranger:example.org"), ("leave", "!otherserver:evil.example"),
        ("leave", "!forged:evil.example"), ("leave", "!nobody:evil.example"),
    ])  # fmt: skip
