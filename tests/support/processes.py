"""Spying on the helper processes the archive starts (`bridge.helper_process.start`)."""

from __future__ import annotations

import subprocess

import pytest

from bridge import helper_process


def started(monkeypatch: pytest.MonkeyPatch, module: str, entry: str | None = None) -> list[subprocess.Popen[bytes]]:
    """Every process of `module` (and `entry`, if given) started from now on, ahead or fresh, in start order."""
    procs: list[subprocess.Popen[bytes]] = []
    real = helper_process.start

    def spy(mod: str, ent: str) -> subprocess.Popen[bytes]:
        proc = real(mod, ent)
        if mod == module and entry in (None, ent):
            procs.append(proc)
        return proc

    monkeypatch.setattr(helper_process, "start", spy)
    return procs
