"""Pytest fixtures for integration tests against a real Synapse.

- `synapse`: one homeserver for the whole session (start ~2 s); tests register
  fresh users, so they do not see each other.
- `own_synapse`: a private homeserver for tests that stop, kill or restart it.
- `official`: a factory of logged-in E2EE nio clients (see `officials.Official`),
  closed at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.dev.synapse import SynapseServer
from tests.support.officials import Official, OfficialFactory, make_official


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_synapse(tmp_path: Path) -> Iterator[SynapseServer]:
    server = SynapseServer(tmp_path / "own-synapse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def official(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[OfficialFactory]:
    made: list[Official] = []

    async def factory(prefix: str = "official", server: SynapseServer | None = None) -> Official:
        person = await make_official(server or synapse, tmp_path / "officials", prefix)
        made.append(person)
        return person

    try:
        yield factory
    finally:
        for person in made:
            await person.client.close()
