"""Signal capture from a signal-cli daemon: sans-I/O framing, a pure envelope normaliser, transports, media.

Modules, pure first:
- `framing`: bytes -> JSON-RPC lines and SSE events (no I/O).
- `envelopes`: a signal-cli envelope -> `Event`s; never raises. It reads data messages with
  `data_message`, syncs, stories and calls with `other_content`, newer message parts with `parts`.
- `identities` (pure) and `identity_join`: one person's ACI, PNI and number joined into one conversation.
- `transport`: the connection to signal-cli (unix socket, TCP, HTTP+SSE, rest-api websocket).
- `media`: attachments from signal-cli into the blob store.
- `source`: `SignalSource`, the receive loop that commits each batch to the `Sink`.
"""

from __future__ import annotations

from bridge.sources.signal.envelopes import normalise_envelope
from bridge.sources.signal.source import SignalSource, SignalSourceConfig

__all__ = ["SignalSource", "SignalSourceConfig", "normalise_envelope"]
