"""Matrix capture: a pure normaliser beside the matrix-nio shell that syncs, decrypts, backfills and fetches media.

Modules, pure first:
- `normalise`: a client-server event (bytes or dict) -> `Event`; never raises. Its kind handlers:
  `message` (text, media, edits, stickers, poll starts), `relations` (replies, reactions, redactions,
  still-encrypted events), `state_events` (membership, retention, upgrades, calls), `polls`.
- `bridges`: bridged rooms' state -> the original network and sender of an event.
- `state`: what the source remembers between runs (rooms backfilled, events awaiting keys).
- `session`, `cross_signing`: the saved login and the device's cross-signing keys (sealed at rest).
- `client`: nio wrapped so every error response raises; the raw sync body kept.
- `crypto`, `redacted`, `backfill`, `invites`, `media`: the nio-facing steps of one sync batch.
- `source`: `MatrixSource`, the sync loop that commits each batch to the `Sink`.
"""

from __future__ import annotations

from bridge.sources.matrix.client import MatrixLoginError
from bridge.sources.matrix.normalise import normalise
from bridge.sources.matrix.source import MatrixSource, MatrixSourceConfig, prepare_device

__all__ = ["MatrixLoginError", "MatrixSource", "MatrixSourceConfig", "normalise", "prepare_device"]
