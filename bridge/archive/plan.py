"""Planning a month's package over the log's read API (`bridge.log.view`; no SQL here, never signs).

`plan(view, window)` finds the month's range [start, end) with `view.boundary`
(the rule of `range.py`: the first record in log order appended at or after
an instant, found by a scan inside SQLite, never by a search), the tree's
frontier at `start` and the root at `end`, the decisions before `end`
(decrypted: they say which events are withheld), and checks the signed
checkpoints at `start`, at `end` and at the first stored checkpoint at or after
`end` against those roots. An edge stored with a checkpoint at `start` (or
`end`) is taken instead of hashing the leaves from record 0: its root must be
the signed one, and pass 2 recomputes every leaf of the range from its bytes
and checks the end root again. Without such a checkpoint the stored leaves are
hashed (from 0, or from `start`). So a package of month 12 costs what month 1
costs. A missing checkpoint at `start` or `end` is asked of the injected
`seal` (the log's writer signs; the archive never does), and the note it
returns is checked here against the root this plan computed: a log must never
sign two inconsistent checkpoints, and the archive never trusts a note it did
not verify.

`carried_decisions` gives the decisions before `start` with an RFC 9162
inclusion proof against the start checkpoint, so a package can show the
decisions of earlier months that still withhold events of its range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.archive import proof
from bridge.archive.range import Window
from bridge.errors import Check, LogIntegrityError, UsageError
from bridge.log import checkpoint, crypto, merkle
from bridge.log.decision import Decision
from bridge.log.keys import KeyMaterial
from bridge.log.rotation import KeyChain
from bridge.log.view import LogView, RangeRecord, ScanRow, appended_ms

#: "give me the signed checkpoint note at tree size N (sign one if none exists)"
Seal = Callable[[int], str]


@dataclass(frozen=True)
class Plan:
    """A month's range and what proves it; `start_note`/`end_note` are None until sealed."""

    start: int
    end: int
    log_size: int
    frontier_start: merkle.Frontier
    end_root: bytes
    decisions: tuple[tuple[int, Decision], ...]
    decision_rows: tuple[ScanRow, ...]  # the stored rows of the decisions before `start`
    start_note: str | None
    end_note: str | None
    first_appended_ms: int | None
    #: The log's signing keys (pinned one first, through its rotation records): whom each checkpoint must be by.
    chain: KeyChain | None = None


def plan(view: LogView, win: Window, *, open_month: bool = False) -> Plan:
    """The month's range and evidence (see the module docstring); raises UsageError if not sealed."""
    with view.consistent():
        return _plan(view, win, open_month)


def _plan(view: LogView, win: Window, open_month: bool) -> Plan:
    size = view.size()
    start, end = (size if (seq := view.boundary(ms)) is None else seq for ms in (win.start_ms, win.end_ms))
    target = view.first_checkpoint_from(end)
    if target is not None and target > size:
        raise LogIntegrityError(
            size,
            f"log truncated: a signed checkpoint covers {target} records but only {size} are stored",
            check=Check.TRUNCATED,
        )
    sealed = view.sealed_size()
    if target is None and not open_month:
        raise UsageError(
            f"month {win.month} ends at record {end} but the log is sealed only up to record"
            f" {sealed}; seal it first (`chatarchief run` checkpoints every minute and when it"
            " stops; `import` at its end)"
        )
    if target is None and start > sealed:
        # An open month may end in unsealed records (pass 2 checks those), but what precedes it must be sealed.
        raise UsageError(
            f"records before {win.month} are not sealed by a checkpoint yet; seal the log first (`chatarchief run`)"
        )
    keys = view.signing_chain()
    start_frontier = _frontier_at(view, start, None)
    start_note = checked_note(view.note_at(start), keys, start, start_frontier.root()) if start > 0 else None
    end_frontier = view.stored_frontier(end) if target == end else None
    if end_frontier is None:
        end_frontier = _frontier_at(view, end, start_frontier)
    end_root = end_frontier.root()
    end_note = checked_note(view.note_at(end), keys, end, end_root)
    if target is not None and target != end:
        grown = _frontier_at(view, target, end_frontier)
        checked_note(view.note_at(target), keys, target, grown.root())
    decisions: list[tuple[int, Decision]] = []
    rows: list[ScanRow] = []
    for row in view.decision_rows(end):
        decisions.append((row.seq, view.decision(row)))
        if row.seq < start:
            rows.append(row)
    first_ms = view.first_appended_ms()
    return Plan(
        start, end, size, start_frontier, end_root, tuple(decisions), tuple(rows), start_note, end_note, first_ms, keys
    )


def _frontier_at(view: LogView, size: int, base: merkle.Frontier | None) -> merkle.Frontier:
    """The tree's right edge at `size`: stored with a checkpoint at `size` when there is one (its root is then
    checked against that signed checkpoint by the caller), else `base` (or the empty tree) extended with the
    stored leaves up to `size`. Pass 2 recomputes every leaf of the range from its bytes and checks the end root
    again, so a stored edge is never the only evidence for what the package holds."""
    if base is None and size > 0 and (stored := view.stored_frontier(size)) is not None:
        return stored
    frontier = merkle.Frontier() if base is None else base.copy()
    for _, leaf in view.leaves(frontier.size, size):
        frontier.append(leaf)
    return frontier


def checked_note(note: str | None, keys: KeyMaterial | KeyChain, size: int, root: bytes) -> str | None:
    """`note` after checking its signature (by the key of the log's chain current at `size`), size and root;
    None if None."""
    if note is None:
        return None
    chain = keys if isinstance(keys, KeyChain) else KeyChain((keys.key_name, keys.public_key))
    try:
        cp = chain.verify_checkpoint(note)
    except checkpoint.CheckpointError as exc:
        raise LogIntegrityError(
            size, f"checkpoint for tree size {size} does not verify: {exc}", check=Check.CHECKPOINT_SIGNATURE
        ) from None
    if cp.size != size or not crypto.hmac_equal(cp.root, root):
        raise LogIntegrityError(
            max(size - 1, 0),
            f"records up to {size - 1} do not match the signed checkpoint at tree size {size}",
            f"size {size}, root {root.hex()}",
            f"size {cp.size}, root {cp.root.hex()}",
            check=Check.CHECKPOINT_ROOT,
        )
    return note


def seal_notes(keys: KeyMaterial, p: Plan, seal: Seal | None) -> tuple[str | None, str]:
    """The checkpoints at start and end; a missing one is asked of `seal` and checked against the scan's root."""

    def ask(size: int, root: bytes) -> str:
        if seal is None:
            raise UsageError(
                f"the log has no signed checkpoint at tree size {size} (the month's boundary); run the snapshot"
                " with the log's writer (`chatarchief snapshot`, or the monthly job of `chatarchief run`)"
            )
        note = checked_note(seal(size), p.chain or keys, size, root)
        assert note is not None
        return note

    start_note = p.start_note
    if start_note is None and p.start > 0:
        start_note = ask(p.start, p.frontier_start.root())
    end_note = p.end_note or ask(p.end, p.end_root)
    return start_note, end_note


@dataclass(frozen=True)
class Closing:
    """Proof that the month was over when the log was sealed later: the first record after the range.

    Record `end` (its leaf data, no content) was appended at or after the month's end; it sits at index
    `end` of a later signed checkpoint (`note`, tree size `size`), whose tree extends the end tree.
    """

    size: int
    note: str
    header: bytes
    commitment: bytes
    ciphertext_hash: bytes
    inclusion: list[bytes]
    consistency: list[bytes]


def closing(view: LogView, p: Plan, win: Window) -> Closing | None:
    """The closing proof of a month whose end checkpoint predates the month's end, if the log has one."""
    if p.end >= p.log_size:
        return None
    header, commit, ct_hash = view.leaf_parts(p.end)
    if appended_ms(header) < win.end_ms:
        return None
    size = view.first_checkpoint_from(p.end + 1)
    if size is None:
        return None
    wanted = proof.inclusion_ranges(p.end, size)
    roots = proof.SubtreeRoots(set(wanted), size)
    consistency: proof.ConsistencyBuilder | None = None
    frontier = merkle.Frontier()
    with view.consistent():
        for seq, leaf in view.leaves(0, size):
            if seq == p.end:
                consistency = proof.ConsistencyBuilder(frontier, size)
            roots.add(leaf)
            frontier.append(leaf)
            if consistency is not None:
                consistency.add(leaf)
        note = checked_note(view.note_at(size), view.signing_chain(), size, frontier.root())
    assert note is not None and consistency is not None
    found = roots.finish()
    return Closing(size, note, header, commit, ct_hash, [found[r] for r in wanted], consistency.proof())


@dataclass(frozen=True)
class Carried:
    """A decision from before the range, with its inclusion proof in the tree of size `start`."""

    record: RangeRecord
    inclusion: list[bytes]


def carried_decisions(view: LogView, p: Plan) -> list[Carried]:
    """Each decision before `start` with its inclusion proof in the tree of size `start` (checked)."""
    if not p.decision_rows:
        return []
    wanted = {r.seq: proof.inclusion_ranges(r.seq, p.start) for r in p.decision_rows}
    roots = proof.SubtreeRoots({rng for ranges in wanted.values() for rng in ranges}, p.start)
    with view.consistent():
        for _, leaf in view.leaves(0, p.start):
            roots.add(leaf)
    found = roots.finish()
    start_root = p.frontier_start.root()
    out: list[Carried] = []
    for row in p.decision_rows:
        path = [found[rng] for rng in wanted[row.seq]]
        rec = view.opened(row)
        if not merkle.verify_inclusion(rec.leaf, row.seq, p.start, path, start_root):
            raise LogIntegrityError(
                row.seq,
                "decision record is not under the start checkpoint's root",
                start_root,
                check=Check.CHECKPOINT_ROOT,
            )
        out.append(Carried(rec, path))
    return out
