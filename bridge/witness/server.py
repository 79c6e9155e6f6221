"""The tlog-witness HTTP service: `POST <prefix>/add-checkpoint`, `GET <prefix>/<origin hash>/checkpoint`.

`Witness.add_checkpoint(body)` is the whole decision, in the order tlog-witness.md lists it:
400 malformed body, 404 unknown origin, 403 no valid signature by a trusted key (or a failing one),
400 old size above the checkpoint size, 409 old size is not the size we last cosigned (body: that size and
a newline, `Content-Type: text/x.tlog.size`), 422 a size-0 checkpoint without the empty root, a proof with
old size 0, or a consistency proof that does not verify (also: equal sizes with different roots).
Otherwise the new checkpoint is made durable (compare-and-swap on the old size, inside one lock: the
spec's rollback race cannot happen) and only then answered with one `cosignature/v1` line.
A validly signed checkpoint refused with 422 is a fork or a rewritten history: its request and the
checkpoint we had cosigned are written to the evidence folder before the answer.

The server adds what the spec leaves to operators: an optional client allow-list (403 for others) and TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bridge.errors import KeyFileError
from bridge.log.merkle import EMPTY_ROOT, verify_consistency
from bridge.witness.config import WitnessConfig
from bridge.witness.note import (
    BadSignature,
    CosignerKey,
    NoteError,
    Verifier,
    format_note,
    format_signature_lines,
    parse_checkpoint,
    split_note,
    verified_signatures,
)
from bridge.witness.request import MAX_BODY, RequestError, parse_add_checkpoint
from bridge.witness.state import Latest, WitnessState

log = logging.getLogger(__name__)

SIZE_TYPE = "text/x.tlog.size"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    text: str
    content_type: str = TEXT_TYPE
    evidence: Path | None = None


def load_cosigner_key(path: Path) -> CosignerKey:
    """The witness key file; refused when group or others may read it (KeyFileError, exit 2)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise KeyFileError(
            f"witness key file {path} does not exist; create it with `chatarchief witness init`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"witness key file {path} cannot be read: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"witness key file {path} has mode {stat.S_IMODE(mode):04o}; fix with `chmod 600 {path}`")
    try:
        return CosignerKey.from_text(text)
    except NoteError as exc:
        raise KeyFileError(f"witness key file {path}: {exc}") from None


class Witness:
    """The add-checkpoint decision over a durable state. One lock: check and persist are atomic."""

    def __init__(
        self,
        key: CosignerKey,
        logs: dict[str, tuple[Verifier, ...]],
        state: WitnessState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.logs = logs
        self.state = state
        self._clock = clock
        self._lock = asyncio.Lock()

    async def add_checkpoint(self, body: bytes) -> Reply:
        try:
            req = parse_add_checkpoint(body)
            text, signatures = split_note(req.note)
            cp = parse_checkpoint(text)
        except (RequestError, NoteError) as exc:
            return Reply(400, f"{exc}\n")
        verifiers = self.logs.get(cp.origin)
        if verifiers is None:
            return Reply(404, "unknown log origin\n")
        try:
            good = verified_signatures(text, signatures, verifiers)
        except BadSignature as exc:
            return Reply(403, f"{exc}\n")
        if not good:
            return Reply(403, "no signature by a key this witness trusts for the origin\n")
        if req.old_size > cp.size:
            return Reply(400, "old size is larger than the checkpoint size\n")
        signed_note = format_note(text, [sig for _, sig in good])
        # Check and persist under one lock (the spec's rollback race); SQLite and fsync run in a worker thread
        # so the loop keeps parsing and verifying other requests meanwhile.
        async with self._lock:
            known = await asyncio.to_thread(self.state.latest, cp.origin)
            known_size = known.size if known is not None else 0
            if req.old_size != known_size:
                return Reply(409, f"{known_size}\n", SIZE_TYPE)
            problem = self._inconsistency(req.old_size, req.proof, cp.size, cp.root, known)
            if problem is not None:
                evidence = await asyncio.to_thread(self.state.write_evidence, cp.origin, problem, known, body)
                log.warning("witness refused a checkpoint", extra={"origin": cp.origin, "reason": problem})
                return Reply(422, f"{problem}\n", evidence=evidence)
            cosig = self.key.cosign(text, max(1, int(self._clock())))
            line = format_signature_lines([cosig])
            latest = Latest(cp.size, cp.root, signed_note, line)
            if not await asyncio.to_thread(self.state.advance, cp.origin, req.old_size, latest):
                now = await asyncio.to_thread(self.state.latest, cp.origin)
                return Reply(409, f"{now.size if now else 0}\n", SIZE_TYPE)
        return Reply(200, line)

    @staticmethod
    def _inconsistency(old: int, proof: tuple[bytes, ...], size: int, root: bytes, known: Latest | None) -> str | None:
        if size == 0 and root != EMPTY_ROOT:
            return "a checkpoint of size 0 must have the empty tree's root"
        if old == 0:
            return "a consistency proof from size 0 must be empty" if proof else None
        assert known is not None  # old == known size > 0
        if old == size and root != known.root:
            return f"fork: tree size {size} was cosigned with another root"
        if not verify_consistency(old, size, known.root, root, proof):
            return f"the consistency proof from {old} to {size} does not verify against the cosigned root"
        return None

    async def checkpoint_for(self, origin_hash: str) -> str | None:
        """The latest cosigned checkpoint (log signature and ours) of the origin with this SHA-256 hex."""
        for origin in self.logs:
            if hashlib.sha256(origin.encode("utf-8")).hexdigest() == origin_hash:
                async with self._lock:  # one user of the state connection at a time
                    latest = await asyncio.to_thread(self.state.latest, origin)
                return None if latest is None else latest.note + latest.cosignature
        return None


def make_app(
    witness: Witness, prefix: str = "", allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
) -> web.Application:
    def allowed(request: web.Request) -> bool:
        if not allow:
            return True
        try:
            ip = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            return False
        return any(ip in net for net in allow)

    async def add(request: web.Request) -> web.Response:
        if not allowed(request):
            return web.Response(status=403, text="client not allowed\n")
        body = await request.read()  # the whole body; over client_max_size aiohttp answers 413
        reply = await witness.add_checkpoint(body)
        return web.Response(
            status=reply.status, body=reply.text.encode("utf-8"), headers={"Content-Type": reply.content_type}
        )

    async def monitor(request: web.Request) -> web.Response:
        if not allowed(request):
            return web.Response(status=403, text="client not allowed\n")
        note = await witness.checkpoint_for(request.match_info["origin_hash"])
        if note is None:
            return web.Response(status=404, text="no cosigned checkpoint for that origin\n")
        return web.Response(status=200, body=note.encode("utf-8"), headers={"Content-Type": TEXT_TYPE})

    app = web.Application(client_max_size=MAX_BODY + 1)
    app.router.add_post(f"{prefix}/add-checkpoint", add)
    app.router.add_get(prefix + "/{origin_hash:[0-9a-f]{64}}/checkpoint", monitor)
    return app


def build(config: WitnessConfig) -> tuple[Witness, web.Application]:
    key = load_cosigner_key(config.key_file)
    if config.name is not None and key.name != config.name:
        raise KeyFileError(f"witness key file {config.key_file} is for {key.name!r}, the config names {config.name!r}")
    state = WitnessState(config.state, config.evidence())
    logs = {entry.origin: entry.verifiers() for entry in config.logs}
    witness = Witness(key, logs, state)
    return witness, make_app(witness, config.prefix, config.networks())


def ssl_context(config: WitnessConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


async def serve(config: WitnessConfig, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serve until `stop` is set; `ready(port)` is called once listening (port 0 in config: an ephemeral one)."""
    witness, app = build(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context(config))
        await site.start()
        addresses = runner.addresses
        port = int(addresses[0][1]) if addresses else config.port
        if ready is not None:
            ready(port)
        await stop.wait()
    finally:
        await runner.cleanup()
        witness.state.close()
