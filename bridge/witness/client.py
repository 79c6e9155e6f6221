"""The log asks its witnesses: every new signed checkpoint, with a consistency proof from the size each one
last cosigned; their cosignatures go to the `CosignatureStore`.

Contract: `Witnessing.run(stop)` polls the log's newest checkpoint (`latest_note`, an injected coroutine)
and never blocks the log: sealing does not wait for it, and a witness that is down, slow or refusing only
delays its own cosignatures. Per witness: on a network error or a 5xx it warns (ALERT in the log) and backs
off exponentially (`retry_min` .. `retry_max` seconds); when it comes back, one request with one proof from
the size it last cosigned catches it up to the newest checkpoint. A 409 tells us the size the witness holds
(another process of ours reached it, or our store lost a row): the next request uses it. A 4xx other than
409 is the witness refusing this checkpoint (422: it is inconsistent with what it cosigned, evidence of a
fork or a rewrite) and is logged as an ALERT; it is retried after `retry_max`.

`leaf_range(start, end)` (injected; runs in a worker thread) gives the stored leaf hashes [start, end). They
feed a `SubtreeCache` (bridge/log/subtrees.py: aligned subtree roots in memory, ~250 KB per 10^6 records),
built with one read of the log at the first round and extended with the new leaves only; each consistency
proof then costs O(log n) hashes and at most ~512 leaf reads. Before sending, the cache's root at the
checkpoint's size must be the signed one, so a damaged local store is reported here rather than by the
witness (the cache is then dropped and rebuilt at the next round).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from bridge.errors import SourceError
from bridge.log.subtrees import SubtreeCache
from bridge.witness.cosigned import CosignatureStore
from bridge.witness.note import NoteError, NoteSignature, Verifier, parse_checkpoint, parse_signature_lines, split_note
from bridge.witness.request import AddCheckpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cosigned:
    signature: NoteSignature


@dataclass(frozen=True, slots=True)
class Conflict:
    size: int


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str


Outcome = Cosigned | Conflict | Refused


class WitnessUnavailable(SourceError):
    """The witness could not be reached or failed (network error, timeout, 5xx): try again later."""


async def add_checkpoint(
    session: aiohttp.ClientSession, url: str, witness: Verifier, request: AddCheckpoint, timeout: float = 10.0
) -> Outcome:
    """One tlog-witness add-checkpoint call; a 200 must carry a valid cosignature by `witness`."""
    try:
        async with session.post(
            url.rstrip("/") + "/add-checkpoint",
            data=request.encode(),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise WitnessUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
    text = body.decode("utf-8", "replace")
    if status >= 500:
        raise WitnessUnavailable(f"{url}: HTTP {status}")
    if status == 409:
        head = text.split("\n", 1)[0]
        if not head.isdigit():
            return Refused(409, f"409 without a size: {text[:80]!r}")
        return Conflict(int(head))
    if status != 200:
        return Refused(status, text.strip()[:200])
    cp_text, _ = split_note(request.note)
    try:
        lines = parse_signature_lines(text)
    except NoteError as exc:
        return Refused(200, f"response is not signature lines: {exc}")
    for sig in lines:
        if witness.matches(sig) and witness.timestamp(sig) and witness.verify(cp_text, sig):
            return Cosigned(sig)
    return Refused(200, "no valid cosignature by the configured witness key in the response")


@dataclass
class WitnessTarget:
    url: str
    key: Verifier
    known_size: int | None = None  # what we believe the witness holds; None: ask the store
    next_try: float = 0.0
    delay: float = 0.0
    last_error: str = ""
    cosigned: int = field(default=0)


class Witnessing:
    def __init__(
        self,
        targets: Sequence[tuple[str, Verifier]],
        store: CosignatureStore,
        latest_note: Callable[[], Awaitable[str | None]],
        leaf_range: Callable[[int, int], Sequence[bytes]],
        *,
        quorum: int = 1,
        poll_seconds: float = 2.0,
        retry_min: float = 1.0,
        retry_max: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = [WitnessTarget(url, key) for url, key in targets]
        self.store = store
        self._latest_note = latest_note
        self._leaf_range = leaf_range
        self._cache: SubtreeCache | None = None
        self.quorum = quorum
        self.witnessed: bool | None = None  # does the newest checkpoint have a quorum? (None: not known yet)
        self.poll_seconds = poll_seconds
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.timeout = timeout
        self._clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A new checkpoint was signed: start a round now instead of at the next poll (non-blocking)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    self._report_quorum(await self.sync_once(session))
                except Exception:  # never let witnessing take capture down
                    log.exception("ALERT witnessing round failed")
                await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until the next poll, a `wake()`, or stop."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            self._wake.clear()

    async def sync_once(self, session: aiohttp.ClientSession, *, force: bool = False) -> dict[str, str]:
        """One round: each witness due for it gets the newest checkpoint. Returns url -> what happened."""
        note = await self._latest_note()
        if note is None:
            return {}
        text, _ = split_note(note)
        cp = parse_checkpoint(text)
        cache: SubtreeCache | None = None
        report: dict[str, str] = {}
        now = self._clock()
        for t in self.targets:
            if t.known_size is None:
                t.known_size = self.store.last_cosigned(t.key, cp.origin)
            if t.known_size == cp.size and self._has(t, text):
                report[t.url] = "up to date"
                continue
            if not force and now < t.next_try:
                report[t.url] = "waiting to retry"
                continue
            if cache is None:
                cache = await self._cache_at(cp.size, cp.root)
                if cache is None:
                    log.error("ALERT stored leaves do not give the signed root; not asking witnesses",
                              extra={"size": cp.size})  # fmt: skip
                    return {t.url: "local leaves do not match the checkpoint" for t in self.targets}
            report[t.url] = await self._ask(session, t, note, cp.size, cache)
        return report

    async def _cache_at(self, size: int, root: bytes) -> SubtreeCache | None:
        """The subtree cache holding at least `size` leaves whose root at `size` is `root`; None (and the cache
        dropped) when the stored leaves do not give it."""
        cache = self._cache
        if cache is None or cache.size > size:  # first round, or the log's newest checkpoint went back
            cache = SubtreeCache(self._leaf_range)
        try:
            await asyncio.to_thread(cache.extend, size)
            ok = await asyncio.to_thread(cache.root, size) == root
        except ValueError:  # the log gave fewer leaves than the checkpoint covers
            ok = False
        self._cache = cache if ok else None
        return self._cache

    def _report_quorum(self, report: dict[str, str]) -> None:
        """Log when the newest checkpoint loses or regains its quorum of cosignatures (once per change)."""
        if not report:
            return
        done = sum(1 for what in report.values() if what == "up to date" or what.startswith("cosigned"))
        ok = done >= self.quorum
        if ok != self.witnessed:
            if ok:
                log.info("newest checkpoint witnessed", extra={"witnesses": done, "quorum": self.quorum})
            else:
                log.warning("ALERT newest checkpoint lacks its witness quorum (verify --quorum would fail)",
                            extra={"witnesses": done, "quorum": self.quorum})  # fmt: skip
            self.witnessed = ok

    def _has(self, t: WitnessTarget, text: str) -> bool:
        return any(t.key.matches(s) for s in self.store.signatures_for(text))

    async def _ask(
        self, session: aiohttp.ClientSession, t: WitnessTarget, note: str, size: int, cache: SubtreeCache
    ) -> str:
        text, _ = split_note(note)
        for _attempt in range(2):  # a 409 tells us the witness's size: one more try with a proof from it
            old = t.known_size or 0
            if old > size:
                return self._failed(
                    t, f"witness holds size {old}, larger than our newest checkpoint {size}", alert=True
                )
            proof = await asyncio.to_thread(cache.consistency_proof, old, size) if old else []
            try:
                outcome = await add_checkpoint(
                    session, t.url, t.key, AddCheckpoint(old, tuple(proof), note), self.timeout
                )
            except WitnessUnavailable as exc:
                return self._failed(t, str(exc), alert=t.delay == 0)
            if isinstance(outcome, Cosigned):
                await asyncio.to_thread(self.store.add, text, outcome.signature, t.key)  # fsync off the loop
                if t.last_error:
                    log.info("witness back; caught up", extra={"witness": t.url, "size": size, "from": old})
                t.known_size, t.delay, t.next_try, t.last_error = size, 0.0, 0.0, ""
                t.cosigned += 1
                return f"cosigned {size} (proof from {old})"
            if isinstance(outcome, Conflict):
                t.known_size = outcome.size
                continue
            return self._failed(t, f"refused with HTTP {outcome.status}: {outcome.reason}", alert=True, refused=True)
        return self._failed(t, "witness size keeps changing (409 twice)", alert=True)

    def _failed(self, t: WitnessTarget, why: str, *, alert: bool, refused: bool = False) -> str:
        t.delay = self.retry_max if refused else min(self.retry_max, max(self.retry_min, t.delay * 2))
        t.next_try = self._clock() + t.delay
        t.last_error = why
        level = logging.ERROR if refused else logging.WARNING
        if alert or refused:
            log.log(level, "ALERT witness did not cosign; capture goes on, retrying",
                    extra={"witness": t.url, "error": why, "retry_in": t.delay})  # fmt: skip
        return why
