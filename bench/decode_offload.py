"""Benchmark: decoding Signal attachment payloads inline vs off the event loop (bridge/sources/offload.py).

Run: `.venv/bin/python bench/decode_offload.py`

For payload sizes from 4 KiB to 133 MB (signal-cli's 100 MiB attachment limit as base64 in a JSON-RPC
response line) it measures, best of 3:
- parse: `classify` (orjson) of the whole getAttachment response line, then the base64 decode, inline;
- hop: the same through `off_loop` (inline up to OFFLOAD_BYTES, a worker thread above);
- stall: the longest the event loop went without running a 1 ms ticker while `off_loop` decoded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

from bridge.sources.offload import OFFLOAD_BYTES, off_loop
from bridge.sources.signal.framing import classify
from bridge.sources.signal.transport import b64decode_chunked

SIZES = [4 * 1024, 256 * 1024, 1024 * 1024, 16 * 1024 * 1024, 100 * 1024 * 1024]


def response_line(size: int) -> bytes:
    data = base64.b64encode(os.urandom(size)).decode("ascii")
    return b'{"jsonrpc":"2.0","id":7,"result":{"data":"' + data.encode() + b'"}}'


def decode_inline(line: bytes) -> bytes:
    response = classify(line)
    assert response is not None
    return b64decode_chunked(response.result["data"])


async def decode_hop(line: bytes) -> bytes:
    response = await off_loop(len(line), classify, line)
    assert response is not None
    data = response.result["data"]
    return await off_loop(len(data), b64decode_chunked, data)


async def stall_while(coro_fn: object, line: bytes) -> tuple[float, float]:
    """(seconds the decode took, longest gap between ticks of a 1 ms ticker meanwhile)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    await coro_fn(line)  # type: ignore[operator]
    took = time.perf_counter() - start
    done.set()
    await tick
    return took, max(gaps)


async def main() -> None:
    async def inline(line: bytes) -> bytes:
        return decode_inline(line)

    print(f"OFFLOAD_BYTES = {OFFLOAD_BYTES}")
    print(f"{'payload':>10} {'inline ms':>10} {'stall ms':>9} {'off_loop ms':>12} {'stall ms':>9}")
    for size in SIZES:
        line = response_line(size)
        runs = [await stall_while(inline, line) for _ in range(3)]
        hops = [await stall_while(decode_hop, line) for _ in range(3)]
        (i_took, i_stall), (h_took, h_stall) = min(runs), min(hops)
        label = f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"
        print(f"{label:>10} {i_took * 1e3:10.2f} {i_stall * 1e3:9.1f} {h_took * 1e3:12.2f} {h_stall * 1e3:9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
