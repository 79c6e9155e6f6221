"""Chat sources: protocol clients (I/O) and the pure normalisers that turn their events into `Event`s."""
