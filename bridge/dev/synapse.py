"""A throwaway Synapse homeserver on 127.0.0.1, for tests and `chatarchief demo`.

Contract:
- `SynapseServer(workdir)` owns `workdir` (config, signing key, SQLite, media,
  log). `start()` writes the config once, spawns Synapse and returns when the
  server on its port serves *its* signing key (`/_matrix/key/v2/server`): a
  port that was free when chosen can be taken by someone else before Synapse
  binds it, and "something answers" is then not "ours answers". A port we chose
  is chosen again (so read `url` after `start()`); a port the caller gave is
  a clear error. `stop()` sends SIGTERM and kills after a timeout. A stopped
  server can be started again on the same data and port (fault tests restart
  the homeserver mid-stream).
- Synapse runs in its own interpreter, because it pins Twisted and friends:
  `$CHATARCHIEF_SYNAPSE_PYTHON`, else `<repo>/.venv-synapse/bin/python` when it
  exists, else the current interpreter (a `pip install .[demo]` install).
- `register_user()` uses the shared-secret admin API (HMAC-SHA1), so the server
  needs no open registration.
- `archiver_module=archiver_module_config(...)` loads Chatarchief's own Synapse
  module (`synapse-module/`, put on the child's PYTHONPATH, so a checkout works
  without installing it); only the tests and the demo that need it turn it on.
- The server is loopback-only, without federation, presence or URL previews,
  with every rate limit lifted: never expose it.

HTTP goes through urllib (and the signing key through `cryptography`, a
dependency of the package anyway), so tests and the demo can share it without
pulling test dependencies into the package.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bridge.errors import ChatarchiefError

SYNAPSE_PYTHON_ENV = "CHATARCHIEF_SYNAPSE_PYTHON"
#: The Synapse module's source tree in a checkout (`pip install ./synapse-module` installs it for real).
SYNAPSE_MODULE_DIR = Path(__file__).resolve().parents[2] / "synapse-module"
ARCHIVER_MODULE = "chatarchief_synapse.ArchiverModule"

#: Lifted rate limit: Synapse's defaults throttle a test that registers, logs in
#: and sends in bursts (rc_login allows 5 logins, rc_message 0.2 msg/s).
_UNLIMITED = {"per_second": 100000, "burst_count": 1000000}
_RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
    "rc_delayed_event_mgmt",
    "rc_admin_redaction",
)
_NESTED_RATE_LIMITS = {
    "rc_login": ("address", "account", "failed_attempts"),
    "rc_joins": ("local", "remote"),
    "rc_invites": ("per_room", "per_user", "per_issuer"),
    "rc_presence": ("per_user",),
}


class DevServerError(ChatarchiefError):
    """The throwaway homeserver could not be set up, started or asked."""


class _PortTaken(DevServerError):
    """Our Synapse could not have the port: another process answers on it."""


def default_synapse_python() -> str:
    """The interpreter that has `matrix-synapse` installed (see module docstring)."""
    env = os.environ.get(SYNAPSE_PYTHON_ENV)
    if env:
        return env
    repo_venv = Path(__file__).resolve().parents[2] / ".venv-synapse" / "bin" / "python"
    if repo_venv.exists():
        return str(repo_venv)
    return sys.executable


_HANDED_OUT: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and not one of the last 256 this process handed out
    (servers made one after another and started later would otherwise be able to get the same one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def write_signing_key(path: Path) -> tuple[str, str]:
    """Write a Synapse signing key (`ed25519 <version> <unpadded b64 seed>`); its key id and public key
    (unpadded base64), as `/_matrix/key/v2/server` will serve them.

    Same format as `synapse._scripts.generate_signing_key`, without paying for a
    second interpreter start (~1 s).
    """
    seed_bytes = secrets.token_bytes(32)
    version = f"a_{secrets.token_hex(4)}"
    seed = base64.b64encode(seed_bytes).decode("ascii").rstrip("=")
    path.write_text(f"ed25519 {version} {seed}\n", encoding="ascii")
    path.chmod(0o600)
    public = Ed25519PrivateKey.from_private_bytes(seed_bytes).public_key().public_bytes_raw()
    return f"ed25519:{version}", base64.b64encode(public).decode("ascii").rstrip("=")


def homeserver_config(workdir: Path, port: int, shared_secret: str) -> dict[str, Any]:
    """The homeserver.yaml content (JSON is valid YAML) for a loopback test server."""
    config: dict[str, Any] = {
        "server_name": "localhost",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                # `keys` serves /_matrix/key/v2/server: how `start()` knows the server on the port is ours
                "resources": [{"names": ["client", "keys"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.config"),
        "media_store_path": str(workdir / "media_store"),
        "max_upload_size": "50M",
        "registration_shared_secret": shared_secret,
        "enable_registration": False,
        "report_stats": False,
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "signing_key_path": str(workdir / "signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "enable_metrics": False,
        # MSC2815: lets a moderator bot read redacted content (issue 3, stretch goal).
        "experimental_features": {"msc2815_enabled": True},
    }
    for name in _RATE_LIMITS:
        config[name] = dict(_UNLIMITED)
    for name, keys in _NESTED_RATE_LIMITS.items():
        config[name] = {key: dict(_UNLIMITED) for key in keys}
    return config


def _log_config(log_file: Path) -> str:
    return json.dumps(
        {
            "version": 1,
            "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(log_file),
                    "encoding": "utf8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
    )


def archiver_module_config(
    archiver: str,
    *,
    officials: tuple[str, ...] = (),
    all_local_users: bool = False,
    admins: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The `modules:` entry that loads `chatarchief_synapse.ArchiverModule` (keys as in docs/synapse-module.md)."""
    config: dict[str, Any] = {"archiver": archiver, "admins": list(admins)}
    if all_local_users:
        config["all_local_users"] = True
    else:
        config["officials"] = list(officials)
    return {"module": ARCHIVER_MODULE, "config": config}


class SynapseServer:
    """One Synapse process on 127.0.0.1 with its data in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        python: str | None = None,
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
        archiver_module: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.python = python or default_synapse_python()
        self.port = port or free_port()
        self._port_given = port is not None
        self._identity: tuple[str, str] | None = None  # (key id, public key) of our signing key
        self._started_once = False
        self.extra_config = dict(extra_config or {})
        self.archiver_module = dict(archiver_module) if archiver_module is not None else None
        self.shared_secret = secrets.token_hex(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self._configured = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return "localhost"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    def _write_config(self) -> None:
        """Write config, log config and signing key once; restarts reuse them."""
        if self._configured:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        (self.workdir / "log.config").write_text(_log_config(self.workdir / "homeserver.log"))
        self._identity = write_signing_key(self.workdir / "signing.key")
        config = homeserver_config(self.workdir, self.port, self.shared_secret)
        if self.archiver_module is not None:
            config["modules"] = [self.archiver_module]
        config.update(self.extra_config)
        self.config_path.write_text(json.dumps(config, indent=2))
        self._configured = True

    def start(self, timeout: float = 60.0) -> None:
        """Spawn Synapse and return once the server on its port is this one (it serves our signing key).

        When another process holds the port: a port this object chose is chosen again (up to three times,
        before the first start only, so a restart keeps its address), a port the caller gave is a
        DevServerError that says so.
        """
        if self.running:
            return
        for attempt in range(3):
            try:
                self._spawn(timeout)
            except _PortTaken:
                if self._port_given or self._started_once or attempt == 2:
                    raise
                self.port, self._configured = free_port(), False
                continue
            self._started_once = True
            return

    def _spawn(self, timeout: float) -> None:
        self._write_config()
        env = dict(os.environ)
        if self.archiver_module is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SYNAPSE_MODULE_DIR), env.get("PYTHONPATH")) if p)
        out = (self.workdir / "stdout.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            out.close()  # the child holds its own descriptor
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        stranger = False  # something answered on our port that is not our Synapse
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                if stranger or "Address already in use" in self.log_tail():
                    raise _PortTaken(
                        f"port {self.port} on 127.0.0.1 is in use by another server; "
                        f"Synapse could not listen there and exited with {code}"
                    )
                raise DevServerError(f"synapse exited with {code} during start:\n{self.log_tail()}")
            answer = self._ask_identity()
            if answer is True:
                return
            stranger = stranger or answer is False
            time.sleep(0.1)
        self.stop()
        elsewhere = f"\nanother server answers on port {self.port}" if stranger else ""
        raise DevServerError(f"synapse did not answer within {timeout:.0f}s:{elsewhere}\n{self.log_tail()}")

    def _ask_identity(self) -> bool | None:
        """True when the server on our port serves our signing key, False when a server answers that is not
        ours, None when nothing answers yet."""
        try:
            with urllib.request.urlopen(f"{self.url}/_matrix/key/v2/server", timeout=2) as resp:  # noqa: S310 - our loopback URL
                body = resp.read()
        except (urllib.error.HTTPError, http.client.HTTPException):
            return False  # no key endpoint, or not HTTP at all: not a Synapse we configured
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        try:
            keys = json.loads(body).get("verify_keys", {})
            key_id, public = self._identity or ("", "")
            return bool(keys.get(key_id, {}).get("key") == public)
        except (ValueError, AttributeError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL without a chance to clean up (fault tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of Synapse's own log and stdout (for error messages)."""
        chunks = []
        for name in ("homeserver.log", "stdout.log"):
            path = self.workdir / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(chunks)

    # -- users -------------------------------------------------------------

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(  # noqa: S310 - our own loopback URL
            f"{self.url}{path}",
            data=data,
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise DevServerError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc

    def register_user(self, name: str, password: str, admin: bool = False) -> tuple[str, str]:
        """Create `@name:localhost`; return (user_id, access_token) of a new device."""
        path = "/_synapse/admin/v1/register"
        nonce = self._request("GET", path)["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, name, password):
            mac.update(part.encode())
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body = {
            "nonce": nonce,
            "username": name,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        result = self._request("POST", path, body)
        return str(result["user_id"]), str(result["access_token"])

    def has_device_keys(self, token: str, user_id: str) -> bool:
        """Whether `user_id` has uploaded device keys (asked as the holder of `token`)."""
        body: dict[str, Any] = {"device_keys": {user_id: []}}
        result = self._request("POST", "/_matrix/client/v3/keys/query", body, token=token)
        return bool(result.get("device_keys", {}).get(user_id))

    async def register_user_async(self, name: str, password: str, admin: bool = False) -> tuple[str, str]:
        """`register_user` off the event loop (a registration takes ~0.4 s)."""
        return await asyncio.to_thread(self.register_user, name, password, admin)

    # -- context managers ----------------------------------------------------

    def __enter__(self) -> SynapseServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SynapseServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Blocking on purpose (~2 s): a cancelled caller must still not leak the process.
        self.stop()
