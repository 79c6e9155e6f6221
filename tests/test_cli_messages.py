"""What an operator reads: one plain line per error, the right exit code, nothing eaten or leaked (issue 14).

Each case is one of the surprises found by trying the command line as a new operator: rich markup swallowing
`[matrix]`, a `[/]` in a path crashing the error printer, file errors reported as tampering (exit 1), the
private key file echoed when passed as `--public-key`, boxed usage errors, no `--version`, "1 signed checkpoints".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli import app

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parent.parent / "bridge" / "samples" / "sample-conversation.jsonl"


def cli(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def initialised(tmp_path: Path) -> tuple[Path, Path]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    data, key = tmp_path / "data", secrets / "ca.key"
    code, _, stderr = cli("init", "--data-dir", data, "--key-file", key)
    assert code == 0, stderr
    return data, key


def test_section_names_in_an_error_are_printed_as_written(tmp_path: Path) -> None:
    """`[matrix]` and `[signal]` are config section names, not markup: they stay in the message."""
    config = tmp_path / "c.toml"
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config.write_text(
        f'[organisation]\nname = "Ministerie"\narchive_creator_id = "m"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'key_file = "{secrets / "k.key"}"\n'
    )
    assert cli("init", "--config", config)[0] == 0
    code, _, stderr = cli("run", "--config", config)
    assert code == 2
    assert "add a [matrix] (or [signal]) section" in stderr


def test_a_path_with_markup_characters_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A data dir named `x[/]y` (legal on disk) is printed back as is, in one line, exit 2."""
    odd = tmp_path / "x[/]y"
    code, _, stderr = cli("verify", "--data-dir", odd)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "x[/]y" in lines[0] and "Traceback" not in stderr


def test_a_missing_checkpoint_file_is_a_usage_error_not_tampering(initialised: tuple[Path, Path]) -> None:
    data, key = initialised
    code, _, stderr = cli("verify", "--data-dir", data, "--key-file", key, "--checkpoint", data.parent / "gone.txt")
    assert code == 2, stderr
    assert "gone.txt" in stderr and len(stderr.strip().splitlines()) == 1


def test_an_out_dir_that_cannot_be_created_is_a_usage_error(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """`--out` under a regular file (cannot be created, even as root): exit 2 and one line, not tampering."""
    data, key = initialised
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    org = tmp_path / "org.toml"
    org.write_text('[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n')
    args = ["--config", org, "--data-dir", data, "--key-file", key]
    code, _, stderr = cli("snapshot", "--month", "2026-01", "--out", blocker / "pkg", *args)
    assert code == 2, stderr
    assert "cannot create the package" in stderr and "a-file" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_private_key_file_as_public_key_is_refused_without_echoing_it(initialised: tuple[Path, Path]) -> None:
    data, key = initialised
    secret = key.read_text()
    code, stdout, stderr = cli("verify", "--data-dir", data, "--public-key", key)
    assert code == 2
    assert "private key file" in stderr
    # No fragment of the key file reaches the screen (the old message quoted the text it could not parse).
    fragments = {secret[i : i + 12] for i in range(0, len(secret) - 12, 6)}
    assert not any(f in stderr + stdout for f in fragments)


def test_usage_errors_are_plain_lines_without_boxes() -> None:
    code, _, stderr = cli("verify", "--no-such-flag")
    assert code == 2
    assert "No such option: --no-such-flag" in stderr
    assert not any(ch in stderr for ch in "╭╰│")


def test_help_shows_readable_metavars() -> None:
    code, stdout, _ = cli("verify", "--help")
    assert code == 0
    assert "--data-dir DIR" in stdout and "--checkpoint NOTE" in stdout
    assert "<bool>" not in stdout and "list[Path]" not in stdout


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.startswith("chatarchief ") and out.stdout.split()[1][0].isdigit()


def test_counts_are_singular_for_one(initialised: tuple[Path, Path]) -> None:
    data, key = initialised
    code, stdout, _ = cli("verify", "--data-dir", data, "--key-file", key)
    assert code == 0
    assert "1 signed checkpoint" in stdout and "1 signed checkpoints" not in stdout


def test_snapshot_and_run_refuse_without_an_organisation(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    """No made-up owner ("Demo-ministerie") in a real package: without [organisation] both refuse, exit 2."""
    data, key = initialised
    code, _, stderr = cli(
        "snapshot", "--month", "2026-01", "--out", tmp_path / "pkg", "--data-dir", data, "--key-file", key
    )
    assert code == 2 and "no [organisation] in the config" in stderr
    assert not (tmp_path / "pkg").exists()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{data}"\nkey_file = "{key}"\n'
        '[signal]\nendpoint = "tcp://127.0.0.1:9"\naccount = "+31600000000"\n'
    )
    code, _, stderr = cli("run", "--config", config)
    assert code == 2 and "no [organisation] in the config" in stderr


def test_a_month_before_the_log_began_is_refused_and_explained(tmp_path: Path) -> None:
    """`snapshot --month 1999-01` on a log begun later: exit 2, nothing written, and the operator learns that
    months follow append time (where imported messages went), instead of an empty "closed month" package."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config = tmp_path / "c.toml"
    config.write_text(
        '[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{secrets / "k.key"}"\n'
    )
    assert cli("init", "--config", config)[0] == 0
    code, _, stderr = cli("snapshot", "--config", config, "--month", "1999-01", "--out", tmp_path / "pkg")
    assert code == 2 and "ended before this log began" in stderr and "imported" in stderr
    assert not (tmp_path / "pkg").exists()
