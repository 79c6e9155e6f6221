"""The tamper-evident, encrypted, append-only log: record format, crypto, Merkle tree, checkpoints, store."""
