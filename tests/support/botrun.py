"""`chatarchief run` as a child process, for end-to-end and fault tests.

`BotRun` starts the real command (`python -m bridge.cli run --config`), each
start logging to its own file in the work dir, and can SIGKILL or SIGTERM it;
`write_config` writes a `[matrix]` config with the password in a 0600 file
outside the data dir; `chatarchief` runs any other subcommand to completion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.synapse import SynapseServer

REPO = Path(__file__).resolve().parents[2]


def chatarchief(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the command line to completion (as an operator would)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@dataclass
class BotRun:
    """`chatarchief run --config` as a child process; each start logs to its own stderr file."""

    config: Path
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Extra environment for the child (e.g. TMPDIR, to find what it writes to temp).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("run-*.stderr"))

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    def start(self) -> subprocess.Popen[bytes]:
        stderr = (self.workdir / f"run-{len(self.procs):03d}.stderr").open("wb")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        finally:
            stderr.close()
        self.procs.append(proc)
        return proc

    def log_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.logs)

    def stderr_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs[-3:])

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def write_config(
    tmp_path: Path,
    synapse: SynapseServer,
    user_id: str,
    password: str,
    allowed: str,
    *,
    homeserver: str | None = None,
    extra_matrix: str = "",
) -> Path:
    """A config for `chatarchief run`: data dir `tmp_path/data`, secrets in `tmp_path/secrets` (0700/0600)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    password_file = secrets_dir / "bot.password"
    password_file.write_text(password)
    password_file.chmod(0o600)
    config = tmp_path / "chatarchief.toml"
    config.write_text(
        f"""
[organisation]
name = "Ministerie van Testzaken"
archive_creator_id = "mvtz"

[storage]
data_dir = "{tmp_path / "data"}"
key_file = "{secrets_dir / "chatarchief.key"}"

[matrix]
homeserver = "{homeserver or synapse.url}"
user_id = "{user_id}"
password_file = "{password_file}"
allowed_inviters = ["{allowed}"]
sync_timeout_ms = 5000
{extra_matrix}

[logging]
level = "INFO"
format = "json"
"""
    )
    return config


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
