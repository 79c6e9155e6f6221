"""No plaintext at rest: after a real capture, no marker string is found anywhere the bot writes.

Markers go into message bodies (plain and encrypted rooms), an edit, display
names, room names and topics, attachment file names and attachment contents
(unencrypted and encrypted uploads). The bot is the real `chatarchief run` at
DEBUG log level, with its own TMPDIR. Then every file under the data dir (the
log, the blob store, nio's crypto store, the source's state), the temp dir and
the bot's log output is searched for each marker as raw UTF-8, base64 (all three
alignments), UTF-16 (LE and BE), and hex.

Also: the key file is refused when group/others may read it, and no secret
(access token, password, key material) ever appears in a log line.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import uuid
from pathlib import Path

import pytest

from bridge.dev.synapse import SynapseServer
from bridge.log import keys as keyfile
from bridge.log.verify import verify_log
from bridge.sources.matrix.session import load_session
from tests.support.botrun import BotRun, chatarchief, write_config
from tests.support.figures import record
from tests.support.logview import LogView
from tests.support.officials import make_official, ok, poll_until, unique_name

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


def encodings(marker: str) -> dict[str, list[bytes]]:
    """The byte patterns under which `marker` could sit in a file."""
    raw = marker.encode()
    b64 = []
    for pad in range(3):  # base64 of a substring depends on its offset modulo 3
        enc = base64.b64encode(b"\0" * pad + raw)
        b64.append(enc[4 if pad else 0 : len(enc) - 4])  # drop the blocks the padding or the end touch
    urlsafe = [p.replace(b"+", b"-").replace(b"/", b"_") for p in b64]
    return {
        "raw": [raw],
        "base64": b64 + urlsafe,
        "utf16": [marker.encode("utf-16-le"), marker.encode("utf-16-be")],
        "hex": [raw.hex().encode()],
    }


def scan(roots: list[Path], markers: list[str]) -> list[tuple[str, str, str]]:
    """(file, marker, encoding) for every hit under `roots`."""
    patterns = {m: encodings(m) for m in markers}
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            for marker, kinds in patterns.items():
                for kind, needles in kinds.items():
                    if any(n in data for n in needles):
                        hits.append((str(path), marker, kind))
    return hits


async def test_no_marker_is_stored_or_logged_in_plaintext(synapse: SynapseServer, tmp_path: Path) -> None:
    """Markers in messages, an edit, display names, room names and topics, attachment names and contents
    (plain and encrypted uploads) are captured (the log decrypts to them), yet none appears in plaintext
    in the data dir, nio's store, the bot's temp dir or its DEBUG logs; nor does its access token or
    password."""
    kinds = ("body", "secret", "edit", "display", "device", "room", "topic", "filename", "filedata", "encfile",
             "encdata")  # fmt: skip
    markers = {k: f"ZZ{k.upper()}{uuid.uuid4().hex[:12]}" for k in kinds}
    # The device name an official's client announces (Element: "Element Desktop: Linux", or what they typed).
    alice = await make_official(synapse, tmp_path / "officials", f"alice{markers['device']}", unique_name("alice"))
    try:
        ok(await alice.client.set_displayname(f"Minister {markers['display']}"))
        name = unique_name("scanbot")
        password = f"pw-{name}-{uuid.uuid4().hex}"
        bot_id, _ = await synapse.register_user_async(name, password)
        config = write_config(tmp_path, synapse, bot_id, password, alice.user_id)
        config.write_text(config.read_text().replace('level = "INFO"', 'level = "DEBUG"'))
        assert chatarchief("init", "--config", str(config)).returncode == 0
        data_dir = tmp_path / "data"
        keys = keyfile.load(tmp_path / "secrets" / "chatarchief.key")
        bot_tmp = tmp_path / "bot-tmp"
        bot_tmp.mkdir()
        bot = BotRun(config, tmp_path, env={"TMPDIR": str(bot_tmp)})
        try:
            proc = bot.start()
            with LogView(data_dir, keys) as view:
                await poll_until(lambda: bool(view.cursors()) or proc.poll() is not None, timeout=60)
                assert proc.poll() is None, bot.stderr_tail()
                plain = await alice.create_room(encrypted=False, invite=[bot_id], name=f"Overleg {markers['room']}")
                secret = await alice.create_room(encrypted=True, invite=[bot_id], name=f"Geheim {markers['room']}")
                await alice.wait_member(plain, bot_id)
                await alice.wait_member(secret, bot_id)
                sent = [(plain, await alice.send_text(plain, f"open {markers['body']}"))]
                sent.append((secret, await alice.send_text(secret, f"dicht {markers['secret']}")))
                edit = {
                    "msgtype": "m.text",
                    "body": f"* {markers['edit']}",
                    "m.new_content": {"msgtype": "m.text", "body": markers["edit"]},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": sent[1][1]},
                }
                sent.append((secret, await alice.send(secret, edit)))
                topic = {"topic": f"Onderwerp {markers['topic']}"}
                sent.append(
                    (secret, str(ok(await alice.client.room_put_state(secret, "m.room.topic", topic)).event_id))
                )
                data = f"bijlage {markers['filedata']}".encode() * 50
                up, _ = await alice.client.upload(io.BytesIO(data), "text/plain", f"{markers['filename']}.txt",
                                                  filesize=len(data))  # fmt: skip
                file_content = {"msgtype": "m.file", "body": f"{markers['filename']}.txt", "url": ok(up).content_uri}
                sent.append((plain, await alice.send(plain, file_content)))
                enc_data = f"geheim {markers['encdata']}".encode() * 50
                up, file_keys = await alice.client.upload(io.BytesIO(enc_data), "text/plain",
                                                          f"{markers['encfile']}.txt", encrypt=True,
                                                          filesize=len(enc_data))  # fmt: skip
                enc_content = {
                    "msgtype": "m.file",
                    "body": f"{markers['encfile']}.txt",
                    "file": {"url": ok(up).content_uri, **(file_keys or {})},
                }
                sent.append((secret, await alice.send(secret, enc_content)))
                await poll_until(lambda: view.count_stored(sent) == len(sent), timeout=60)
                decrypted = b"".join(repr(e).encode() for _, e in view.events())
                await poll_until(lambda: len(list((data_dir / "blobs").rglob("*"))) >= 2, timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, bot.stderr_tail()
        finally:
            bot.cleanup()
    finally:
        await alice.client.close()

    # Captured: the log holds the markers (so a zero below means encrypted, not missing).
    for key in ("body", "secret", "edit", "display", "room", "topic", "filename", "encfile"):
        assert markers[key].encode() in decrypted, f"{key} marker not captured"
    assert verify_log(data_dir, keys).unsealed == 0

    session = load_session(data_dir / "matrix-store", keys.derive("matrix-nio-store"))
    assert session is not None
    secrets = {"access_token": session.access_token, "password": password}
    logs = tmp_path / "logs"
    logs.mkdir()
    for i, p in enumerate(bot.logs):
        (logs / f"{i}.log").write_bytes(p.read_bytes())
    roots = [data_dir, bot_tmp, logs]
    hits = scan(roots, list(markers.values()))
    secret_hits = [h for h in scan([logs, data_dir], list(secrets.values())) if h[2] == "raw" or "logs" in h[0]]
    files = sum(1 for r in roots for p in r.rglob("*") if p.is_file())
    record("plaintext_scan", markers=len(markers), files_scanned=files, hits=len(hits), secret_hits=len(secret_hits),
           hit_list=hits + secret_hits)  # fmt: skip
    assert hits == [], hits
    assert secret_hits == [], secret_hits


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    """`verify`, `run` and friends refuse a key file that group or others may read (exit 2, one line)."""
    key_file = tmp_path / "keys" / "chatarchief.key"
    data_dir = tmp_path / "data"
    done = chatarchief("init", "--data-dir", str(data_dir), "--key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    assert os.stat(key_file).st_mode & 0o077 == 0
    for mode in (0o640, 0o604, 0o660):
        key_file.chmod(mode)
        refused = chatarchief("verify", "--data-dir", str(data_dir), "--key-file", str(key_file))
        assert refused.returncode == 2
        assert "chmod 600" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with pytest.raises(keyfile.KeyFileError):
        keyfile.load(key_file)
