"""The `chatarchief witness init|serve` commands and the `--witness-key/--quorum` checks of the verifiers.

Registered on the main app by `bridge.cli` (`register(app, guard, out)`), so the error handling stays in
one place (`bridge.cli._guard`): usage and config errors exit 2, too few cosignatures exit 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bridge.app import install_stop_signals
from bridge.durable import write_exclusive
from bridge.errors import UsageError
from bridge.witness.config import load_witness_config
from bridge.witness.cosigned import CosignatureStore
from bridge.witness.note import ALG_COSIGNATURE_V1, CosignerKey, NoteError, Verifier, parse_vkey
from bridge.witness.quorum import check_quorum

Guard = Callable[[Callable[[], Any]], Any]

WitnessKeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--witness-key",
        metavar="VKEY|FILE",
        help="A witness's verifier key (name+id+key, type 0x04) or a file holding one; repeatable.",
    ),
]
QuorumOpt = Annotated[
    int | None,
    typer.Option(
        "--quorum", metavar="N", help="How many of the --witness-key witnesses must have cosigned (default 1)."
    ),
]


def witness_verifiers(values: list[str] | None, quorum: int | None) -> tuple[list[Verifier], int]:
    """Parse --witness-key values (vkey text or a file) and check --quorum against them (UsageError)."""
    keys: list[Verifier] = []
    for value in values or []:
        path = Path(value)
        text = path.read_text("utf-8") if path.is_file() else value
        try:
            key = parse_vkey(text)
        except NoteError as exc:
            raise UsageError(f"--witness-key {value[:60]}: {exc}") from None
        if key.alg != ALG_COSIGNATURE_V1:
            raise UsageError(
                f"--witness-key {key.name}: not a cosignature key (type 0x04), this is type {key.alg:#04x}"
            )
        if key not in keys:  # the same witness twice counts once
            keys.append(key)
    if not keys:
        if quorum:
            raise UsageError("--quorum needs at least one --witness-key")
        return [], 0
    need = 1 if quorum is None else quorum
    if not 1 <= need <= len(keys):
        raise UsageError(f"--quorum {need} must be between 1 and the number of --witness-key values ({len(keys)})")
    return keys, need


def check_log_witnessed(data_dir: Path, checkpoint_text: str, keys: list[Verifier], quorum: int) -> list[str]:
    """The newest checkpoint of the log in `data_dir` carries `quorum` valid cosignatures (QuorumError: exit 1)."""
    store = CosignatureStore(data_dir, readonly=True)
    try:
        sigs = store.signatures_for(checkpoint_text)
    finally:
        store.close()
    return check_quorum(checkpoint_text, sigs, keys, quorum, where=" (the newest)")


def register(app: typer.Typer, guard: Guard, out: Console) -> None:
    witness_app = typer.Typer(
        help="A C2SP tlog-witness: cosigns checkpoints of the logs it is told about, only when consistent.",
        no_args_is_help=True,
    )

    @witness_app.command("init")
    def init(
        name: Annotated[
            str | None,
            typer.Option(
                "--name",
                metavar="NAME",
                help="The witness's name, a schema-less URL (witness.example.nl/w1); default: the config's name.",
            ),
        ] = None,
        key_file: Annotated[
            Path | None, typer.Option("--key-file", metavar="FILE", help="Where to write the key (0600).")
        ] = None,
        config_file: Annotated[
            Path | None, typer.Option("--config", metavar="FILE", help="Witness config (its key_file).")
        ] = None,
    ) -> None:
        """Create a witness key (never overwrites); writes KEY_FILE.pub and prints the verifier key."""

        def create() -> str:
            config = load_witness_config(config_file) if config_file is not None else None
            path = key_file or (config.key_file if config is not None else None)
            if path is None:
                raise UsageError("pass --key-file PATH or --config FILE (with key_file)")
            witness_name = name or (config.name if config is not None else None)
            if witness_name is None:
                raise UsageError("pass --name NAME (e.g. witness.example.nl/w1) or set name in the witness config")
            if path.exists():
                raise UsageError(f"{path} already exists; refusing to overwrite a witness key")
            try:
                key = CosignerKey.generate(witness_name)
            except NoteError as exc:
                raise UsageError(str(exc)) from None
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_exclusive(path, key.to_text().encode("ascii"), 0o600)
            pub = path.with_name(path.name + ".pub")
            write_exclusive(pub, (key.verifier.vkey + "\n").encode("ascii"), 0o644)
            return f"witness key: {path} (mode 0600)\nverifier key ({pub}):\n{key.verifier.vkey}"

        out.print(guard(create), highlight=False)

    @witness_app.command("serve")
    def serve(
        config_file: Annotated[
            Path, typer.Option("--config", metavar="FILE", help="Witness config TOML (see docs/witness.md).")
        ],
    ) -> None:
        """Serve add-checkpoint until SIGTERM/SIGINT."""
        from bridge import logs
        from bridge.witness.server import serve as run_server

        config = guard(lambda: load_witness_config(config_file))
        logs.setup("INFO", "json")  # refusals (fork evidence) are logged as JSON lines on stderr

        async def go() -> None:
            stop = asyncio.Event()
            install_stop_signals(stop)

            def ready(port: int) -> None:
                scheme = "https" if config.tls_cert else "http"
                out.print(f"witness listening on {scheme}://{config.host}:{port}{config.prefix}", highlight=False)
                sys.stdout.flush()

            await run_server(config, stop, ready)

        guard(lambda: asyncio.run(go()))

    app.add_typer(witness_app, name="witness")
