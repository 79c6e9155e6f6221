"""The witness config: one line per problem naming the key (ConfigError, exit 2), nothing half-set."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.errors import ConfigError
from bridge.witness.config import load_witness_config
from bridge.witness.note import CosignerKey

LOG_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "witness.toml"
    path.write_text(text)
    return path


def test_valid_config(tmp_path: Path) -> None:
    """Defaults: loopback listen, evidence beside state."""
    cfg = load_witness_config(
        write(
            tmp_path,
            f'key_file = "k"\nstate = "s/state.db"\n[[logs]]\norigin = "example.com/foo"\nvkeys = ["{LOG_VKEY}"]\n',
        )
    )
    assert cfg.host == "127.0.0.1" and cfg.evidence() == Path("s/evidence")
    assert cfg.logs[0].verifiers()[0].name == "example.com/foo"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('key_file = "k"\nstate = "s"\nlisten = "nowhere"\n', "listen"),
        ('key_file = "k"\nstate = "s"\ntls_cert = "c"\n', "tls_key"),
        ('key_file = "k"\nstate = "s"\nallow_clients = ["not-an-ip"]\n', "not-an-ip"),
        ('key_file = "k"\nstate = "s"\nmystery = 1\n', "mystery"),
        ('key_file = "k"\nstate = "s"\n[[logs]]\norigin = "o"\nvkeys = ["o+00000000+AA=="]\n', "logs"),
        (
            'key_file = "k"\nstate = "s"\n[[logs]]\norigin = "o"\nvkeys = ["'
            + CosignerKey.generate("w/1").verifier.vkey
            + '"]\n',
            "0x01",
        ),
        ('state = "s"\n', "key_file"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, needle: str) -> None:
    """A bad listen address, half TLS, a bad network, an unknown key, a bad or cosigner vkey for a log,
    a missing key file: ConfigError naming it."""
    with pytest.raises(ConfigError, match=needle):
        load_witness_config(write(tmp_path, text))


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    """`witness serve` with a config naming a missing key file: one line, exit 2, no traceback."""
    path = write(tmp_path, f'key_file = "{tmp_path / "none.key"}"\nstate = "{tmp_path / "s.db"}"\n')
    result = CliRunner().invoke(app, ["witness", "serve", "--config", str(path)])
    assert result.exit_code == 2 and "witness init" in result.output and "Traceback" not in result.output


def test_world_readable_witness_key_is_refused(tmp_path: Path) -> None:
    """A witness key file group or others can read is refused (exit 2)."""
    key = tmp_path / "w.key"
    key.write_text(CosignerKey.generate("w.example/1").to_text())
    key.chmod(0o644)
    path = write(tmp_path, f'key_file = "{key}"\nstate = "{tmp_path / "s.db"}"\n')
    result = CliRunner().invoke(app, ["witness", "serve", "--config", str(path)])
    assert result.exit_code == 2 and "chmod 600" in result.output


def test_init_and_serve_from_the_config_name(tmp_path: Path) -> None:
    """`witness init --config` takes name and key_file from the config; `serve` refuses a key of another name."""
    path = write(
        tmp_path, f'name = "w.example.nl/cfg"\nkey_file = "{tmp_path / "k" / "w.key"}"\nstate = "{tmp_path / "s.db"}"\n'
    )
    result = CliRunner().invoke(app, ["witness", "init", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "w.example.nl/cfg+" in result.output
    other = write(
        tmp_path,
        f'name = "w.example.nl/other"\nkey_file = "{tmp_path / "k" / "w.key"}"\nstate = "{tmp_path / "s.db"}"\n',
    )
    result = CliRunner().invoke(app, ["witness", "serve", "--config", str(other)])
    assert result.exit_code == 2 and "the config names" in result.output


def test_run_refuses_a_log_key_as_witness_key(tmp_path: Path) -> None:
    """`run` with a [witness] public key that is not a cosignature key (a log's 0x01 key): exit 2 naming
    [witness], before the log is opened or any source started."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config = tmp_path / "chatarchief.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{secrets / "k.key"}"\n'
        '[signal]\nendpoint = "tcp://127.0.0.1:1"\n'
        '[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n'
        f'[witness]\nurls = ["http://127.0.0.1:1"]\npublic_keys = ["{LOG_VKEY}"]\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2 and "[witness]" in result.output and "0x04" in result.output
