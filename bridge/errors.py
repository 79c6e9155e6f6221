"""One root of errors, split by who is at fault, carrying evidence.

```
ChatarchiefError
├── UsageError          the operator asked for something impossible        exit 2
│   ├── ConfigError     bad configuration
│   └── KeyFileError    key file missing, unsafe, or of another log
├── SourceError         an upstream (homeserver, signal-cli) misbehaved
├── StorageError        the data dir cannot be read or written
├── DataError           bytes that do not parse or authenticate as what they claim
└── LogIntegrityError   evidence of tampering: which check, which record   exit 1
    └── PackageIntegrityError (bridge.archive.verify_package)
```

The CLI (`bridge.cli._guard`) turns each into one line on stderr and an exit code.
`DataError` says nothing about fault by itself: bytes that do not parse are a
bug, hostile input or tampering depending on where they came from, so the caller
that knows translates it (`verify` raises `LogIntegrityError` for stored bytes).
Its subclasses that callers catch as `ValueError` keep that as a second base.
"""

from __future__ import annotations

import enum


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


class DataError(ChatarchiefError):
    """Bytes or text that do not parse or authenticate as what they claim to be (see the module docstring)."""


class Check(enum.StrEnum):
    """Which check found the evidence: a stable name for scripts (`verify --json`)."""

    # -- the log: records (keyless) --
    DATABASE = "database"  # the SQLite file itself is damaged (a page, a column type)
    HEADER = "header"  # a record header does not parse
    POSITION = "position"  # a record sits at another position than its header names
    MISSING_RECORD = "missing_record"  # a gap in the sequence
    CHAIN = "chain"  # a header does not link to the previous leaf
    LEAF = "leaf"  # the stored bytes do not give the stored leaf hash
    COMMITMENT = "commitment"  # the plaintext commitment is malformed or does not match
    TRUNCATED = "truncated"  # a signed checkpoint covers more records than are stored
    UNSEALED = "unsealed"  # records after the last checkpoint, checked without the key
    # -- the log: checkpoints --
    CHECKPOINT_SIGNATURE = "checkpoint_signature"  # a checkpoint note does not verify
    CHECKPOINT_ROOT = "checkpoint_root"  # the recomputed root is not the signed one
    CHECKPOINT_ROW = "checkpoint_row"  # a checkpoint's stored size or time is not the signed one
    SIGNING_KEY = "signing_key"  # the log's public key entry is damaged or another key
    EDGE = "edge"  # a stored tree edge is not the recomputed one
    # -- the log: clear records, keys, media --
    CLEAR_RECORD = "clear_record"  # a KEY or BLOB record does not parse or match
    KEY_TABLE = "key_table"  # the key table is not exactly the KEY records, or does not unwrap
    BLOB = "blob"  # a media blob is missing, altered or does not decrypt to its id
    # -- the log: with the key --
    AEAD = "aead"  # a record does not decrypt or authenticate
    PAYLOAD = "payload"  # a decrypted payload is not an event or decision
    TAGS = "tags"  # a record sits under another conversation or dedup tag than its payload says
    CURSOR = "cursor"  # a source cursor's MAC does not match
    # -- the log: bookkeeping --
    SCHEMA = "schema"  # the database schema was altered
    META = "meta"  # the meta table holds entries this log never writes
    # -- a package (verify-package) --
    PACKAGE_SHAPE = "package_shape"  # the bag root does not hold exactly a package's files
    PACKAGE_FIXITY = "package_fixity"  # BagIt: a file is not the one its manifest names
    PACKAGE_CHECKPOINT = "package_checkpoint"  # a checkpoint file does not verify or has the wrong size
    PACKAGE_RANGE = "package_range"  # range.json, package.json (render parameters) or the start frontier
    PACKAGE_LEAVES = "package_leaves"  # leaves.txt does not give the signed roots
    PACKAGE_RECORD = "package_record"  # a record line is unreadable, altered or not the derived one
    PACKAGE_ORDER = "package_order"  # a record is outside the range, out of order, or twice
    PACKAGE_MISSING_RECORD = "package_missing_record"  # a record of the range is in no file
    PACKAGE_DOSSIER = "package_dossier"  # a dossier holds another conversation, or none
    PACKAGE_WITHHELD = "package_withheld"  # a tombstone names no decision the package holds
    PACKAGE_MEDIA = "package_media"  # a media file is missing or altered
    PACKAGE_CLOSING = "package_closing"  # closing.json does not show the month over
    PACKAGE_CONSISTENCY = "package_consistency"  # an inclusion or the consistency proof fails
    PACKAGE_MDTO = "package_mdto"  # an MDTO file does not validate
    PACKAGE_DERIVED = "package_derived"  # a rendered file is not the one its records give
    PACKAGE_PREVIOUS = "package_previous"  # the previous package does not chain to this one
    # -- WORM object storage (bridge.worm) --
    UPLOAD = "upload"  # the copy read back from the bucket is not the package uploaded, or not a package
    # -- witnesses (verify / verify-package --witness-key --quorum) --
    WITNESS = "witness"  # a checkpoint relied on lacks a quorum of valid witness cosignatures
    #: Reported by the running bot over the control socket without a name (an older bot).
    UNSPECIFIED = "unspecified"


Evidence = str | int | bytes | None


def _evidence(value: Evidence) -> str | None:
    """Evidence as text: hashes as hex, sizes and ids as they are."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class LogIntegrityError(ChatarchiefError):
    """The log is tampered with or inconsistent.

    `check` names the check that failed; `seq` is the first sequence number at
    which the evidence fails (or a checkpoint's tree size for checkpoint
    failures; None when the failure is not tied to one record); `expected` and
    `found` hold the evidence where there is some (hashes as hex, sizes, ids).
    """

    def __init__(
        self,
        seq: int | None,
        reason: str,
        expected: Evidence = None,
        found: Evidence = None,
        *,
        check: Check,
    ) -> None:
        self.check = check
        self.seq = seq
        self.reason = reason
        self.expected = _evidence(expected)
        self.found = _evidence(found)
        super().__init__(self._detail())

    def _detail(self) -> str:
        detail = self.reason if self.seq is None else f"record {self.seq}: {self.reason}"
        if self.expected is not None or self.found is not None:
            detail += f" (expected {self.expected}, found {self.found})"
        return detail

    def to_json(self) -> dict[str, object]:
        """The failure as `verify --json` prints it."""
        return {
            "intact": False,
            "check": self.check.value,
            "seq": self.seq,
            "reason": self.reason,
            "expected": self.expected,
            "found": self.found,
        }
