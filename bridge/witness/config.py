"""The witness's own config (TOML), validated once into a frozen `WitnessConfig`; `ConfigError` (exit 2).

key_file = "/etc/chatarchief-witness/witness.key"       # `chatarchief witness init` writes it (0600)
state = "/var/lib/chatarchief-witness/state.sqlite3"    # latest cosigned checkpoint per log
evidence_dir = "/var/lib/chatarchief-witness/evidence"  # default: `evidence` beside state
listen = "127.0.0.1:7380"                                # loopback unless you mean otherwise
prefix = ""                                              # submission prefix path, e.g. "/witness"
allow_clients = ["127.0.0.1", "10.1.0.0/16"]             # empty: any client (the spec has no auth)
tls_cert = "/etc/.../cert.pem"                           # both or neither
tls_key = "/etc/.../key.pem"

[[logs]]
origin = "chatarchief.invalid/log/0123..."
vkeys = ["chatarchief.invalid/log/0123...+abcd1234+AX..."]
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.errors import ConfigError
from bridge.witness.note import ALG_ED25519, NoteError, Verifier, parse_vkey


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogEntry(_Frozen):
    origin: Annotated[str, Field(min_length=1)]
    vkeys: Annotated[tuple[str, ...], Field(min_length=1)]

    @field_validator("vkeys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for text in v:
            try:
                verifier = parse_vkey(text)
            except NoteError as exc:
                raise ValueError(str(exc)) from None
            if verifier.alg != ALG_ED25519:
                raise ValueError(f"{verifier.name}: a log signs with an Ed25519 note key (type 0x01)")
        return v

    def verifiers(self) -> tuple[Verifier, ...]:
        return tuple(parse_vkey(text) for text in self.vkeys)


class WitnessConfig(_Frozen):
    #: The witness's name (a schema-less URL); `witness init --config` uses it, `serve` checks the key has it.
    name: str | None = None
    key_file: Path
    state: Path
    evidence_dir: Path | None = None
    listen: str = "127.0.0.1:7380"
    prefix: str = ""
    allow_clients: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    logs: tuple[LogEntry, ...] = ()

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:7380 (port 0: any free port)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and (not v.startswith("/") or v.endswith("/")):
            raise ValueError("must be empty or a path such as /witness (leading slash, no trailing slash)")
        return v

    @field_validator("allow_clients")
    @classmethod
    def _nets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP address or network") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> WitnessConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        origins = [entry.origin for entry in self.logs]
        if len(set(origins)) != len(origins):
            raise ValueError("an origin is listed twice under [[logs]]")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def evidence(self) -> Path:
        return self.evidence_dir or self.state.parent / "evidence"

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(net, strict=False) for net in self.allow_clients)


def load_witness_config(path: Path) -> WitnessConfig:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"witness config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"witness config {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"witness config {path} is not valid TOML: {exc}") from None
    try:
        return WitnessConfig(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{path}: '{loc}' {msg}" if loc else f"{path}: {msg}")
        raise ConfigError("\n".join(problems)) from None
