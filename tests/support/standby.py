"""Two hosts on one PostgreSQL log: an active bot and a standby, each its own data dir and Matrix device.

`two_hosts(synapse, pg_server, tmp_path, allowed)` registers a bot account, writes a `chatarchief run` config per
host (`tmp_path/a`, `tmp_path/b`; PostgreSQL, `standby = true`, a checkpoint a second), runs `init` on host A and
gives host B what an operator copies by hand (docs/postgresql.md, "A standby host"): the key files (from escrow)
and the marker naming the log (it holds no secret).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bridge.dev.synapse import SynapseServer
from bridge.log import db
from bridge.log import keys as keyfile
from tests.support.botrun import BotRun, chatarchief
from tests.support.botrun import write_config as write_bot_config
from tests.support.officials import unique_name
from tests.support.pg import PgServer


@dataclass
class TwoHosts:
    bot_id: str
    keys: keyfile.KeyMaterial
    key_file: Path
    a: BotRun
    b: BotRun
    data_a: Path
    data_b: Path

    def cleanup(self) -> None:
        self.a.cleanup()
        self.b.cleanup()


def on_postgresql(config: Path, target: db.PgTarget) -> None:
    """Point a run config's `[storage]` at `target`, as a standby-capable host."""
    config.write_text(
        config.read_text().replace(
            "[storage]\n",
            f'[storage]\nbackend = "postgresql"\ndsn = "{target.dsn}"\npassword_file = "{target.password_file}"\n'
            "standby = true\ncheckpoint_every_seconds = 1.0\n",
            1,
        )
    )


async def two_hosts(synapse: SynapseServer, pg_server: PgServer, tmp_path: Path, allowed: str) -> TwoHosts:
    name = unique_name("archivebot")
    bot_id, _ = await synapse.register_user_async(name, f"pw-{name}")
    target = pg_server.new_log_target()
    configs = []
    for host in ("a", "b"):
        (tmp_path / host).mkdir()
        config = write_bot_config(tmp_path / host, synapse, bot_id, f"pw-{name}", allowed)
        on_postgresql(config, target)
        configs.append(config)
    made = chatarchief("init", "--config", str(configs[0]))
    assert made.returncode == 0, made.stderr
    for f in (tmp_path / "a" / "secrets").glob("chatarchief.key*"):
        shutil.copy2(f, tmp_path / "b" / "secrets" / f.name)
    (tmp_path / "b" / "data").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "data" / db.MARKER_NAME, tmp_path / "b" / "data" / db.MARKER_NAME)
    key_file = tmp_path / "a" / "secrets" / "chatarchief.key"
    return TwoHosts(
        bot_id,
        keyfile.load(key_file),
        key_file,
        BotRun(configs[0], tmp_path / "a"),
        BotRun(configs[1], tmp_path / "b"),
        tmp_path / "a" / "data",
        tmp_path / "b" / "data",
    )
