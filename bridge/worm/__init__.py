"""Packages onto WORM object storage (S3 Object Lock): `serial` (a bag as one tar), `bucket` (the S3 calls),
`publish` (upload, read back, verify, receipt). This module itself imports nothing heavy."""

#: Under the data dir (0700): packages written and waiting for their verified upload (plaintext).
OUTBOX = "outbox"
#: Under the data dir: one receipt per uploaded package (bucket, key, version id, sha256, retain-until).
RECEIPTS = "uploads"
