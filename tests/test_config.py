"""Config loading: TOML + environment, one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import config
from bridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "chatarchief.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_example_is_refused_until_placeholders_are_replaced(tmp_path: Path) -> None:
    """The shipped example names every CHANGE_ME key; with them filled in it validates."""
    with pytest.raises(ConfigError) as info:
        config.load(EXAMPLE)
    lines = str(info.value).splitlines()
    assert any("'storage.key_file'" in line for line in lines)
    assert any("'matrix.homeserver'" in line for line in lines)
    filled = EXAMPLE.read_text().replace("CHANGE_ME", "ministerie")
    settings = config.load(write(tmp_path, filled))
    assert settings.matrix is not None and settings.matrix.homeserver == "https://matrix.ministerie.example"
    assert settings.organisation is not None and settings.organisation.appraisal == "B"


def test_example_documents_every_key() -> None:
    """Every field of every section appears in the example file (commented or not)."""
    text = EXAMPLE.read_text()
    for section_name, field in config.Settings.model_fields.items():
        assert f"[{section_name}]" in text
        model = field.annotation
        sub = next(a for a in getattr(model, "__args__", (model,)) if a is not type(None))
        for key in sub.model_fields:
            assert f"{key} =" in text, f"{section_name}.{key} undocumented"


def test_defaults_without_file() -> None:
    """No file: embedded defaults (data dir 'data', monthly schedule in Europe/Amsterdam)."""
    settings = config.load(None)
    assert settings.storage.data_dir == Path("data")
    assert settings.archive.schedule == "0 2 1 * *" and settings.archive.timezone == "Europe/Amsterdam"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CHATARCHIEF_STORAGE__DATA_DIR beats the file; keys not in the environment keep the file's value."""
    path = write(tmp_path, '[storage]\ndata_dir = "from-file"\nkey_file = "/k/key"\n')
    monkeypatch.setenv("CHATARCHIEF_STORAGE__DATA_DIR", "from-env")
    settings = config.load(path)
    assert settings.storage.data_dir == Path("from-env")
    assert settings.storage.key_file == Path("/k/key")


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    """A missing config file points at the example."""
    with pytest.raises(ConfigError, match=r"does not exist; copy config/chatarchief\.example\.toml"):
        config.load(tmp_path / "absent.toml")


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    """Broken TOML gives one line with the parser's position."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, "[storage\n"))
    assert "not valid TOML" in str(info.value) and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[storage]\ndata_dri = "x"\n', "unknown key 'storage.data_dri'"),
        ("[sotrage]\n", "unknown key 'sotrage'"),
        ('[storage]\ncheckpoint_every_records = "x"\n', "'storage.checkpoint_every_records'"),
        ("[storage]\ncheckpoint_every_records = 0\n", "greater than or equal to 1"),
        ('[matrix]\nhomeserver = "matrix.org"\nuser_id = "@a:b"\naccess_token_file = "t"\n', "http(s) URL"),
        ('[matrix]\nhomeserver = "https://m"\nuser_id = "archive"\naccess_token_file = "t"\n', "full Matrix user id"),
        ('[matrix]\nhomeserver = "https://m"\nuser_id = "@a:b"\n', "exactly one of password_file"),
        ('[matrix]\nhomeserver = "https://m"\n', "'matrix.user_id' is required"),
        ('[signal]\nendpoint = "/run/sock"\n', "unix://"),
        ('[organisation]\nappraisal = "X"\n', "'organisation.appraisal'"),
        ('[organisation]\nname = "M"\narchive_creator_id = "m"\nappraisal = "V"\n', "needs retention_years"),
        ('[organisation]\nname = ""\narchive_creator_id = "m"\n', "'organisation.name'"),
        ('[organisation]\nname = "M"\n', "'organisation.archive_creator_id' is required"),
    ],
)
def test_each_problem_names_key_and_fix(tmp_path: Path, text: str, needle: str) -> None:
    """Each kind of mistake yields a line naming the key and what is expected."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    message = str(info.value)
    assert needle in message
    assert "Traceback" not in message and all(line.startswith(str(tmp_path)) for line in message.splitlines())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_either_loads_or_is_a_config_error(text: str) -> None:
    """Property: arbitrary file content never raises anything but ConfigError."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            config.load(path)
        except ConfigError as exc:
            assert str(exc)
