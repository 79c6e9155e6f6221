"""The throwaway homeserver (`bridge.dev.synapse`) starts only when the server answering its port is its own.

A CI run of `bench/synapse_module.py` failed with `HMAC incorrect`: of three servers started one after the
other, one was handed a port another process answered on, its own Synapse died on the bind, and `start()`
returned because *a* server answered `/_matrix/client/versions`. These tests put a stranger on the port first.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bridge.dev.synapse as dev
from bridge.dev.synapse import DevServerError, SynapseServer, free_port

pytestmark = pytest.mark.synapse


class _Stranger(http.server.BaseHTTPRequestHandler):
    """Any HTTP server that says 200 to every GET, as another homeserver on the port would to /versions."""

    def do_GET(self) -> None:
        body = json.dumps({"versions": ["v1.11"], "server_name": "elsewhere"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Banner(socketserver.BaseRequestHandler):
    """A server that does not speak HTTP (an SSH-like banner), as a database or mail server on the port would."""

    def handle(self) -> None:
        self.request.sendall(b"SSH-2.0-elsewhere\r\n")


@pytest.fixture(params=["http", "not http"])
def stranger(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port on 127.0.0.1 held by a server that is not ours: one that answers HTTP, one that does not."""
    server: socketserver.ThreadingTCPServer
    if request.param == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stranger)
    else:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Banner)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_given_port_answered_by_another_server_is_a_clear_error(tmp_path: Path, stranger: int) -> None:
    server = SynapseServer(tmp_path / "hs", port=stranger)
    try:
        with pytest.raises(DevServerError, match=rf"port {stranger}.*(in use|another server)"):
            server.start(timeout=60)
        assert not server.running
    finally:
        server.stop()


def test_a_chosen_port_taken_before_the_start_is_chosen_again(
    tmp_path: Path, stranger: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port was free when chosen and taken before Synapse bound it: the server starts on another one,
    and it is our server there (the shared-secret registration, which only ours accepts, works)."""
    handed = iter([stranger])
    monkeypatch.setattr(dev, "free_port", lambda: next(handed, None) or free_port())
    server = SynapseServer(tmp_path / "hs")
    assert server.port == stranger
    try:
        server.start(timeout=60)
        assert server.port != stranger
        user_id, token = server.register_user("official", "pw-official")
        assert user_id == "@official:localhost" and token
        assert server.url.endswith(f":{server.port}")
        assert f":{server.port}/" in (tmp_path / "hs" / "homeserver.yaml").read_text()
    finally:
        server.stop()


def test_a_restart_keeps_the_port_and_the_identity(tmp_path: Path) -> None:
    server = SynapseServer(tmp_path / "hs")
    try:
        server.start(timeout=60)
        port = server.port
        server.register_user("official", "pw-official")
        server.restart(timeout=60)
        assert server.port == port
        server.register_user("second", "pw-second")
    finally:
        server.stop()


def test_free_port_does_not_hand_out_the_same_port_twice_in_a_row() -> None:
    ports = [free_port() for _ in range(200)]  # bind(0) alone repeated one in 5 of 6 runs here
    assert len(set(ports)) == len(ports)
