"""`proof/liveness.json`: the month's capture gaps and heartbeats, listed from its records (pure).

Contract:
- `Listing.add(seq, event)` is fed every event record of the month that the package shows (not withheld), in
  any order: the writer feeds them in log order, `verify-package` dossier by dossier. What is listed does not
  depend on that order (items are sorted by record seq).
- A *gap* is a `notice` event whose `content.notice` is `capture_gap`, from any source: the bot's own restart
  gap (`bridge.liveness`), an outage of the homeserver or the signal-cli daemon (`bridge.sources.outage`), a
  Matrix hole the bot could not fill (`bridge.sources.matrix.gaps`). Listed with its kind (`reason`), span
  (`gap_start_ms`, `gap_end_ms`), source, conversation, event id and record seq.
- A *heartbeat* is a `notice` event of source `chatarchief` whose `content.notice` is `heartbeat`. Listed as
  count, first and last, the declared interval, and the longest silence between consecutive liveness proofs
  within the month: from the month's start to the first heartbeat, between heartbeats, and from the last to
  the month's end (or, for an open month, to the sealing time). A month without chat but with heartbeats
  every interval shows a bot that was alive; a dead bot shows a silence as long as its outage.
- A *withheld* record (a tombstone: its content hidden by a withhold decision the package carries) is listed by
  seq, conversation and decision (`Listing.withhold`): a withheld notice could be a gap, so the listing says
  where it cannot see.
- `Listing.to_json(win, until_ms)` gives the file's bytes: deterministic (sorted keys, fixed indentation).
  `verify-package` re-derives it from the proven records and compares byte for byte, so an edited listing
  (a gap removed, a heartbeat count raised) is caught.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from bridge.archive import proof
from bridge.archive import range as ranges
from bridge.events import Event, Kind

__all__ = ["CAPTURE_GAP", "HEARTBEAT", "LISTING_REL", "Listing", "Summary"]

LISTING_REL = "proof/liveness.json"
CAPTURE_GAP = "capture_gap"  # bridge.sources.outage.CAPTURE_GAP (the archive may not import sources)
HEARTBEAT = "heartbeat"  # bridge.liveness.HEARTBEAT
LIVENESS_SOURCE = "chatarchief"  # bridge.liveness.SOURCE
VERSION = 1


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Summary:
    """The listing's figures, as `verify-package` reports them."""

    gaps: int
    withheld: int
    heartbeats: int
    longest_silence_ms: int

    def to_json(self) -> dict[str, int]:
        return {
            "gaps": self.gaps,
            "withheld": self.withheld,
            "heartbeats": self.heartbeats,
            "longest_silence_ms": self.longest_silence_ms,
        }


@dataclass
class Listing:
    """Gaps and heartbeats of one package (see module docstring)."""

    gaps: list[dict[str, Any]] = field(default_factory=list)
    beats: list[tuple[int, int]] = field(default_factory=list)  # (at_ms, seq)
    intervals: set[int] = field(default_factory=set)
    withheld: list[dict[str, Any]] = field(default_factory=list)

    def withhold(self, seq: int, source: str, conversation: str, decision_seq: int) -> None:
        self.withheld.append({"seq": seq, "source": source, "conversation": conversation, "decision_seq": decision_seq})

    def add(self, seq: int, event: Event) -> None:
        if event.kind != Kind.NOTICE or not isinstance(event.content, dict):
            return
        notice = event.content.get("notice")
        if notice == CAPTURE_GAP:
            c = event.content
            self.gaps.append(
                {
                    "seq": seq,
                    "kind": c.get("reason") if isinstance(c.get("reason"), str) else "unknown",
                    "source": str(event.source),
                    "conversation": str(event.conversation),
                    "event_id": str(event.event_id),
                    "start_ms": _int(c.get("gap_start_ms")),
                    "end_ms": _int(c.get("gap_end_ms")),
                }
            )
        elif notice == HEARTBEAT and str(event.source) == LIVENESS_SOURCE:
            self.beats.append((event.received_at if event.sent_at is None else event.sent_at, seq))
            if (interval := _int(event.content.get("interval_ms"))) is not None:
                self.intervals.add(interval)

    def heartbeats(self, win: ranges.Window, until_ms: int) -> dict[str, Any]:
        """Count, first/last and the longest silence between liveness proofs in [month start, until)."""
        beats = sorted(self.beats)
        end = min(win.end_ms, until_ms)
        points = [win.start_ms, *(at for at, _ in beats), max(end, win.start_ms)]
        longest, frm, to = -1, win.start_ms, end
        for a, b in itertools.pairwise(points):
            if b - a > longest:
                longest, frm, to = b - a, a, b
        return {
            "count": len(beats),
            "first_ms": beats[0][0] if beats else None,
            "first_seq": beats[0][1] if beats else None,
            "last_ms": beats[-1][0] if beats else None,
            "last_seq": beats[-1][1] if beats else None,
            "declared_interval_ms": sorted(self.intervals),
            "longest_silence_ms": max(longest, 0),
            "longest_silence_from_ms": frm,
            "longest_silence_to_ms": to,
            "window_start_ms": win.start_ms,
            "window_end_ms": end,
        }

    def to_json(self, win: ranges.Window, until_ms: int) -> bytes:
        return proof.pretty_json(
            {
                "v": VERSION,
                "month": str(win.month),
                "derived_from": "the package's records: capture_gap and heartbeat notices (verify-package re-derives)",
                "gaps": sorted(self.gaps, key=lambda g: int(g["seq"])),
                "heartbeats": self.heartbeats(win, until_ms),
                "withheld": sorted(self.withheld, key=lambda w: int(w["seq"])),
            }
        )

    def summary(self, win: ranges.Window, until_ms: int) -> Summary:
        silence = int(self.heartbeats(win, until_ms)["longest_silence_ms"])
        return Summary(len(self.gaps), len(self.withheld), len(self.beats), silence)

    @property
    def empty(self) -> bool:
        """No gap and no heartbeat (withheld records alone do not call for a listing: see verify_package)."""
        return not self.gaps and not self.beats
