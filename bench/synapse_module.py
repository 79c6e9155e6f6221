"""Benchmark: what Chatarchief's Synapse module costs Synapse, against the same Synapse without it, same run.

Run: `.venv/bin/python bench/synapse_module.py [--messages 300] [--rooms 30]`

Three throwaway Synapse servers (bridge.dev.synapse) on 127.0.0.1, identical but for `modules:` (none; the module
with `all_local_users: true`, so every event of every room passes through it; the same with `spool:`, so every
event of those plain rooms is also sealed and fsynced into the spool). One official per server sends
`--messages` messages one at a time into an unencrypted room, alternating between the servers message by message
(scheduling noise hits both), and creates `--rooms` rooms the same way. Latency is the client's round trip of
`PUT /send` and `POST /createRoom` (with the module, createRoom also carries the archiver's invite, and the
archiver's join runs right after in the background). Prints p50/p99 per server and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nio import AsyncClient, ErrorResponse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.dev.synapse import SynapseServer, archiver_module_config  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def client(server: SynapseServer, name: str) -> AsyncClient:
    user_id, token = await server.register_user_async(name, f"pw-{name}")
    c = AsyncClient(server.url, user_id)
    c.access_token, c.user_id, c.device_id = token, user_id, "BENCH"
    return c


async def timed(call: object) -> float:
    start = time.perf_counter()
    response = await call  # type: ignore[misc]
    elapsed = (time.perf_counter() - start) * 1000
    if isinstance(response, ErrorResponse):
        raise SystemExit(f"request failed: {response}")
    return elapsed


async def main(messages: int, rooms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        module = archiver_module_config("@archiver:localhost", all_local_users=True)
        spooling = archiver_module_config("@archiver:localhost", all_local_users=True)
        public_key = base64.b64encode(os.urandom(32)).decode()  # any X25519 public key: nobody reads it here
        spooling["config"]["spool"] = {"path": str(Path(tmp) / "spool"), "public_key": public_key}
        servers = {
            "without module": SynapseServer(Path(tmp) / "bare"),
            "with module": SynapseServer(Path(tmp) / "module", archiver_module=module),
            "module + spool": SynapseServer(Path(tmp) / "spooling", archiver_module=spooling),
        }
        for server in servers.values():
            await asyncio.to_thread(server.start)
        try:
            for label in ("with module", "module + spool"):
                await servers[label].register_user_async("archiver", "pw-archiver")
            officials = {label: await client(s, "official") for label, s in servers.items()}
            room = {}
            for label, c in officials.items():
                response = await c.room_create(name="bench")
                assert not isinstance(response, ErrorResponse), response
                room[label] = response.room_id
            await asyncio.sleep(1)  # let the module's join land before measuring sends
            sends: dict[str, list[float]] = {label: [] for label in servers}
            creates: dict[str, list[float]] = {label: [] for label in servers}
            for label, c in officials.items():  # warm-up
                for i in range(10):
                    await timed(c.room_send(room[label], "m.room.message", {"msgtype": "m.text", "body": f"w{i}"}))
            for i in range(messages):
                for label, c in officials.items():
                    body = {"msgtype": "m.text", "body": f"bericht {i}"}
                    sends[label].append(await timed(c.room_send(room[label], "m.room.message", body)))
            for _ in range(rooms):
                for label, c in officials.items():
                    creates[label].append(await timed(c.room_create(name="kamer")))
            for c in officials.values():
                await c.close()
            spooled = sum(p.stat().st_size for p in (Path(tmp) / "spool").iterdir())
        finally:
            for server in servers.values():
                server.stop()
    print(f"spool: {spooled} bytes written (sealed frames)")
    print(f"Synapse module cost: {messages} sends, {rooms} createRoom per server, one at a time, interleaved")
    for what, figures in (("send", sends), ("createRoom", creates)):
        base = figures["without module"]
        for label, values in figures.items():
            p50, p99 = statistics.median(values), pct(values, 0.99)
            ratio = f"  (x{p50 / statistics.median(base):.2f} p50, x{p99 / pct(base, 0.99):.2f} p99)"
            print(f"  {what:<10} {label:<15} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms{ratio if values is not base else ''}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rooms", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rooms))
