"""Heavy decoding off the event loop (bridge/sources/offload.py)."""

from __future__ import annotations

import threading

from bridge.sources.offload import OFFLOAD_BYTES, off_loop


def _thread() -> int:
    return threading.get_ident()


async def test_small_payloads_run_inline_large_ones_in_a_worker_thread() -> None:
    """Up to OFFLOAD_BYTES the function runs on the loop's thread (a hop would cost more than the decode);
    above it, in another thread."""
    loop_thread = threading.get_ident()
    assert await off_loop(OFFLOAD_BYTES, _thread) == loop_thread
    assert await off_loop(OFFLOAD_BYTES + 1, _thread) != loop_thread


async def test_errors_propagate_from_the_worker_thread() -> None:
    """What the function raises reaches the caller, inline or off the loop."""
    for size in (1, OFFLOAD_BYTES + 1):
        try:
            await off_loop(size, bytes.fromhex, "zz")
        except ValueError:
            continue
        raise AssertionError("no error")
