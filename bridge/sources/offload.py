"""Heavy decoding off the event loop: a payload over `OFFLOAD_BYTES` is decoded in a worker thread.

Contract: `await off_loop(size, fn, *args)` returns `fn(*args)` (or raises what it raises). When `size`
(the payload's length in bytes or characters) is at most `OFFLOAD_BYTES` it runs inline, else through
`asyncio.to_thread`, so the event loop keeps serving syncs, timers and the control socket meanwhile.

Why a threshold: a thread hop costs tens of microseconds, more than decoding a small payload (a 4 KiB
base64 decode or JSON parse takes a few microseconds), while a 133 MB attachment as base64 blocks the
loop for a sizeable fraction of a second (figures: bench/decode_offload.py). base64 and orjson release
nothing else the loop needs, and `fn` must not touch loop-owned state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["OFFLOAD_BYTES", "off_loop"]

#: Payloads larger than this are decoded in a worker thread.
OFFLOAD_BYTES = 256 * 1024

T = TypeVar("T")


async def off_loop(size: int, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)`, in a worker thread when `size` exceeds `OFFLOAD_BYTES` (see module docstring)."""
    if size <= OFFLOAD_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
