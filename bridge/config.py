"""Configuration: a TOML file plus `CHATARCHIEF_*` environment overrides.

Parsed once into a frozen, typed `Settings`. Precedence, highest first: command
line flags (applied by the CLI), environment (`CHATARCHIEF_STORAGE__DATA_DIR`,
nested with a double underscore), the TOML file, defaults. Unknown keys, wrong
types and values left as `CHANGE_ME` from the example are refused with one line
per problem naming the key, what is wrong and how to fix it (`ConfigError`; the
CLI exits 2). Every key is documented in config/chatarchief.example.toml.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigError

PLACEHOLDER = "CHANGE_ME"
EXAMPLE = "config/chatarchief.example.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(_Section):
    data_dir: Path = Path("data")
    key_file: Path | None = None
    #: The checkpoint signing key's own file (default: beside the key file, KEY_FILE.signing).
    signing_key_file: Path | None = None
    checkpoint_every_records: Annotated[int, Field(ge=1)] = 10_000
    checkpoint_every_seconds: Annotated[float, Field(gt=0)] = 60.0
    #: A heartbeat record every this many minutes proves the bot was alive (a silent month vs a dead bot).
    heartbeat_minutes: Annotated[float, Field(gt=0)] = 15.0
    #: Where the log lives: "sqlite" (log.sqlite3 in data_dir) or "postgresql" (`dsn`; data_dir keeps a marker).
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    #: libpq connection string of the PostgreSQL log, without a password (e.g. "host=db port=5432 dbname=x").
    dsn: str | None = None
    #: The PostgreSQL password, alone in a file (mode 0600).
    password_file: Path | None = None
    #: `run` waits for the writer lock instead of refusing, and takes over when the active bot's session ends
    #: (PostgreSQL: the lock is held across hosts).
    standby: bool = False

    @model_validator(mode="after")
    def _backend(self) -> StorageSettings:
        if self.backend == "postgresql" and not self.dsn:
            raise ValueError('storage.backend = "postgresql" needs storage.dsn')
        if self.backend == "sqlite" and (self.dsn or self.password_file):
            raise ValueError('storage.dsn and storage.password_file are for storage.backend = "postgresql"')
        if self.standby and self.backend != "postgresql":
            raise ValueError('storage.standby needs storage.backend = "postgresql" (a SQLite log has one host)')
        return self


class MatrixSettings(_Section):
    homeserver: str
    user_id: str
    password_file: Path | None = None
    access_token_file: Path | None = None
    device_name: str = "chatarchief"
    allowed_inviters: tuple[str, ...] = ()
    #: Whose rooms `chatarchief coverage` checks (default: allowed_inviters).
    officials: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()
    store_dir: Path | None = None
    max_media_bytes: Annotated[int, Field(ge=0)] = 100 * 1024 * 1024
    sync_timeout_ms: Annotated[int, Field(ge=0)] = 30_000
    #: The sealed spool of Chatarchief's Synapse module (docs/synapse-module.md): plain-room events durable at
    #: persistence time. Optional; the sync loop stays the complete record.
    spool_dir: Path | None = None

    @field_validator("homeserver")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://matrix.example.org")
        return v.rstrip("/")

    @field_validator("user_id")
    @classmethod
    def _mxid(cls, v: str) -> str:
        if not (v.startswith("@") and ":" in v):
            raise ValueError("must be a full Matrix user id such as @archive:example.org")
        return v

    @model_validator(mode="after")
    def _one_credential(self) -> MatrixSettings:
        if (self.password_file is None) == (self.access_token_file is None):
            raise ValueError("set exactly one of password_file or access_token_file")
        return self


class SignalSettings(_Section):
    endpoint: str
    account: str | None = None
    max_disconnected_seconds: Annotated[float, Field(gt=0)] = 300.0
    #: The daemon's --receive-mode: "manual" makes capture call subscribeReceive after each connect.
    receive_mode: Literal["manual", "on-connection", "on-start"] = "manual"
    attachments_dir: Path | None = None
    max_media_bytes: Annotated[int, Field(ge=0)] = 100 * 1024 * 1024
    max_message_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("unix://", "tcp://", "http://", "https://", "ws://", "wss://")):
            raise ValueError("must start with unix://, tcp://, http(s):// or ws(s)://")
        return v

    @model_validator(mode="after")
    def _websocket_account(self) -> SignalSettings:
        if self.endpoint.startswith(("ws://", "wss://")) and not self.account:
            raise ValueError("a signal-cli-rest-api websocket endpoint (ws://) needs account")
        return self


class S3Destination(_Section):
    """`s3://bucket/prefix`: packages go to WORM object storage (bridge.worm), one object per package."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_s3_url(value: str) -> S3Destination:
    """`s3://bucket[/prefix]` -> S3Destination; a ValueError naming what is wrong."""
    rest = value.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
        raise ValueError(f"{value!r} does not name an S3 bucket (3-63 lower-case letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"{value!r} has an empty, '.' or '..' part in its prefix")
    return S3Destination(bucket=bucket, prefix=prefix)


class ArchiveSettings(_Section):
    #: A folder, or `s3://bucket/prefix` (object lock required; the s3_* keys and retention_days below).
    destination: Path | S3Destination = Path("archive")
    #: Cron fields "minute hour day month day_of_week" in `timezone`.
    schedule: str = "0 2 1 * *"
    timezone: str = "Europe/Amsterdam"
    #: S3 only: the endpoint (MinIO, Ceph RGW; default AWS), region, and a credentials file in the AWS
    #: shared-credentials format (else the standard AWS_* environment variables).
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_credentials_file: Path | None = None
    #: S3 only, required: how long every uploaded package is locked (object lock retention).
    retention_days: Annotated[int | None, Field(ge=1)] = None
    object_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    #: S3 only: keep the local copy (under the data dir) after a verified upload.
    keep_local: bool = False
    upload_attempts: Annotated[int, Field(ge=1)] = 5

    @field_validator("destination", mode="before")
    @classmethod
    def _destination(cls, v: object) -> object:
        if isinstance(v, str) and v.startswith("s3://"):
            return parse_s3_url(v)
        if isinstance(v, str) and "://" in v:
            raise ValueError("must be a folder or s3://bucket/prefix")
        return Path(v) if isinstance(v, str) else v

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://minio.example.nl:9000")
        return v

    @model_validator(mode="after")
    def _s3_keys(self) -> ArchiveSettings:
        # The s3 keys beside a folder destination are allowed: `snapshot --out s3://...` and `upload` use them.
        if isinstance(self.destination, S3Destination) and self.retention_days is None:
            raise ValueError("an s3:// destination needs retention_days (how long each package is locked)")
        return self


class OrganisationSettings(_Section):
    """Who the archive belongs to: required for `run` and `snapshot` (packages name it), no default."""

    name: Annotated[str, Field(min_length=1)]
    archive_creator_id: Annotated[str, Field(min_length=1)]
    #: MDTO waardering: "B" (blijvend te bewaren), "V" (tijdelijk te bewaren: set retention_years)
    #: or "N" (nader te bepalen).
    appraisal: Literal["B", "V", "N"] = "B"
    retention_years: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _term_with_v(self) -> OrganisationSettings:
        if self.appraisal == "V" and self.retention_years is None:
            raise ValueError("appraisal 'V' (tijdelijk te bewaren) needs retention_years")
        return self


class WitnessSettings(_Section):
    """Witnesses the bot asks to cosign every checkpoint (C2SP tlog-witness); absent: none asked."""

    #: Submission prefixes, e.g. "https://witness.example.nl/chatarchief" (add-checkpoint is appended).
    urls: Annotated[tuple[str, ...], Field(min_length=1)]
    #: Their verifier keys (name+id+base64(0x04 || key)), in the order of `urls`.
    public_keys: Annotated[tuple[str, ...], Field(min_length=1)]
    #: How many must have cosigned for the bot to report a checkpoint as witnessed (`verify --quorum`).
    quorum: Annotated[int, Field(ge=1)] = 1
    poll_seconds: Annotated[float, Field(gt=0)] = 2.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{url!r} must be an http(s) URL (the witness's submission prefix)")
        return v

    @field_validator("public_keys")
    @classmethod
    def _vkeys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            if key.count("+") < 2 or any(ch.isspace() for ch in key):
                raise ValueError(f"{key[:40]!r} is not a verifier key (name+keyid+base64); `witness init` prints one")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> WitnessSettings:
        if len(self.urls) != len(self.public_keys):
            raise ValueError("urls and public_keys must list the same witnesses, in the same order")
        if self.quorum > len(self.urls):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.urls)} witnesses listed")
        return self


class MetricsSettings(_Section):
    """`/metrics` (Prometheus) and `/healthz` served by `run`. Off unless enabled: no port is opened unasked."""

    enabled: bool = False
    #: host:port; loopback by default. Another address needs allow_remote (the figures show officials' activity).
    listen: str = "127.0.0.1:9464"
    allow_remote: bool = False
    #: /healthz fails for a source that committed nothing (sync, receive, keep-alive) for this long.
    silent_after_seconds: Annotated[float, Field(ge=1)] = 600.0

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ValueError("the host must be an IP address (or localhost), e.g. 127.0.0.1:9464") from None
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @model_validator(mode="after")
    def _loopback(self) -> MetricsSettings:
        if self.host != "localhost" and not ipaddress.ip_address(self.host).is_loopback and not self.allow_remote:
            raise ValueError(
                f"listen {self.listen} is not a loopback address; use 127.0.0.1 (scrape through a local agent or"
                " proxy) or set allow_remote = true"
            )
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATARCHIEF_", env_nested_delimiter="__", extra="forbid", frozen=True)

    storage: StorageSettings = StorageSettings()
    matrix: MatrixSettings | None = None
    signal: SignalSettings | None = None
    archive: ArchiveSettings = ArchiveSettings()
    #: None until configured: `run` and `snapshot` refuse without it (a package must not name a made-up owner).
    organisation: OrganisationSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    witness: WitnessSettings | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs).
        return (env_settings, init_settings)


def load(path: Path | None) -> Settings:
    """Read and validate the config file (None: defaults + environment only)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(path)
        placeholders = list(_placeholders(data))
        if placeholders:
            raise ConfigError(
                "\n".join(
                    f"{path}: '{key}' still holds the example placeholder {PLACEHOLDER}; set a real value"
                    for key in placeholders
                )
            )
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = str(path) if path is not None else "environment"
        raise ConfigError("\n".join(_describe(where, err) for err in exc.errors())) from None


def _placeholders(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value still contains the example's placeholder."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _placeholders(value, f"{prefix}{key}.")
    elif isinstance(data, list):
        for value in data:
            found += _placeholders(value, prefix)
    elif isinstance(data, str) and PLACEHOLDER in data:
        found.append(prefix.rstrip("."))
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; copy {EXAMPLE} and edit it") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(where: str, err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if kind == "extra_forbidden":
        return f"{where}: unknown key '{loc}'; check its spelling against {EXAMPLE}"
    if kind == "missing":
        return f"{where}: '{loc}' is required; see {EXAMPLE}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {str(got)[:60]!r})"
    return f"{where}: '{loc}' {msg[0].lower() + msg[1:]}{shown}; see {EXAMPLE}"
