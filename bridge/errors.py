"""One root of errors, split by who is at fault, carrying evidence.

The CLI turns each into one line on stderr and an exit code: `UsageError` and its
children (bad config, wrong key) exit 2; `LogIntegrityError` exits 1.
"""

from __future__ import annotations


class ChatarchiefError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(ChatarchiefError):
    """The operator asked for something impossible (bad flags, missing files)."""


class ConfigError(UsageError):
    """Configuration is invalid: the message names the key, the problem and the fix."""


class KeyFileError(UsageError):
    """The key file is missing, unsafe (readable by others) or belongs to another log."""


class SourceError(ChatarchiefError):
    """An upstream (homeserver, signal-cli) misbehaved or refused a request."""


class StorageError(ChatarchiefError):
    """The data dir cannot be read or written (I/O, disk full, wrong schema)."""


class LogIntegrityError(ChatarchiefError):
    """The log is tampered with or inconsistent.

    `seq` is the first sequence number at which the evidence fails (or a
    checkpoint's tree size for checkpoint failures; None when the failure is
    not tied to one record); `expected`/`found` hold the
    evidence where there is some.
    """

    def __init__(
        self, seq: int | None, reason: str, expected: str | None = None, found: str | None = None
    ) -> None:
        self.seq = seq
        self.reason = reason
        self.expected = expected
        self.found = found
        detail = reason if seq is None else f"record {seq}: {reason}"
        if expected is not None or found is not None:
            detail += f" (expected {expected}, found {found})"
        super().__init__(detail)
