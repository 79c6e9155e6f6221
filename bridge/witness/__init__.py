"""A C2SP tlog-witness: cosigns checkpoints of logs it was told about, only when they extend what it saw.

`note` (pure: signed notes of any log, verifier keys, `cosignature/v1`), `request` (pure: the
`add-checkpoint` body), `state` (its SQLite memory of each log), `server` (aiohttp), `client` (the log's
side: ask witnesses, keep their cosignatures in `cosigned`), `quorum` (what a verifier demands).
"""
